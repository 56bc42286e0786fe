"""The delivery log: one row per device delivery attempt, for the operator's question
"the bouncer said 200, what happened to my notification?"."""

from django.db import models
from django.utils import timezone


class DeliveryAttempt(models.Model):
    class Provider(models.TextChoices):
        APNS = "apns", "APNs"
        FCM = "fcm", "FCM"

    class Protocol(models.TextChoices):
        LEGACY = "legacy"
        E2EE = "e2ee"
        MATRIX = "matrix"

    class Outcome(models.TextChoices):
        DELIVERED = "delivered"
        TOKEN_DEAD = "token_dead"
        RETRY = "retry"
        CONFIG_FAULT = "config_fault"
        REJECTED = "rejected"
        GAVE_UP = "gave_up"

    created = models.DateTimeField(default=timezone.now, db_index=True)
    batch_id = models.UUIDField(db_index=True)
    # Plain ids, not foreign keys: the log outlives devices, realms and even servers, and
    # writing it must never wait on a lock held by a registration.
    server_id = models.BigIntegerField(db_index=True)
    realm_id = models.BigIntegerField(null=True, blank=True)
    device_id = models.BigIntegerField(help_text="RemotePushDevice or legacy token row id.")
    protocol = models.CharField(max_length=8, choices=Protocol.choices)
    provider = models.CharField(max_length=4, choices=Provider.choices)
    app_id = models.CharField(max_length=255, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    upstream_status = models.PositiveSmallIntegerField(null=True, blank=True)
    reason = models.CharField(max_length=128, blank=True)
    upstream_id = models.CharField(
        max_length=255, blank=True, help_text="apns-id or FCM message name."
    )
    attempt = models.PositiveSmallIntegerField(default=1)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        verbose_name = "delivery attempt"
        indexes = [models.Index(fields=["server_id", "-created"], name="delivery_server_recent")]

    def __str__(self) -> str:
        return f"{self.provider} {self.outcome} device {self.device_id} ({self.batch_id})"
