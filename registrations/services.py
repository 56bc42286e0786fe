"""Server use cases: registration, deactivation, reactivation, analytics upload."""

import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email
from django.db import IntegrityError, transaction

from bouncer.errors import BouncerError, ErrorCode
from registrations import lookups
from registrations.auth import DEACTIVATED_MESSAGE, key_mismatch_message
from registrations.models import (
    API_KEY_LENGTH,
    AuditLog,
    RemoteRealm,
    RemoteZulipServer,
)

logger = logging.getLogger(__name__)

EMAIL_DNS_TIMEOUT_SECONDS = 3.0


# --- Validation ----------------------------------------------------------------------------


def validate_hostname(hostname: str) -> None:
    """Zulip's check: a bare host (and optional port), nothing else."""
    try:
        parts = urlsplit("http://" + hostname)
    except ValueError:
        # urlsplit's own refusals: an unbalanced or empty IPv6 literal ("[]", "[1]").
        raise BouncerError(f"{hostname} is not a valid hostname") from None
    if parts.path or parts.query or parts.fragment:
        raise BouncerError(f"{hostname} contains invalid components (e.g., path, query, fragment).")
    try:
        URLValidator()("http://" + hostname)
    except ValidationError:
        raise BouncerError(f"{hostname} is not a valid hostname") from None


def validate_contact_email(email: str) -> None:
    try:
        validate_email(email)
    except ValidationError:
        raise BouncerError("Enter a valid email address.") from None
    domain = email.rsplit("@", 1)[1].lower()
    # Zulip also refuses disposable-address domains from a list we do not ship: no maintained
    # copy of that list is a dependency here, and a bouncer operator vets servers anyway.
    if domain == "example.com":
        raise BouncerError("Invalid email address.")
    if settings.BOUNCER_CHECK_EMAIL_DNS:
        _check_email_dns(domain)


def _check_email_dns(domain: str) -> None:
    import dns.exception
    import dns.resolver

    try:
        resolver = dns.resolver.Resolver()
    except dns.resolver.NoResolverConfiguration:
        logger.warning("MX lookup of %s skipped: no resolver configured", domain)
        return
    resolver.lifetime = EMAIL_DNS_TIMEOUT_SECONDS
    try:
        resolver.resolve(domain, "MX")
        return
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
        pass
    except dns.exception.Timeout:
        # Our resolver's trouble is not the registering server's fault.
        logger.warning("MX lookup of %s timed out; registration allowed", domain)
        return
    for record in ("A", "AAAA"):
        try:
            resolver.resolve(domain, record)
        except dns.exception.DNSException:
            continue
        raise BouncerError(f"{domain} is invalid because it does not have any MX records")
    raise BouncerError(f"{domain} does not exist")


def validate_server_uuid(zulip_org_id: str) -> uuid.UUID:
    try:
        parsed = uuid.UUID(zulip_org_id, version=4)
    except ValueError:
        raise BouncerError("Invalid UUID") from None
    # Canonical lowercase v4 only: parsing with version=4 rewrites other versions' bits.
    if str(parsed) != zulip_org_id:
        raise BouncerError("Invalid UUID")
    return parsed


def new_api_key() -> str:
    return secrets.token_hex(API_KEY_LENGTH // 2)


def _audit(server: RemoteZulipServer, event: str, **extra: Any) -> None:
    AuditLog.objects.create(server=server, event_type=event, extra_data=extra)


# --- Registration --------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterResult:
    created: bool


def register_server(
    *,
    zulip_org_id: str,
    zulip_org_key: str,
    hostname: str,
    contact_email: str,
    new_org_key: str | None,
) -> RegisterResult:
    validate_hostname(hostname)
    validate_contact_email(contact_email)
    server_uuid = validate_server_uuid(zulip_org_id)
    try:
        return _register(
            server_uuid=server_uuid,
            key=zulip_org_key,
            hostname=hostname,
            contact_email=contact_email,
            new_key=new_org_key,
        )
    except IntegrityError:
        # Two first registrations of one uuid raced; the loser is now an update.
        return _register(
            server_uuid=server_uuid,
            key=zulip_org_key,
            hostname=hostname,
            contact_email=contact_email,
            new_key=new_org_key,
        )


def _register(
    *,
    server_uuid: uuid.UUID,
    key: str,
    hostname: str,
    contact_email: str,
    new_key: str | None,
) -> RegisterResult:
    with transaction.atomic():
        server = RemoteZulipServer.objects.select_for_update().filter(uuid=server_uuid).first()
        if server is None:
            if not settings.BOUNCER_OPEN_REGISTRATION:
                raise BouncerError(
                    "This push notification service only accepts Zulip servers added by its "
                    "operator. Ask the service's operator to add your server "
                    f"(zulip_org_id {server_uuid}).",
                    code=ErrorCode.REGISTRATION_CLOSED,
                    status=403,
                )
            if hostname_in_use(hostname):
                raise hostname_already_in_use(hostname)
            server = RemoteZulipServer(
                uuid=server_uuid, hostname=hostname, contact_email=contact_email
            )
            server.set_api_key(new_key or key)
            server.last_request_datetime = datetime.now(UTC)
            server.save()
            _audit(server, AuditLog.Event.REMOTE_SERVER_CREATED, hostname=hostname)
            return RegisterResult(created=True)

        if not server.api_key_matches(key):
            raise BouncerError(
                key_mismatch_message(str(server_uuid)),
                code=ErrorCode.INVALID_ZULIP_SERVER,
                data={"role": str(server_uuid)},
            )
        if server.deactivated:
            raise BouncerError(
                DEACTIVATED_MESSAGE, code=ErrorCode.REMOTE_SERVER_DEACTIVATED, status=401
            )
        changed = {
            name
            for name, value in (("hostname", hostname), ("contact_email", contact_email))
            if getattr(server, name) != value
        }
        if "hostname" in changed and hostname_in_use(hostname, other_than=server):
            # A server may not take over another active server's hostname by renaming itself
            # (transfer is the way to prove it owns it).
            raise hostname_already_in_use(hostname)
        server.hostname = hostname
        server.contact_email = contact_email
        server.last_request_datetime = datetime.now(UTC)
        fields = ["hostname", "contact_email", "last_request_datetime", "last_updated"]
        if new_key is not None:
            server.set_api_key(new_key)
            fields.append("api_key_hash")
        server.save(update_fields=fields)
        if changed:
            _audit(server, AuditLog.Event.REMOTE_SERVER_UPDATED, changed=sorted(changed))
        if new_key is not None:
            _audit(server, AuditLog.Event.REMOTE_SERVER_KEY_ROTATED)
        return RegisterResult(created=False)


def hostname_in_use(hostname: str, *, other_than: RemoteZulipServer | None = None) -> bool:
    """Whether an active server has this hostname; deactivated ones no longer hold it (Zulip's
    rule; the database's unique_active_server_hostname enforces it)."""
    servers = RemoteZulipServer.objects.filter(hostname=hostname, deactivated=False)
    if other_than is not None:
        servers = servers.exclude(pk=other_than.pk)
    return servers.exists()


def hostname_already_in_use(hostname: str) -> BouncerError:
    return BouncerError(
        f"A server with hostname {hostname} already exists",
        code=ErrorCode.HOSTNAME_ALREADY_IN_USE_BOUNCER_ERROR,
        data={"hostname": hostname},
    )


def add_server(*, zulip_org_id: str, key: str, hostname: str, contact_email: str) -> None:
    """An operator pre-registers a server (needed when registration is closed)."""
    validate_hostname(hostname)
    validate_contact_email(contact_email)
    server_uuid = validate_server_uuid(zulip_org_id)
    if len(key) != API_KEY_LENGTH:
        raise BouncerError(f"zulip_org_key is not length {API_KEY_LENGTH}")
    with transaction.atomic():
        if RemoteZulipServer.objects.filter(uuid=server_uuid).exists():
            raise BouncerError(f"A server with zulip_org_id {server_uuid} already exists")
        if hostname_in_use(hostname):
            raise hostname_already_in_use(hostname)
        server = RemoteZulipServer(uuid=server_uuid, hostname=hostname, contact_email=contact_email)
        server.set_api_key(key)
        server.save()
        _audit(server, AuditLog.Event.REMOTE_SERVER_ADDED_BY_OPERATOR, hostname=hostname)


def deactivate_server(*, server: RemoteZulipServer) -> None:
    _set_deactivated(server, deactivated=True, event=AuditLog.Event.REMOTE_SERVER_DEACTIVATED)


def reactivate_server(*, server: RemoteZulipServer) -> None:
    """Raises BouncerError when another active server has taken the hostname meanwhile."""
    if hostname_in_use(server.hostname, other_than=server):
        raise hostname_already_in_use(server.hostname)
    _set_deactivated(server, deactivated=False, event=AuditLog.Event.REMOTE_SERVER_REACTIVATED)


def _set_deactivated(server: RemoteZulipServer, *, deactivated: bool, event: str) -> None:
    at = datetime.now(UTC) if deactivated else None
    with transaction.atomic():
        # Conditional update: repeating the action changes nothing and logs nothing.
        updated = RemoteZulipServer.objects.filter(
            pk=server.pk, deactivated=not deactivated
        ).update(deactivated=deactivated, deactivated_at=at)
        # No save signal for an update: the notify path's caches are told here.
        server_uuid = server.uuid
        transaction.on_commit(lambda: lookups.publish_change([server_uuid]))
        server.deactivated = deactivated
        server.deactivated_at = at
        if updated:
            _audit(server, event)


# --- Analytics -----------------------------------------------------------------------------


def analytics_status(*, server: RemoteZulipServer) -> dict[str, int]:
    return {
        "last_realm_count_id": server.last_realm_count_id,
        "last_installation_count_id": server.last_installation_count_id,
        "last_realmauditlog_id": server.last_realmauditlog_id,
    }


def _last_id(rows: list[dict[str, Any]], previous: int) -> int:
    """The highest row id, refusing rows not strictly beyond what was stored (Zulip's rule)."""
    last = previous
    for row in rows:
        row_id = row.get("id")
        if not isinstance(row_id, int) or isinstance(row_id, bool):
            raise BouncerError("Invalid row id")
        if row_id <= last:
            raise BouncerError("Data is out of order.")
        last = row_id
    return last


def _realm_fields(row: dict[str, Any]) -> dict[str, Any]:
    created = row.get("date_created")
    return {
        "remote_id": row["id"],
        "host": row.get("host") or "",
        "url": row.get("url") or "",
        "name": row.get("name") or "",
        "org_type": row.get("org_type") or 0,
        "date_created": datetime.fromtimestamp(created, tz=UTC) if created is not None else None,
        "deactivated": bool(row.get("deactivated")),
        "is_system_bot_realm": bool(row.get("is_system_bot_realm")),
        "authentication_methods": row.get("authentication_methods") or {},
    }


def upload_analytics(
    *,
    server: RemoteZulipServer,
    realm_counts: list[dict[str, Any]],
    installation_counts: list[dict[str, Any]],
    realmauditlog_rows: list[dict[str, Any]] | None,
    realms: list[dict[str, Any]] | None,
    version: str | None,
    merge_base: str | None,
    api_feature_level: int | None,
) -> dict[str, Any]:
    """Store what the bouncer needs of an analytics upload; answer each realm's push status."""
    realm_rows = realms or []
    # Realm uuids arrive canonical (registrations/analytics.py), so one realm is one key.
    by_uuid = {str(row["uuid"]): row for row in realm_rows}
    with transaction.atomic():
        locked = RemoteZulipServer.objects.select_for_update().get(pk=server.pk)
        last_realm_count_id = _last_id(realm_counts, locked.last_realm_count_id)
        last_installation_count_id = _last_id(
            installation_counts, locked.last_installation_count_id
        )
        last_realmauditlog_id = _last_id(realmauditlog_rows or [], locked.last_realmauditlog_id)

        existing = {str(r.uuid): r for r in RemoteRealm.objects.filter(uuid__in=list(by_uuid))}
        if any(realm.server_id != server.pk for realm in existing.values()):
            raise BouncerError("Duplicate registration detected.")
        for realm_uuid, row in by_uuid.items():
            fields = _realm_fields(row)
            realm = existing.get(realm_uuid)
            if realm is None:
                # Another request may insert the same realm concurrently; the unique uuid
                # makes the loser fail here rather than create a second row.
                RemoteRealm.objects.create(server=server, uuid=realm_uuid, **fields)
            else:
                for name, value in fields.items():
                    setattr(realm, name, value)
                realm.save(update_fields=[*fields, "last_updated"])

        locked.last_realm_count_id = last_realm_count_id
        locked.last_installation_count_id = last_installation_count_id
        locked.last_realmauditlog_id = last_realmauditlog_id
        fields_to_save = [
            "last_realm_count_id",
            "last_installation_count_id",
            "last_realmauditlog_id",
            "last_updated",
        ]
        if version is not None:
            locked.last_version = version[:128]
            fields_to_save.append("last_version")
        if merge_base is not None:
            locked.last_merge_base = merge_base[:128]
            fields_to_save.append("last_merge_base")
        if api_feature_level is not None:
            locked.last_api_feature_level = api_feature_level
            fields_to_save.append("last_api_feature_level")
        locked.save(update_fields=fields_to_save)

    return {
        "realms": {
            realm_uuid: {"can_push": True, "expected_end_timestamp": None} for realm_uuid in by_uuid
        }
    }
