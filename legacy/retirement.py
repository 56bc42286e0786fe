"""Retiring legacy tokens once the same phone is registered for E2EE (Zulip 12, FL 483).

A Zulip server removes a user's legacy registration when the same token is registered for
E2EE, through the bouncer's `push/unregister`; when that call never arrives, the phone would
get every notification twice. The bouncer sees both registrations, so it closes the gap:
the same server's legacy rows with the same token (APNs without case) in the same realm go
away in the E2EE registration's own transaction. Rows without a realm are taken only when
the server has exactly one realm, where there is no doubt which realm they belong to.
"""

from django.db.models import Q
from django.db.models.functions import Lower

from bouncer.metrics import LEGACY_TOKENS_RETIRED
from legacy.models import RemotePushDeviceToken
from registrations.models import AuditLog, RemotePushDevice, RemoteRealm, RemoteZulipServer


def _same_token(device: RemotePushDevice) -> Q:
    if device.token_kind == RemotePushDevice.Kind.APNS:
        return Q(kind=RemotePushDeviceToken.Kind.APNS, lower_token=device.token.lower())
    return Q(kind=RemotePushDeviceToken.Kind.FCM, token=device.token)


def retire_for_e2ee_device(
    *, server: RemoteZulipServer, realm: RemoteRealm, device: RemotePushDevice
) -> int:
    """Delete the server's legacy rows for this device's token; returns how many."""
    in_realm = Q(remote_realm=realm)
    if RemoteRealm.objects.filter(server=server).count() == 1:
        in_realm |= Q(remote_realm__isnull=True)
    deleted, _ = (
        RemotePushDeviceToken.objects.annotate(lower_token=Lower("token"))
        .filter(server=server)
        .filter(in_realm)
        .filter(_same_token(device))
        .delete()
    )
    if deleted:
        LEGACY_TOKENS_RETIRED.labels(reason="moved_to_e2ee").inc(deleted)
        AuditLog.objects.create(
            server=server,
            event_type=AuditLog.Event.LEGACY_TOKENS_RETIRED,
            extra_data={"reason": "moved_to_e2ee", "count": deleted, "device_id": device.device_id},
        )
    return deleted
