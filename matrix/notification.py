"""A Push Gateway API notification, read as Sygnal reads it (pure: no I/O).

The field rules are Sygnal's (sygnal/notifications.py): `devices` a list, each with string
`app_id` and `pushkey`, optional `pushkey_ts` (int), `data` and `tweaks` (objects), `counts`
with integer `unread` / `missed_calls`. Where Sygnal would fail later on a value of the wrong
type (a 500 there), the notification is refused here with a 400.
"""

from dataclasses import dataclass
from typing import Any

# Sygnal has no bound; a homeserver sends one device per pusher. A bound keeps one request
# from holding a web process for long; beyond it the request is refused (400), never cut.
MAX_DEVICES = 1000
# Deeper JSON than any notification needs; payload building copies and encodes what is
# nested (content, default_payload) by recursion, which a deep enough value would exhaust.
MAX_DEPTH = 32


class InvalidNotification(Exception):
    pass


def _typed[T](raw: dict[str, Any], key: str, kind: type[T], *, where: str) -> T | None:
    if key not in raw or raw[key] is None:
        return None
    value = raw[key]
    # bool is an int to Python, never to JSON's readers.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidNotification(f"{where}{key} is of invalid type")
    return value


@dataclass(frozen=True, slots=True)
class Device:
    app_id: str
    pushkey: str
    pushkey_ts: int
    data: dict[str, Any] | None

    @property
    def channel(self) -> str | None:
        """The channel the pusher's data names (TI-Messenger device channels)."""
        value = (self.data or {}).get("channel")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Counts:
    unread: int | None = None
    missed_calls: int | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    devices: list[Device]
    counts: Counts
    event_id: str | None = None
    room_id: str | None = None
    type: str | None = None
    sender: str | None = None
    sender_display_name: str | None = None
    room_name: str | None = None
    room_alias: str | None = None
    membership: str | None = None
    user_is_target: bool | None = None
    prio: str | None = None
    content: dict[str, Any] | None = None

    @property
    def event_id_only(self) -> bool:
        # Sygnal's test: the homeserver sent an event id and no event (format event_id_only).
        return bool(self.event_id) and not self.type


def _device(raw: Any, index: int) -> Device:
    where = f"devices[{index}]."
    if not isinstance(raw, dict):
        raise InvalidNotification(f"devices[{index}] must be an object")
    app_id, pushkey = raw.get("app_id"), raw.get("pushkey")
    if not isinstance(app_id, str):
        raise InvalidNotification("Device with missing or non-string app_id")
    if not isinstance(pushkey, str):
        raise InvalidNotification("Device with missing or non-string pushkey")
    _typed(raw, "tweaks", dict, where=where)
    return Device(
        app_id=app_id,
        pushkey=pushkey,
        pushkey_ts=_typed(raw, "pushkey_ts", int, where=where) or 0,
        data=_typed(raw, "data", dict, where=where),
    )


def _too_deep(value: Any, limit: int) -> bool:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, depth + 1) for v in item]
    return False


def parse_body(body: Any) -> Notification:
    if _too_deep(body, MAX_DEPTH):
        raise InvalidNotification(f"JSON nested deeper than {MAX_DEPTH} levels")
    if not isinstance(body, dict) or not isinstance(body.get("notification"), dict):
        raise InvalidNotification("Invalid notification: expecting object in 'notification' key")
    raw: dict[str, Any] = body["notification"]
    devices = raw.get("devices")
    if not isinstance(devices, list):
        raise InvalidNotification("Expected list in 'devices' key")
    if not devices:
        raise InvalidNotification("No devices in notification")
    if len(devices) > MAX_DEVICES:
        raise InvalidNotification(f"Too many devices in notification (at most {MAX_DEVICES})")
    counts = _typed(raw, "counts", dict, where="") or {}
    strings = {
        key: _typed(raw, key, str, where="")
        for key in (
            "event_id",
            "room_id",
            "type",
            "sender",
            "sender_display_name",
            "room_name",
            "room_alias",
            "membership",
            "prio",
        )
    }
    return Notification(
        devices=[_device(d, i) for i, d in enumerate(devices)],
        counts=Counts(
            unread=_typed(counts, "unread", int, where="counts."),
            missed_calls=_typed(counts, "missed_calls", int, where="counts."),
        ),
        user_is_target=_typed(raw, "user_is_target", bool, where=""),
        content=_typed(raw, "content", dict, where=""),
        **strings,
    )
