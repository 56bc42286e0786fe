"""E2EE device registration (spec part 1 section 4): open the sealed PushRegistration, store it."""

import base64
import binascii
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import close_old_connections, connection
from django.utils import timezone
from nacl.public import PrivateKey

from bouncer.asyncdb import database, in_thread
from bouncer.errors import BouncerError, ErrorCode, service_unavailable
from registrations import keys, lookups, sealing
from registrations.lookups import ServerInfo
from registrations.models import RemotePushDevice, RemoteRealm, RemoteZulipServer
from registrations.realms import find_realm

logger = logging.getLogger(__name__)

# Zulip's PUSH_REGISTRATION_LIVENESS_TIMEOUT: a sealed registration is good for a day.
REGISTRATION_LIVENESS_SECONDS = 24 * 60 * 60


def invalid_registration() -> BouncerError:
    return BouncerError("Invalid encrypted_push_registration")


def decode_token_id(token_id: str) -> int:
    try:
        raw = base64.b64decode(token_id, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 8:
        raise BouncerError("`token_id` is not Base64 encoded")
    return int.from_bytes(raw, "big", signed=True)


@dataclass(frozen=True)
class Registered:
    device_id: int


def register_device(
    *,
    server: RemoteZulipServer,
    realm_uuid: str,
    bouncer_public_key: str,
    encrypted_push_registration: str,
    token_id: str | None,
) -> Registered:
    """Both protocol forms: FL 468+ names the token (token_id); FL 406-467 servers don't.

    FL 406-467 servers send a push_account_id instead, which the bouncer does not need: rows
    are keyed by (realm, token_id) in both forms, computed from the token itself, so the same
    phone registered through either form is one row and both forms get its device_id.
    """
    claimed_token_id = decode_token_id(token_id) if token_id is not None else None
    realm = find_realm(server=server, realm_uuid=realm_uuid, required=True)
    assert realm is not None
    try:
        private = keys.private_key_for(bouncer_public_key)
    except keys.KeyUnavailable as e:
        raise _misconfigured(e) from None
    registration, computed_token_id = _open(
        private, encrypted_push_registration, claimed_token_id, realm_uuid=realm.uuid
    )
    device, has_legacy_tokens = _upsert(
        server=server, realm=realm, registration=registration, token_id=computed_token_id
    )
    if has_legacy_tokens:
        retire_matching_legacy_tokens(server=server, realm=realm, device=device)
    return Registered(device_id=device.device_id)


async def register_device_async(
    *,
    server: ServerInfo,
    realm_uuid: str,
    bouncer_public_key: str,
    encrypted_push_registration: str,
    token_id: str | None,
) -> Registered:
    """register_device from the event loop, with the same answers: server and realm from the
    notify path's caches, the key pair and the upsert through the async pool; only a phone
    with legacy rows to retire takes a hand-off to an ORM thread."""
    claimed_token_id = decode_token_id(token_id) if token_id is not None else None
    realm = await lookups.find_realm(server=server, realm_uuid=realm_uuid, required=True)
    assert realm is not None
    try:
        private = await keys.private_key_for_async(bouncer_public_key)
    except keys.KeyUnavailable as e:
        raise _misconfigured(e) from None
    registration, computed_token_id = _open(
        private, encrypted_push_registration, claimed_token_id, realm_uuid=realm.uuid
    )
    [(device_id, has_legacy_tokens)] = await database().fetch(
        *_upsert_statement(
            server_id=server.id,
            realm_id=realm.id,
            registration=registration,
            token_id=computed_token_id,
            now=timezone.now(),
        )
    )
    if has_legacy_tokens:
        await in_thread(_retire_in_thread, server.id, realm.id, device_id)
    return Registered(device_id=device_id)


def _retire_in_thread(server_id: int, realm_id: int, device_id: int) -> None:
    close_old_connections()
    retire_matching_legacy_tokens(
        server=RemoteZulipServer.objects.get(pk=server_id),
        realm=RemoteRealm.objects.get(pk=realm_id),
        device=RemotePushDevice.objects.get(pk=device_id),
    )


def _misconfigured(e: keys.KeyUnavailable) -> BouncerError:
    logger.critical("%s: E2EE registrations to it are refused until it is fixed", e)
    return service_unavailable(
        "Push registration service misconfigured, retry later", retry_after=60
    )


def _open(
    private: PrivateKey | None,
    encrypted_push_registration: str,
    claimed_token_id: int | None,
    *,
    realm_uuid: uuid.UUID,
) -> tuple[sealing.PushRegistration, int]:
    """The sealed registration opened and checked; with its token id, computed."""
    if private is None:
        raise BouncerError("Invalid bouncer_public_key", code=ErrorCode.INVALID_BOUNCER_PUBLIC_KEY)
    try:
        registration = sealing.open_registration(encrypted_push_registration, private)
    except sealing.InvalidRegistration as e:
        logger.info("E2EE registration for realm %s refused: %s", realm_uuid, e)
        raise invalid_registration() from None
    computed_token_id = sealing.token_id_int(registration.token)
    if claimed_token_id is not None and claimed_token_id != computed_token_id:
        raise invalid_registration()
    if time.time() - registration.timestamp > REGISTRATION_LIVENESS_SECONDS:
        raise BouncerError("Request expired", code=ErrorCode.REQUEST_EXPIRED)
    return registration, computed_token_id


def _upsert(
    *,
    server: RemoteZulipServer,
    realm: RemoteRealm,
    registration: sealing.PushRegistration,
    token_id: int,
) -> tuple[RemotePushDevice, bool]:
    """INSERT ... ON CONFLICT (remote_realm, token_id) DO UPDATE: concurrent identical
    registrations never fail or duplicate, and a repeat clears an earlier expiry. Also says
    whether the server has legacy rows for the same phone, so that the common registration
    is this one statement and nothing else.

    In plain SQL, as the look-ups are (bouncer/rows.py): through the ORM's bulk_create this
    one statement cost more Python than the rest of the registration's statements."""
    now = timezone.now()
    device = RemotePushDevice(
        remote_realm=realm,
        token_id=token_id,
        token=registration.token,
        token_kind=registration.token_kind,
        ios_app_id=registration.ios_app_id,
        created=now,
        last_registered=now,
        expired_time=None,
    )
    with connection.cursor() as cursor:
        cursor.execute(
            *_upsert_statement(
                server_id=server.pk,
                realm_id=realm.pk,
                registration=registration,
                token_id=token_id,
                now=now,
            )
        )
        [(device.device_id, has_legacy_tokens)] = cursor.fetchall()
    device._state.adding = False
    device._state.db = connection.alias
    return device, bool(has_legacy_tokens)


_UPSERT = f"""
    INSERT INTO {RemotePushDevice._meta.db_table}
        (remote_realm_id, token_id, token, token_kind, ios_app_id, created, last_registered,
         expired_time)
    VALUES (%s, %s, %s, %s, %s, %s, %s, NULL)
    ON CONFLICT (remote_realm_id, token_id) DO UPDATE SET
        token = excluded.token,
        token_kind = excluded.token_kind,
        ios_app_id = excluded.ios_app_id,
        last_registered = excluded.last_registered,
        expired_time = NULL
    RETURNING device_id, EXISTS (SELECT 1 FROM {{legacy}} WHERE {{legacy_condition}})"""  # noqa: S608 - table names come from the models


def _upsert_statement(
    *,
    server_id: int,
    realm_id: int,
    registration: sealing.PushRegistration,
    token_id: int,
    now: datetime,
) -> tuple[str, list[Any]]:
    """The upsert (_UPSERT) for this registration and its parameters, for either cursor."""
    from legacy.models import RemotePushDeviceToken
    from legacy.retirement import same_phone_condition

    legacy_condition, legacy_params = same_phone_condition(
        server_id=server_id,
        realm_id=realm_id,
        token_kind=registration.token_kind,
        token=registration.token,
    )
    stamp = connection.ops.adapt_datetimefield_value(now)
    sql = _UPSERT.format(
        legacy=RemotePushDeviceToken._meta.db_table, legacy_condition=legacy_condition
    )
    return sql, [
        realm_id,
        token_id,
        registration.token,
        registration.token_kind,
        registration.ios_app_id,
        stamp,
        stamp,
        *legacy_params,
    ]


def retire_matching_legacy_tokens(
    *, server: RemoteZulipServer, realm: RemoteRealm, device: RemotePushDevice
) -> None:
    """The seam where a device's move to E2EE retires its legacy registration (legacy/)."""
    from legacy.retirement import retire_for_e2ee_device

    retire_for_e2ee_device(server=server, realm=realm, device=device)
