"""Device channels (TI-Messenger's push "channels"): list, read and change a device's.

The shapes follow gematik's push-notification concept (the Fachdienst's /channels/v1 API):
a device's channels are `{"channels": [{"id", "status"}]}` with status `enabled`, `disabled`
or `not_set` (which counts as disabled); a POST changes only the channels it names.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import transaction

from bouncer.asyncdb import database
from bouncer.errors import MatrixError
from matrix.config import MatrixApp, MatrixConfigError, find_app
from matrix.models import DeviceChannel

ENABLED = "enabled"
DISABLED = "disabled"
NOT_SET = "not_set"
MAX_PUSHKEY_BYTES = 512  # Matrix's bound on a pushkey
MAX_APP_ID_BYTES = 255  # the column's size (Matrix: 64 characters)
MAX_CHANGES = 100

_TABLE = DeviceChannel._meta.db_table


def app_for(app_id: str | None) -> MatrixApp:
    if not app_id:
        raise MatrixError("Missing app_id", errcode="M_MISSING_PARAM")
    try:
        app = find_app(app_id)
    except MatrixConfigError:
        app = None
    if app is None:
        raise MatrixError("Unknown app_id", errcode="M_NOT_FOUND", status=404)
    return app


def storable(text: str, max_bytes: int = MAX_PUSHKEY_BYTES) -> bool:
    """Text a channel row can hold: UTF-8 (no lone surrogate), no NUL (PostgreSQL refuses
    both), within the column. No device with any other pushkey or app id has channels."""
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        return False
    return 0 < size <= max_bytes and "\x00" not in text


def _checked_pushkey(pushkey: str) -> str:
    if not storable(pushkey):
        raise MatrixError("Invalid pushkey", errcode="M_INVALID_PARAM")
    return pushkey


def available(*, app_id: str | None) -> dict[str, Any]:
    app = app_for(app_id)
    return {"channels": [{"id": c.id, "description": c.description} for c in app.channels]}


def device_channels(*, app_id: str | None, pushkey: str) -> dict[str, Any]:
    app = app_for(app_id)
    assert app_id is not None
    if not storable(app_id, MAX_APP_ID_BYTES):
        raise MatrixError("Invalid app_id", errcode="M_INVALID_PARAM")
    states = dict(
        DeviceChannel.objects.filter(app_id=app_id, pushkey=_checked_pushkey(pushkey)).values_list(
            "channel", "enabled"
        )
    )
    return {
        "channels": [
            {
                "id": c.id,
                "status": NOT_SET if c.id not in states else ENABLED if states[c.id] else DISABLED,
            }
            for c in app.channels
        ]
    }


def _changes(app: MatrixApp, body: Any) -> dict[str, bool]:
    raw = body.get("channels") if isinstance(body, Mapping) else None
    if not isinstance(raw, list):
        raise MatrixError("Expected a list in 'channels'")
    if len(raw) > MAX_CHANGES:
        raise MatrixError(f"At most {MAX_CHANGES} channels per request")
    changes: dict[str, bool] = {}
    for item in raw:
        if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
            raise MatrixError("Each channel needs a string 'id'")
        status = item.get("status")
        if status not in (ENABLED, DISABLED):
            raise MatrixError(f"A channel's status is {ENABLED!r} or {DISABLED!r}")
        if not app.has_channel(item["id"]):
            raise MatrixError(f"Unknown channel {item['id']!r}", errcode="M_INVALID_PARAM")
        changes[item["id"]] = status == ENABLED
    return changes


def update(*, app_id: str | None, pushkey: str, body: Any) -> dict[str, Any]:
    """Set the channels the body names; the others keep their state. Nothing changes when
    any of them is invalid."""
    app = app_for(app_id)
    assert app_id is not None
    if not storable(app_id, MAX_APP_ID_BYTES):
        raise MatrixError("Invalid app_id", errcode="M_INVALID_PARAM")
    pushkey = _checked_pushkey(pushkey)
    changes = _changes(app, body)
    with transaction.atomic():
        DeviceChannel.objects.bulk_create(
            [
                DeviceChannel(app_id=app_id, pushkey=pushkey, channel=channel, enabled=enabled)
                for channel, enabled in changes.items()
            ],
            update_conflicts=True,
            unique_fields=["app_id", "pushkey", "channel"],
            update_fields=["enabled", "updated"],
        )
    return {}


async def enabled_pushkeys(
    wanted: Mapping[tuple[str, str], Sequence[str]],
) -> dict[tuple[str, str], set[str]]:
    """Of each (app_id, channel)'s pushkeys, those whose device enabled that channel."""
    conditions: list[str] = []
    params: list[Any] = []
    for (app_id, channel), named in wanted.items():
        pushkeys = [p for p in named if storable(p)]
        if not (pushkeys and storable(app_id, MAX_APP_ID_BYTES) and storable(channel, 255)):
            continue
        conditions.append(
            f"(app_id = %s AND channel = %s AND pushkey IN ({', '.join(['%s'] * len(pushkeys))}))"
        )
        params += [app_id, channel, *pushkeys]
    if not conditions:
        return {}
    rows = await database().fetch(
        f"SELECT app_id, channel, pushkey FROM {_TABLE} "  # noqa: S608 - names from the model
        f"WHERE enabled AND ({' OR '.join(conditions)})",
        params,
    )
    found: dict[tuple[str, str], set[str]] = {}
    for app_id, channel, pushkey in rows:
        found.setdefault((app_id, channel), set()).add(pushkey)
    return found
