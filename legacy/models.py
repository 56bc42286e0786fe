"""Pre-E2EE push device tokens, registered in clear by Zulip servers (spec part 1, section 3)."""

import hashlib

from django.db import models
from django.db.models.functions import MD5, Lower
from django.utils import timezone

from registrations.models import TOKEN_MAX_LENGTH, RemoteRealm, RemoteZulipServer


class RemotePushDeviceToken(models.Model):
    class Kind(models.IntegerChoices):
        APNS = 1, "APNs"
        FCM = 2, "FCM"

    server = models.ForeignKey(
        RemoteZulipServer, on_delete=models.CASCADE, related_name="legacy_tokens"
    )
    # Servers identify the user by id (old) or uuid (new); both may arrive, see services.
    user_id = models.BigIntegerField(null=True, blank=True)
    user_uuid = models.UUIDField(null=True, blank=True)
    remote_realm = models.ForeignKey(
        RemoteRealm,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="legacy_tokens",
    )
    kind = models.PositiveSmallIntegerField(choices=Kind.choices)
    token = models.CharField(max_length=TOKEN_MAX_LENGTH)
    ios_app_id = models.CharField(max_length=255, null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "legacy push device token"
        # Zulip's four uniqueness rules: per server, user identity and kind, one row per token,
        # APNs tokens compared without case. NULL identities are distinct, so an id-row and a
        # uuid-row for the same token may coexist (notify de-duplicates them). Tokens may be
        # 4096 characters, beyond what a btree entry holds (~2.7 kB), so the indexes hold an
        # MD5 of the token instead of the token itself.
        constraints = [
            models.UniqueConstraint(
                "server",
                "user_id",
                "kind",
                MD5(Lower("token")),
                name="legacy_apns_server_user_id_kind_token",
                condition=models.Q(kind=1),
            ),
            models.UniqueConstraint(
                "server",
                "user_id",
                "kind",
                MD5("token"),
                name="legacy_fcm_server_user_id_kind_token",
                condition=models.Q(kind=2),
            ),
            models.UniqueConstraint(
                "server",
                "user_uuid",
                "kind",
                MD5(Lower("token")),
                name="legacy_apns_server_uuid_kind_token",
                condition=models.Q(kind=1),
            ),
            models.UniqueConstraint(
                "server",
                "user_uuid",
                "kind",
                MD5("token"),
                name="legacy_fcm_server_uuid_kind_token",
                condition=models.Q(kind=2),
            ),
        ]
        indexes = [
            models.Index(fields=["server", "user_uuid"], name="legacy_server_user_uuid"),
            models.Index(fields=["server", "user_id"], name="legacy_server_user_id"),
            # Dead tokens are deleted for every server; found through this hash (token_digest()).
            models.Index(MD5(Lower("token")), name="legacy_token_digest"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} token {self.pk}"


def token_digest(token: str) -> str:
    """What `legacy_token_digest` indexes: md5(lower(token)), for look-ups across servers."""
    return hashlib.md5(token.lower().encode(), usedforsecurity=False).hexdigest()
