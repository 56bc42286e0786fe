"""E2EE notify (zulip-delivery.md sections 3-4): each push request names a phone by token id
(FL 468+) or device id (FL 406-467); its ciphertext goes to the phone unread."""

import time
from collections import defaultdict
from typing import Any, cast

from django.db import transaction
from django.utils import timezone

from bouncer.asyncdb import database
from bouncer.errors import BouncerError, ErrorCode
from delivery import engine
from delivery.payloads import ApnsPushRequest, E2EENotifyParams, e2ee_apns_body, e2ee_fcm_data
from delivery.types import VOIP, Delivery, is_voip_app
from registrations import lookups
from registrations.devices import decode_token_id
from registrations.lookups import DeviceRow, RealmInfo, ServerInfo, find_realm
from registrations.models import RemotePushDevice

# A billing-free bouncer always lets a realm push (spec part 1 section 8).
CAN_PUSH = {"can_push": True, "expected_end_timestamp": None}
PROTOCOL = "e2ee"

_DEVICE_TABLE = RemotePushDevice._meta.db_table


def active_devices_condition(
    *, realm_id: int, token_ids: set[int], device_ids: set[int]
) -> tuple[str, list[int]] | None:
    """SQL for a realm's unexpired devices named by token id or device id (through the
    (realm, token_id) unique index and the primary key); None when nothing is named."""
    named = [
        f"{column} IN ({', '.join(['%s'] * len(values))})"
        for column, values in (("token_id", token_ids), ("device_id", device_ids))
        if values
    ]
    if not named:
        return None
    return (
        f"remote_realm_id = %s AND expired_time IS NULL AND ({' OR '.join(named)})",
        [realm_id, *token_ids, *device_ids],
    )


_COLUMNS = "device_id, token_id, token, token_kind, ios_app_id"


async def _active_devices(
    *, realm: RealmInfo, token_ids: set[int], device_ids: set[int]
) -> list[DeviceRow]:
    """(device_id, token_id, token, token_kind, ios_app_id) of the named, unexpired devices:
    from this process's cache, and from PostgreSQL for those it does not hold."""
    cache = lookups.devices
    found: list[DeviceRow] = []

    def misses_of(kind: str, values: set[int]) -> set[int]:
        missing: set[int] = set()
        for value in values:
            row = cache.get(realm.uuid, (kind, value))
            if row is None:
                missing.add(value)
            else:
                found.append(row)
        return missing

    unknown_tokens = misses_of("token_id", token_ids)
    unknown_devices = misses_of("device_id", device_ids)
    misses = len(unknown_tokens) + len(unknown_devices)
    if not misses:
        return found
    epoch = cache.epoch
    if cache.should_load(realm.uuid, misses):
        rows = await _load_realm(realm, epoch)
        if rows is not None:
            return found + [
                row for row in rows if row[1] in unknown_tokens or row[0] in unknown_devices
            ]
    query = active_devices_condition(
        realm_id=realm.id, token_ids=unknown_tokens, device_ids=unknown_devices
    )
    assert query is not None
    condition, params = query
    rows = cast(
        list[DeviceRow],
        await database().fetch(
            f"SELECT {_COLUMNS} FROM {_DEVICE_TABLE} WHERE {condition}",  # noqa: S608 - names from the model
            params,
        ),
    )
    cache.put(realm.uuid, rows, epoch)
    return found + rows


async def _load_realm(realm: RealmInfo, epoch: int) -> list[DeviceRow] | None:
    """All the realm's unexpired devices into the cache, or None if it has too many."""
    rows: list[DeviceRow] | None = None
    try:
        rows = cast(
            list[DeviceRow],
            await database().fetch(
                f"SELECT {_COLUMNS} FROM {_DEVICE_TABLE} "  # noqa: S608 - names from the model
                "WHERE remote_realm_id = %s AND expired_time IS NULL LIMIT %s",
                [realm.id, lookups.devices.LOAD_MAX_DEVICES + 1],
            ),
        )
    finally:
        whole = lookups.devices.loaded(realm.uuid, rows, epoch)
    return rows if whole else None


async def notify(*, server: ServerInfo, params: E2EENotifyParams) -> dict[str, Any]:
    realm = await find_realm(server=server, realm_uuid=params.realm_uuid, required=True)
    assert realm is not None

    # Resolve every request to a device before anything is sent: a malformed item fails
    # the whole request with a 400, as it would at Zulip.
    keys: list[tuple[str, int]] = []
    for item in params.push_requests:
        if item.token_id is not None:
            keys.append(("token_id", decode_token_id(item.token_id)))
        elif item.device_id is not None:
            keys.append(("device_id", item.device_id))
        else:
            raise BouncerError(
                "Missing 'token_id' argument", code=ErrorCode.REQUEST_VARIABLE_MISSING
            )
    token_ids = {value for kind, value in keys if kind == "token_id"}
    device_ids = {value for kind, value in keys if kind == "device_id"}
    found = await _active_devices(realm=realm, token_ids=token_ids, device_ids=device_ids)
    by_token_id = {row[1]: row for row in found}
    by_device_id = {row[0]: row for row in found}

    deliveries: list[Delivery] = []
    missing: list[int] = []
    for index, (item, (kind, value)) in enumerate(zip(params.push_requests, keys, strict=True)):
        row = (by_token_id if kind == "token_id" else by_device_id).get(value)
        if row is None:
            # Unknown or already expired: the server should forget it; nothing is sent.
            missing.append(index)
            continue
        device_id, _, token, token_kind, ios_app_id = row
        is_apns = isinstance(item, ApnsPushRequest)
        if is_apns != (token_kind == RemotePushDevice.Kind.APNS):
            device_kind = RemotePushDevice.Kind(token_kind).label
            raise BouncerError(
                f"push_requests[{index}] is an {'APNs' if is_apns else 'FCM'} request "
                f"for an {device_kind} device"
            )
        if isinstance(item, ApnsPushRequest):
            deliveries.append(
                Delivery.apns(
                    index=index,
                    device_id=device_id,
                    token=token,
                    app_id=ios_app_id or "",
                    body=e2ee_apns_body(item),
                    priority=item.http_headers.apns_priority,
                    # A PushKit token takes VoIP pushes only, whatever the server chose.
                    push_type=VOIP
                    if is_voip_app(ios_app_id or "")
                    else item.http_headers.apns_push_type,
                    expiration=None,
                )
            )
        else:
            deliveries.append(
                Delivery.fcm(
                    index=index,
                    device_id=device_id,
                    token=token,
                    data=e2ee_fcm_data(item),
                    priority=item.fcm_priority,
                )
            )

    outcomes = await engine.send_request(
        tenant=str(server.id),
        server_id=server.id,
        realm_id=realm.id,
        protocol=PROTOCOL,
        deliveries=deliveries,
        give_up_at=engine.retry_window_deadline(now=time.time()),
    )
    sent: dict[str, int] = defaultdict(int)
    gone = set(missing)
    for delivery in deliveries:
        outcome = outcomes.get(delivery.index)
        if outcome == engine.DELIVERED:
            sent[delivery.provider] += 1
        elif outcome == engine.TOKEN_DEAD:
            gone.add(delivery.index)
    delete_token_ids = [
        item.token_id for i, item in enumerate(params.push_requests) if i in gone and item.token_id
    ]
    delete_device_ids = [
        item.device_id
        for i, item in enumerate(params.push_requests)
        if i in gone and item.token_id is None and item.device_id is not None
    ]
    return {
        "apple_successfully_sent_count": sent["apns"],
        "android_successfully_sent_count": sent["fcm"],
        "delete_token_ids": sorted(set(delete_token_ids)),
        # FL 406-467 servers name devices by id and read this list instead.
        "delete_device_ids": sorted(set(delete_device_ids)),
        "realm_push_status": CAN_PUSH,
    }


def expire_dead(dead: list[Delivery]) -> None:
    """A dead E2EE device is soft-expired; the Zulip server learns it from the answer. Its
    realm is published, so that no web process keeps sending to it from its cache."""
    devices = RemotePushDevice.objects.filter(
        device_id__in=[d.device_id for d in dead], expired_time__isnull=True
    )
    realms = list(devices.values_list("remote_realm__uuid", flat=True).distinct())
    if devices.update(expired_time=timezone.now()):
        transaction.on_commit(lambda: lookups.publish_change(realms))
