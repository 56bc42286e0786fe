"""Each provider's payload limit, checked before anything is sent (pure: no I/O).

A payload over its limit is refused by the provider (APNs 413 PayloadTooLarge, FCM 400
INVALID_ARGUMENT); sent anyway it costs a round trip, and a large enough one would not even
fit an HTTP/2 frame. It is refused here instead, with the outcome Apple's answer would have
had: rejected, reason PayloadTooLarge, not retried, the token kept.
"""

from delivery.types import Delivery, Provider

# Apple: "the maximum payload size is 4 KB (4,096 bytes)", 5 KB for VoIP notifications.
APNS_MAX_BYTES = 4096
APNS_VOIP_MAX_BYTES = 5120
# Google: the data payload, keys and values, up to 4,096 bytes.
FCM_MAX_DATA_BYTES = 4096

PAYLOAD_TOO_LARGE = "PayloadTooLarge"


def limit_for(delivery: Delivery) -> int:
    if delivery.provider == Provider.FCM:
        return FCM_MAX_DATA_BYTES
    return APNS_VOIP_MAX_BYTES if delivery.push_type == "voip" else APNS_MAX_BYTES


def too_large(delivery: Delivery) -> bool:
    return delivery.size > limit_for(delivery)
