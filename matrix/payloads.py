"""What a Matrix notification looks like at Apple and Google: Sygnal's payloads (pure).

APNs (sygnal/apnspushkin.py): an alert with a localisation key and arguments from the sender,
room and body, the badge from the counts, the pusher's `default_payload` merged; a
notification with only an event id gets only the ids (and counts). Fields are cut so the
payload fits Apple's 4 KB (sygnal/apnstruncate.py). FCM v1 (sygnal/gcmpushkin.py): the
notification's fields as string data, `content` flattened to `content_<key>`, each value cut
to 1 KB. `prio: low` is APNs priority 5 (but never for VoIP) and FCM "normal".
"""

import base64
import binascii
import copy
from typing import Any

from delivery.limits import APNS_MAX_BYTES
from delivery.types import compact_json, utf8_size
from matrix.notification import Device, Notification

MAX_FIELD_LENGTH = 1024  # APNs: characters of a name shown in the alert
MAX_BYTES_PER_FIELD = 1024  # FCM: bytes of one data value


class BadDefaultPayload(Exception):
    """The pusher's `default_payload` is not an object: Sygnal rejects the pushkey."""


def default_payload(device: Device) -> dict[str, Any]:
    value = (device.data or {}).get("default_payload", {})
    if not isinstance(value, dict):
        raise BadDefaultPayload
    return value


def apns_priority(n: Notification, *, push_type: str | None = None) -> int:
    # A VoIP push rings the phone: Apple wants it sent at once (10) whatever the homeserver's
    # prio (Sygnal would send 5 for `low`).
    if push_type == "voip":
        return 10
    return 5 if n.prio == "low" else 10


def fcm_priority(n: Notification) -> str:
    return "normal" if n.prio == "low" else "high"


def apns_token(pushkey: str, *, convert_to_hex: bool) -> str | None:
    """The device token Apple knows: Matrix clients upload it base64, Apple wants hex.
    None when the pushkey is not base64 (no token can come of it)."""
    if not convert_to_hex:
        return pushkey
    try:
        return base64.b64decode(pushkey).hex()
    except (binascii.Error, ValueError):
        return None


def _event_id_only(n: Notification, defaults: dict[str, Any], badges: bool) -> dict[str, Any]:
    payload: dict[str, Any] = dict(defaults)
    if n.room_id:
        payload["room_id"] = n.room_id
    if n.event_id:
        payload["event_id"] = n.event_id
    if badges:
        if n.counts.unread is not None:
            payload["unread_count"] = n.counts.unread
        if n.counts.missed_calls is not None:
            payload["missed_calls"] = n.counts.missed_calls
    return payload


def _message_alert(n: Notification, sender: str) -> tuple[str, list[str | None]]:
    room = (n.room_name or n.room_alias or "")[:MAX_FIELD_LENGTH] or None
    content = n.content or {}
    body: str | None = None
    action: str | None = None
    is_image = False
    if "msgtype" in content and "body" in content:
        if content["msgtype"] == "m.emote":
            action = content["body"]
        else:
            # Sygnal's fallback: `body` is always user-visible text in an m.room.message.
            body = content["body"]
        is_image = content["msgtype"] == "m.image"
    if room:
        if is_image:
            return "IMAGE_FROM_USER_IN_ROOM", [sender, body, room]
        if body:
            return "MSG_FROM_USER_IN_ROOM_WITH_CONTENT", [sender, room, body]
        if action:
            return "ACTION_FROM_USER_IN_ROOM", [room, sender, action]
        return "MSG_FROM_USER_IN_ROOM", [sender, room]
    if is_image:
        return "IMAGE_FROM_USER", [sender, body]
    if body:
        return "MSG_FROM_USER_WITH_CONTENT", [sender, body]
    if action:
        return "ACTION_FROM_USER", [sender, action]
    return "MSG_FROM_USER", [sender]


def _alert(n: Notification) -> tuple[str | None, list[Any] | None]:
    if not n.sender and not n.sender_display_name:
        sender = " "
    else:
        sender = n.sender_display_name if n.sender_display_name is not None else n.sender or ""
    sender = sender[:MAX_FIELD_LENGTH]
    if n.type in ("m.room.message", "m.room.encrypted"):
        return _message_alert(n, sender)
    if n.type == "m.call.invite":
        offer = (n.content or {}).get("offer")
        sdp = offer.get("sdp") if isinstance(offer, dict) else None
        video = isinstance(sdp, str) and "m=video" in sdp
        return ("VIDEO_CALL_FROM_USER" if video else "VOICE_CALL_FROM_USER"), [sender]
    if n.type == "m.room.member":
        if n.user_is_target and n.membership == "invite":
            room = n.room_name or n.room_alias
            if room:
                return "USER_INVITE_TO_NAMED_ROOM", [sender, room[:MAX_FIELD_LENGTH]]
            return "USER_INVITE_TO_CHAT", [sender]
        return None, None
    if n.type:
        return "MSG_FROM_USER", [sender]
    return None, None


def _full(n: Notification, device: Device, badges: bool) -> dict[str, Any] | None:
    loc_key, loc_args = _alert(n)
    badge: int | None = None
    if badges:
        badge = n.counts.unread
        if n.counts.missed_calls is not None:
            badge = (badge or 0) + n.counts.missed_calls
    if loc_key is None and badge is None:
        return None  # Sygnal: "Nothing to do"
    payload: dict[str, Any] = copy.deepcopy(default_payload(device)) if n.type else {}
    aps = payload.setdefault("aps", {})
    if not isinstance(aps, dict):
        raise BadDefaultPayload
    if loc_key:
        aps.setdefault("alert", {})["loc-key"] = loc_key
    if loc_args:
        aps.setdefault("alert", {})["loc-args"] = loc_args
    if badge is not None:
        aps["badge"] = badge
    if loc_key and n.room_id:
        payload["room_id"] = n.room_id
    if loc_key and n.event_id:
        payload["event_id"] = n.event_id
    return payload


def apns_payload(
    n: Notification, device: Device, *, send_badge_counts: bool = True
) -> dict[str, Any] | None:
    """The APNs body for one device; None when there is nothing to send (no alert, no badge).
    Raises BadDefaultPayload when the pusher's default_payload is not an object."""
    defaults = default_payload(device)
    if n.event_id_only:
        return _event_id_only(n, defaults, send_badge_counts)
    payload = _full(n, device, send_badge_counts)
    return truncate(payload, APNS_MAX_BYTES) if payload is not None else None


# --- Truncation to Apple's limit (sygnal/apnstruncate.py) ----------------------------------


def _choppables(aps: dict[str, Any]) -> list[tuple[str, int]]:
    alert = aps.get("alert")
    if isinstance(alert, str):
        return [("alert", 0)]
    if not isinstance(alert, dict):
        return []
    found: list[tuple[str, int]] = []
    if isinstance(alert.get("body"), str):
        found.append(("body", 0))
    args = alert.get("loc-args")
    if isinstance(args, list):
        found += [("loc-args", i) for i, a in enumerate(args) if isinstance(a, str)]
    return found


def _get(aps: dict[str, Any], where: tuple[str, int]) -> str:
    kind, i = where
    if kind == "alert":
        return str(aps["alert"])
    if kind == "body":
        return str(aps["alert"]["body"])
    return str(aps["alert"]["loc-args"][i])


def _put(aps: dict[str, Any], where: tuple[str, int], value: str) -> None:
    kind, i = where
    if kind == "alert":
        aps["alert"] = value
    elif kind == "body":
        aps["alert"]["body"] = value
    else:
        aps["alert"]["loc-args"][i] = value


def truncate(payload: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """Cut the alert's longest text, a character at a time, until the body fits. A body that
    cannot be made to fit is returned as it is: the relay refuses it (PayloadTooLarge)."""
    if utf8_size(compact_json(payload)) <= max_bytes or not isinstance(payload.get("aps"), dict):
        return payload
    payload = copy.deepcopy(payload)
    aps = payload["aps"]
    while utf8_size(compact_json(payload)) > max_bytes:
        choppable = [(len(_get(aps, c).encode("utf-8", "replace")), c) for c in _choppables(aps)]
        longest = max(((n, c) for n, c in choppable if n > 0), default=None)
        if longest is None:
            break
        _, where = longest
        # Over the limit by more than a few characters: cut the excess at once, not one by one.
        text = _get(aps, where)
        excess = utf8_size(compact_json(payload)) - max_bytes
        _put(aps, where, text[: max(len(text) - max(excess // 4, 1), 0)])
    return payload


# --- FCM v1 (sygnal/gcmpushkin.py, _build_data) ----------------------------------------------


def truncate_str(value: str, max_bytes: int = MAX_BYTES_PER_FIELD) -> str:
    raw = value.encode("utf-8", "replace")
    if len(raw) <= max_bytes:
        return value
    # Never half a character; "…" marks the cut, as Sygnal does.
    return raw[: max_bytes - 3].decode("utf-8", "ignore") + "…"


def _data_value(value: Any) -> str:
    # FCM v1 data values are strings; Sygnal passes a non-string default_payload value
    # through and Google refuses the message, so it is sent here as JSON text instead.
    return value if isinstance(value, str) else compact_json(value)


def fcm_data(
    n: Notification, device: Device, *, send_badge_counts: bool = True
) -> dict[str, str] | None:
    """FCM's data for one device; None when there is nothing to send (a badge-only
    notification without counts). Raises BadDefaultPayload as apns_payload does."""
    data: dict[str, str] = {k: _data_value(v) for k, v in default_payload(device).items()}
    for attr in (
        "event_id",
        "type",
        "sender",
        "room_name",
        "room_alias",
        "membership",
        "sender_display_name",
        "room_id",
    ):
        value = getattr(n, attr)
        if isinstance(value, str):
            data[attr] = truncate_str(value)
    for key, value in (n.content or {}).items():
        if isinstance(value, str):
            data[f"content_{key}"] = truncate_str(value)
    data["prio"] = fcm_priority(n)
    counts: dict[str, str] = {}
    if send_badge_counts:
        # Sygnal leaves out zero counts on FCM (`if n.counts.unread:`).
        if n.counts.unread:
            counts["unread"] = str(n.counts.unread)
        if n.counts.missed_calls:
            counts["missed_calls"] = str(n.counts.missed_calls)
    if not data.get("room_id") and not data.get("event_id") and not counts:
        return None
    data.update(counts)
    return data
