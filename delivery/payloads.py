"""What APNs and FCM receive, built exactly as Zulip's bouncer builds it (pure: no I/O).

The notify endpoints' request models live here too, since they define the payloads.
Spec: zulip-delivery.md sections 2-4.
"""

import json
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, ConfigDict, Discriminator, Field, Tag, model_validator

from bouncer.errors import BouncerError
from bouncer.params import Params, encodable

# Zulip keeps the newest 200 message ids in a removal notification.
MAX_REMOVED_MESSAGE_IDS = 200
# APNs keeps an undelivered legacy notification for a day (Zulip's apns-expiration).
LEGACY_APNS_EXPIRATION_SECONDS = 24 * 60 * 60

DEFAULT_E2EE_APS: dict[str, Any] = {"mutable-content": 1, "alert": {"title": "New notification"}}

# aioapns' PushType values, the set Zulip's bouncer accepts in apns_push_type.
ApnsPushType = Literal[
    "alert", "background", "voip", "complication", "fileprovider", "mdm", "liveactivity"
]


# --- Legacy notify -------------------------------------------------------------------------

# A payload the bouncer can send: no lone surrogate (no UTF-8 encoding exists, so the send
# would fail after the request was accepted), no NUL, no non-finite number, bounded depth.
Payload = Annotated[dict[str, Any], AfterValidator(encodable)]


class LegacyNotifyParams(Params):
    user_id: int | None = None
    user_uuid: str | None = None
    realm_uuid: str | None = None
    gcm_payload: Payload = Field(default_factory=dict)
    apns_payload: Payload = Field(default_factory=dict)
    gcm_options: Payload = Field(default_factory=dict)
    android_devices: list[str] = Field(default_factory=list)
    apple_devices: list[str] = Field(default_factory=list)


class TestNotificationParams(Params):
    # Zulip's TestNotificationPayload forbids keys it does not know (400).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    token: str
    token_kind: int
    user_id: int | None = None
    user_uuid: str | None = None
    realm_uuid: str | None = None
    base_payload: Payload = Field(default_factory=dict)


def truncate_removal(payload: dict[str, Any]) -> dict[str, Any]:
    """A removal keeps only the newest 200 message ids, sorted ascending, comma-joined."""
    if payload.get("event") != "remove" or "zulip_message_ids" not in payload:
        return payload
    raw = str(payload["zulip_message_ids"])
    try:
        ids = sorted({int(part) for part in raw.split(",") if part.strip()})
    except ValueError:
        raise BouncerError("Invalid zulip_message_ids") from None
    return {**payload, "zulip_message_ids": ",".join(map(str, ids[-MAX_REMOVED_MESSAGE_IDS:]))}


def legacy_apns_body(apns_payload: dict[str, Any]) -> dict[str, Any]:
    """Everything under `custom` moves to the top level; the rest becomes `aps`."""
    aps = dict(apns_payload)
    custom = aps.pop("custom", None) or {}
    if not isinstance(custom, dict):
        raise BouncerError("Invalid apns_payload: custom is not a dict")
    zulip = custom.get("zulip")
    if isinstance(zulip, dict):
        custom = {**custom, "zulip": truncate_removal(zulip)}
    return {**custom, "aps": aps}


def legacy_fcm_data(gcm_payload: dict[str, Any]) -> dict[str, str]:
    """FCM data values must be strings; Zulip converts with Python's str() (True -> "True")."""
    payload = truncate_removal(gcm_payload)
    return {key: value if isinstance(value, str) else str(value) for key, value in payload.items()}


def fcm_priority(gcm_options: dict[str, Any], gcm_payload: dict[str, Any]) -> str:
    """Zulip's parse_fcm_options: only `priority`, high for messages, normal otherwise."""
    options = dict(gcm_options)
    priority = options.pop("priority", None)
    if priority is None:
        priority = "high" if gcm_payload.get("event") == "message" else "normal"
    if priority not in ("high", "normal"):
        raise BouncerError(f"Invalid GCM option to bouncer: priority {priority!r}")
    if options:
        compact = json.dumps(options, separators=(",", ":"))  # orjson's output, as Zulip's
        raise BouncerError(f"Invalid GCM options to bouncer: {compact}")
    return str(priority)


def test_notification_payloads(
    base_payload: dict[str, Any], *, now: int
) -> tuple[dict[str, Any], dict[str, str]]:
    """Zulip's test notification: (APNs body, FCM data)."""
    realm_name = base_payload.get("realm_name", "")
    realm_url = base_payload.get("realm_url", base_payload.get("realm_uri", ""))
    zulip = {**base_payload, "event": "test"}
    apns = legacy_apns_body(
        {
            "alert": {
                "title": "Test notification",
                "body": f"This is a test notification from {realm_name} ({realm_url}).",
            },
            "sound": "default",
            "custom": {"zulip": zulip},
        }
    )
    fcm = legacy_fcm_data({**base_payload, "event": "test", "time": now})
    return apns, fcm


# --- E2EE notify ---------------------------------------------------------------------------


class ApnsHttpHeaders(Params):
    apns_priority: Literal[10, 5, 1]
    apns_push_type: ApnsPushType


class _E2EEPayload(Params):
    # FL 468+ names the phone's key `push_key_id`; released 11.x servers (FL 413-467) name
    # their account `push_account_id`. The phone reads whichever its server's version sends,
    # so the name is relayed as it came.
    push_key_id: int | None = Field(default=None, ge=0, le=2**32 - 1)
    push_account_id: int | None = Field(default=None, ge=0, le=2**63 - 1)
    encrypted_data: str = Field(max_length=8192)

    @model_validator(mode="after")
    def _one_key_name(self) -> Self:
        if self.push_key_id is None and self.push_account_id is None:
            raise ValueError("Missing 'push_key_id' argument")
        return self

    def key_field(self) -> tuple[str, int]:
        if self.push_key_id is not None:
            return "push_key_id", self.push_key_id
        assert self.push_account_id is not None
        return "push_account_id", self.push_account_id


class ApnsE2EEPayload(_E2EEPayload):
    aps: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_E2EE_APS))


class FcmE2EEPayload(_E2EEPayload):
    pass


class ApnsPushRequest(Params):
    # FL 468+ names the device by token_id; FL 406-467 servers by device_id.
    token_id: str | None = None
    device_id: int | None = None
    http_headers: ApnsHttpHeaders
    payload: ApnsE2EEPayload


class FcmPushRequest(Params):
    token_id: str | None = None
    device_id: int | None = None
    fcm_priority: Literal["high", "normal"]
    payload: FcmE2EEPayload


def _push_request_kind(item: Any) -> str:
    # Zulip resolves the union by shape: only APNs items carry http_headers.
    if isinstance(item, dict):
        return "apns" if "http_headers" in item else "fcm"
    return "apns" if isinstance(item, ApnsPushRequest) else "fcm"


PushRequest = Annotated[
    Annotated[ApnsPushRequest, Tag("apns")] | Annotated[FcmPushRequest, Tag("fcm")],
    Discriminator(_push_request_kind),
]


class E2EENotifyParams(Params):
    realm_uuid: str
    push_requests: list[PushRequest] = Field(max_length=1000)


def e2ee_apns_body(request: ApnsPushRequest) -> dict[str, Any]:
    # The ciphertext sits at the top level beside aps; the key id stays an integer.
    name, value = request.payload.key_field()
    return {
        name: value,
        "encrypted_data": request.payload.encrypted_data,
        "aps": request.payload.aps,
    }


def e2ee_fcm_data(request: FcmPushRequest) -> dict[str, str]:
    # FCM data values are strings.
    name, value = request.payload.key_field()
    return {name: str(value), "encrypted_data": request.payload.encrypted_data}
