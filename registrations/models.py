"""Remote Zulip servers, their realms, the bouncer's key pairs and E2EE device registrations."""

import contextvars
import hashlib
import hmac
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import models
from django.db.models.functions import MD5, Lower
from django.utils import timezone

UUID_LENGTH = 36
API_KEY_LENGTH = 64
HOSTNAME_MAX_LENGTH = 128
VERSION_MAX_LENGTH = 128
TOKEN_MAX_LENGTH = 4096

_HASH_SCHEME = "sha256"


def hash_api_key(api_key: str, *, salt: str | None = None) -> str:
    """`sha256$<salt>$<digest>`: a salted SHA-256 is enough for a 64-character random key."""
    salt = salt if salt is not None else secrets.token_hex(16)
    digest = hashlib.sha256(f"{salt}${api_key}".encode()).hexdigest()
    return f"{_HASH_SCHEME}${salt}${digest}"


def api_key_matches(api_key: str, stored_hash: str) -> bool:
    try:
        scheme, salt, _digest = stored_hash.split("$", 2)
    except ValueError:
        return False
    if scheme != _HASH_SCHEME:
        return False
    return hmac.compare_digest(hash_api_key(api_key, salt=salt), stored_hash)


class RemoteZulipServer(models.Model):
    uuid = models.UUIDField(unique=True, help_text="The server's zulip_org_id.")
    api_key_hash = models.CharField(
        max_length=128, help_text="Salted SHA-256 of the zulip_org_key; the key is never stored."
    )
    hostname = models.CharField(max_length=HOSTNAME_MAX_LENGTH, db_index=True)
    contact_email = models.EmailField(blank=True)
    created = models.DateTimeField(default=timezone.now)
    last_updated = models.DateTimeField(auto_now=True)
    last_request_datetime = models.DateTimeField(null=True, blank=True)
    last_version = models.CharField(max_length=VERSION_MAX_LENGTH, null=True, blank=True)
    last_merge_base = models.CharField(max_length=VERSION_MAX_LENGTH, null=True, blank=True)
    last_api_feature_level = models.PositiveIntegerField(null=True, blank=True)
    deactivated = models.BooleanField(default=False)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    # Legacy tokens removed because their phone moved to E2EE or the server left.
    legacy_tokens_retired = models.BigIntegerField(default=0)

    # The highest row ids received by analytics upload; `server/analytics/status` answers them
    # so the server sends only newer rows next time.
    last_realm_count_id = models.BigIntegerField(default=0)
    last_installation_count_id = models.BigIntegerField(default=0)
    last_realmauditlog_id = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "remote Zulip server"
        constraints = [
            # Zulip's rule: a hostname belongs to one active server; deactivated servers keep
            # theirs for the record, and a new registration may take it over.
            models.UniqueConstraint(
                fields=["hostname"],
                condition=models.Q(deactivated=False),
                name="unique_active_server_hostname",
            )
        ]

    def __str__(self) -> str:
        return f"{self.hostname} ({self.uuid})"

    def set_api_key(self, api_key: str) -> None:
        self.api_key_hash = hash_api_key(api_key)

    def api_key_matches(self, api_key: str) -> bool:
        return api_key_matches(api_key, self.api_key_hash)


class RemoteRealm(models.Model):
    """A realm (organization) of a remote server; created only by analytics upload."""

    server = models.ForeignKey(RemoteZulipServer, on_delete=models.CASCADE, related_name="realms")
    uuid = models.UUIDField(unique=True)
    remote_id = models.BigIntegerField(help_text="The realm's id on its server.")
    host = models.TextField(blank=True)
    url = models.TextField(blank=True)
    name = models.TextField(blank=True)
    org_type = models.PositiveSmallIntegerField(default=0)
    date_created = models.DateTimeField(null=True, blank=True)
    deactivated = models.BooleanField(default=False)
    is_system_bot_realm = models.BooleanField(default=False)
    authentication_methods = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=timezone.now)
    last_updated = models.DateTimeField(auto_now=True)
    last_request_datetime = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "remote realm"

    def __str__(self) -> str:
        return f"{self.host or self.name} ({self.uuid})"


class BouncerKeyPair(models.Model):
    """An X25519 key pair phones seal their PushRegistration to.

    The private half is stored sealed with BOUNCER_KEY_ENCRYPTION_KEY (registrations/sealing.py);
    only that module opens it.
    """

    class Origin(models.TextChoices):
        GENERATED = "generated"
        IMPORTED = "imported"

    public_key = models.CharField(max_length=44, unique=True, help_text="Standard base64.")
    sealed_private_key = models.BinaryField(editable=False)
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.GENERATED)
    created = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "bouncer key pair"

    def __str__(self) -> str:
        return self.public_key

    @property
    def is_active(self) -> bool:
        return self.retired_at is None


# Who is acting in this thread or task: an admin user, a management command. Set where the
# action starts (admin actions, commands), so that the services writing the audit log need no
# extra argument; unset means the request came from a Zulip server or the bouncer itself.
_actor: contextvars.ContextVar[str] = contextvars.ContextVar("audit_actor", default="")


@contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Audit log entries written inside this block name `actor` as who did it."""
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)


class AuditLog(models.Model):
    """What happened to servers and keys, and when, and who did it; never secrets."""

    class Event(models.TextChoices):
        REMOTE_SERVER_CREATED = "remote_server_created"
        REMOTE_SERVER_UPDATED = "remote_server_updated"
        REMOTE_SERVER_KEY_ROTATED = "remote_server_key_rotated"
        REMOTE_SERVER_ADDED_BY_OPERATOR = "remote_server_added_by_operator"
        REMOTE_SERVER_REGISTRATION_TRANSFERRED = "remote_server_registration_transferred"
        REMOTE_SERVER_DEACTIVATED = "remote_server_deactivated"
        REMOTE_SERVER_REACTIVATED = "remote_server_reactivated"
        BOUNCER_KEY_GENERATED = "bouncer_key_generated"
        BOUNCER_KEY_IMPORTED = "bouncer_key_imported"
        BOUNCER_KEY_RETIRED = "bouncer_key_retired"
        BOUNCER_KEY_UNRETIRED = "bouncer_key_unretired"
        LEGACY_TOKENS_RETIRED = "legacy_tokens_retired"

    server = models.ForeignKey(
        RemoteZulipServer, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    event_type = models.CharField(max_length=64, choices=Event.choices)
    event_time = models.DateTimeField(default=timezone.now, db_index=True)
    extra_data = models.JSONField(default=dict, blank=True)
    actor = models.CharField(
        max_length=255,
        blank=True,
        help_text='Who did it: "admin <user>", "command <name>", "server <hostname> (API)", '
        'or "bouncer" (its periodic clean-ups).',
    )

    class Meta:
        verbose_name = "audit log entry"
        verbose_name_plural = "audit log"

    def __str__(self) -> str:
        return f"{self.event_time:%Y-%m-%d %H:%M:%S} {self.event_type}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.actor:
            self.actor = _actor.get() or self._implicit_actor()
        super().save(*args, **kwargs)

    def _implicit_actor(self) -> str:
        # Nobody declared themselves: the bouncer's own rules (legacy tokens retired, by the
        # periodic clean-up or after an E2EE registration), else a server's own API call (the
        # entry is about that server; its hostname as it was then).
        if self.event_type == self.Event.LEGACY_TOKENS_RETIRED or self.server_id is None:
            return "bouncer"
        return f"server {self.server.hostname} (API)" if self.server else "bouncer"


class RemotePushDevice(models.Model):
    """An E2EE push registration: a phone's token, opened from its sealed PushRegistration."""

    class Kind(models.TextChoices):
        APNS = "apns", "APNs"
        FCM = "fcm", "FCM"

    device_id = models.BigAutoField(primary_key=True)
    remote_realm = models.ForeignKey(RemoteRealm, on_delete=models.CASCADE, related_name="devices")
    # The first 8 bytes of SHA-256(token) as a signed big-endian integer: how servers name it.
    token_id = models.BigIntegerField()
    token = models.CharField(max_length=TOKEN_MAX_LENGTH)
    token_kind = models.CharField(max_length=4, choices=Kind.choices)
    ios_app_id = models.CharField(max_length=255, null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)
    last_registered = models.DateTimeField(default=timezone.now)
    # Set when APNs or FCM says the token is dead; a new registration clears it.
    expired_time = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "E2EE push device"
        constraints = [
            models.UniqueConstraint(
                fields=["remote_realm", "token_id"], name="unique_push_device_realm_token_id"
            )
        ]
        indexes = [
            # Finding the E2EE registration of a legacy token (legacy/retirement.py); an MD5
            # because tokens may exceed what a btree entry holds.
            models.Index("remote_realm", MD5(Lower("token")), name="push_device_realm_digest"),
        ]

    def __str__(self) -> str:
        return f"{self.token_kind} device {self.device_id}"
