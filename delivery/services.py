"""The notify use cases: validate, select devices, send the first attempt, answer
(zulip-delivery.md sections 2-4); retries go to the Celery workers."""

import logging
import time
import uuid
from collections import defaultdict
from typing import Any

import redis
from django.db import connection
from django.db.models import UUIDField
from kombu.exceptions import OperationalError

from bouncer import rows
from bouncer.errors import TEMPORARILY_UNAVAILABLE, BouncerError, ErrorCode, service_unavailable
from delivery import payloads
from delivery.batches import retry_window_deadline, send_first_attempt
from delivery.models import DeliveryAttempt
from delivery.payloads import ApnsPushRequest, E2EENotifyParams, LegacyNotifyParams
from delivery.tasks import schedule_batch
from legacy.models import RemotePushDeviceToken
from legacy.retirement import retire_shadowed
from registrations.devices import decode_token_id
from registrations.models import RemotePushDevice, RemoteRealm, RemoteZulipServer
from registrations.realms import find_realm

logger = logging.getLogger(__name__)

# A billing-free bouncer always lets a realm push (spec part 1 section 8).
CAN_PUSH = {"can_push": True, "expected_end_timestamp": None}

Delivery = dict[str, Any]


def _send(
    *,
    server: RemoteZulipServer,
    realm: RemoteRealm | None,
    protocol: str,
    deliveries: list[Delivery],
    give_up_at: float,
) -> dict[int, str]:
    """Send a batch's first attempt from this process; each delivery's outcome by index.

    What Apple or Google did not answer within NOTIFY_WAIT_SECONDS, or asked to be retried,
    goes to the workers before this returns; if that cannot be queued (broker down) the
    request fails with a 503 and the Zulip server sends it again later.
    """
    if not deliveries:
        return {}
    batch = {
        "id": str(uuid.uuid4()),
        "attempt": 1,
        "server_id": server.pk,
        "realm_id": realm.pk if realm else None,
        "protocol": protocol,
        "give_up_at": give_up_at,
        "deliveries": deliveries,
    }
    try:
        return send_first_attempt(batch=batch, schedule=schedule_batch)
    except (OperationalError, redis.RedisError) as e:
        logger.error("Broker unreachable, retries of batch %s not queued: %s", batch["id"], e)
        raise service_unavailable(TEMPORARILY_UNAVAILABLE, retry_after=10) from None


def _delivered(outcome: str | None) -> bool:
    return outcome == DeliveryAttempt.Outcome.DELIVERED


def _dead(outcome: str | None) -> bool:
    return outcome == DeliveryAttempt.Outcome.TOKEN_DEAD


# --- E2EE ----------------------------------------------------------------------------------


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


def _active_devices(
    *, realm: RemoteRealm, token_ids: set[int], device_ids: set[int]
) -> list[RemotePushDevice]:
    query = active_devices_condition(realm_id=realm.pk, token_ids=token_ids, device_ids=device_ids)
    if query is None:
        return []
    condition, params = query
    return rows.where(RemotePushDevice, condition, params)


def notify_e2ee(*, server: RemoteZulipServer, params: E2EENotifyParams) -> dict[str, Any]:
    realm = find_realm(server=server, realm_uuid=params.realm_uuid, required=True)
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
    found = _active_devices(realm=realm, token_ids=token_ids, device_ids=device_ids)
    by_token_id = {row.token_id: row for row in found}
    by_device_id = {row.device_id: row for row in found}

    deliveries: list[Delivery] = []
    missing: list[int] = []
    for index, (item, (kind, value)) in enumerate(zip(params.push_requests, keys, strict=True)):
        row = (by_token_id if kind == "token_id" else by_device_id).get(value)
        if row is None:
            # Unknown or already expired: the server should forget it; nothing is sent.
            missing.append(index)
            continue
        is_apns = isinstance(item, ApnsPushRequest)
        if is_apns != (row.token_kind == RemotePushDevice.Kind.APNS):
            raise BouncerError(
                f"push_requests[{index}] is an {'APNs' if is_apns else 'FCM'} request "
                f"for an {row.get_token_kind_display()} device"
            )
        delivery: Delivery = {
            "i": index,
            "provider": row.token_kind,
            "device_id": row.device_id,
            "token": row.token,
            "app_id": row.ios_app_id or "",
        }
        if isinstance(item, ApnsPushRequest):
            delivery["apns"] = {
                "payload": payloads.e2ee_apns_body(item),
                "priority": item.http_headers.apns_priority,
                "push_type": item.http_headers.apns_push_type,
                "expiration": None,
            }
        else:
            delivery["fcm"] = {"data": payloads.e2ee_fcm_data(item), "priority": item.fcm_priority}
        deliveries.append(delivery)

    outcomes = _send(
        server=server,
        realm=realm,
        protocol="e2ee",
        deliveries=deliveries,
        give_up_at=retry_window_deadline(now=time.time()),
    )
    sent: dict[str, int] = defaultdict(int)
    gone = set(missing)
    for delivery in deliveries:
        outcome = outcomes.get(delivery["i"])
        if _delivered(outcome):
            sent[delivery["provider"]] += 1
        elif _dead(outcome):
            gone.add(delivery["i"])
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


# --- Legacy --------------------------------------------------------------------------------


def _user_condition(
    *, server: RemoteZulipServer, user_id: int | None, user_uuid: str | None
) -> tuple[str, list[object]]:
    """SQL for the server's legacy rows of a user, by uuid or id (either may be absent)."""
    field = RemotePushDeviceToken._meta.get_field("user_uuid")
    assert isinstance(field, UUIDField)
    named: list[str] = []
    params: list[object] = [server.pk]
    if user_uuid is not None:
        named.append("user_uuid = %s")
        params.append(field.get_db_prep_value(uuid.UUID(user_uuid), connection))
    if user_id is not None:
        named.append("user_id = %s")
        params.append(user_id)
    assert named, "checked by _checked_identity"
    return f"server_id = %s AND ({' OR '.join(named)})", params


def _checked_identity(user_id: int | None, user_uuid: str | None) -> str | None:
    if user_id is None and user_uuid is None:
        raise BouncerError("Missing user_id or user_uuid")
    if user_uuid is None:
        return None
    try:
        return str(uuid.UUID(user_uuid))
    except ValueError:
        raise BouncerError("Invalid user_uuid") from None


def select_legacy_devices(
    *, server: RemoteZulipServer, user_id: int | None, user_uuid: str | None
) -> list[RemotePushDeviceToken]:
    """The user's tokens; an id-row duplicated by a uuid-row is deleted (Zulip's de-duplication)."""
    condition, params = _user_condition(server=server, user_id=user_id, user_uuid=user_uuid)
    found = rows.where(RemotePushDeviceToken, f"{condition} ORDER BY id", params)
    if user_id is None or user_uuid is None:
        return found
    by_token: dict[tuple[int, str], list[RemotePushDeviceToken]] = defaultdict(list)
    for row in found:
        key = (
            row.kind,
            row.token.lower() if row.kind == RemotePushDeviceToken.Kind.APNS else row.token,
        )
        by_token[key].append(row)
    duplicates = [
        row.pk
        for group in by_token.values()
        if len(group) > 1 and any(r.user_uuid is not None for r in group)
        for row in group
        if row.user_uuid is None
    ]
    if duplicates:
        RemotePushDeviceToken.objects.filter(pk__in=duplicates).delete()
    return [row for row in found if row.pk not in set(duplicates)]


def notify_legacy(*, server: RemoteZulipServer, params: LegacyNotifyParams) -> dict[str, Any]:
    user_uuid = _checked_identity(params.user_id, params.user_uuid)
    realm = None
    if params.realm_uuid is not None:
        realm = find_realm(server=server, realm_uuid=params.realm_uuid, required=False)

    devices = select_legacy_devices(server=server, user_id=params.user_id, user_uuid=user_uuid)
    # A token whose phone has moved to E2EE would get every notification twice: it is
    # retired here, before sending, and so reported in deleted_devices (FL 483's rule).
    retired = retire_shadowed(tokens=devices)
    devices = [d for d in devices if d.pk not in retired]
    if realm is not None:
        unlinked = [d.pk for d in devices if d.remote_realm_id is None]
        if unlinked:
            RemotePushDeviceToken.objects.filter(pk__in=unlinked).update(remote_realm=realm)

    android = [d for d in devices if d.kind == RemotePushDeviceToken.Kind.FCM]
    apple: list[RemotePushDeviceToken] = []
    seen_apple: set[str] = set()
    for device in devices:
        if device.kind != RemotePushDeviceToken.Kind.APNS or device.token.lower() in seen_apple:
            continue
        seen_apple.add(device.token.lower())
        apple.append(device)

    deliveries: list[Delivery] = []
    if android:
        # Raised only when there are FCM devices, before anything is sent (Zulip's order).
        priority = payloads.fcm_priority(params.gcm_options, params.gcm_payload)
        data = payloads.legacy_fcm_data(params.gcm_payload)
        deliveries += [
            {
                "i": len(deliveries) + n,
                "provider": "fcm",
                "device_id": d.pk,
                "token": d.token,
                "app_id": "",
                "fcm": {"data": data, "priority": priority},
            }
            for n, d in enumerate(android)
        ]
    now = time.time()
    expiration = int(now) + payloads.LEGACY_APNS_EXPIRATION_SECONDS
    if apple:
        body = payloads.legacy_apns_body(params.apns_payload)
        for device in apple:
            if not device.ios_app_id:
                logger.error(
                    "APNs: Missing ios_app_id for user %s device %s",
                    user_uuid or params.user_id,
                    device.pk,
                )
                continue
            deliveries.append(
                {
                    "i": len(deliveries),
                    "provider": "apns",
                    "device_id": device.pk,
                    "token": device.token,
                    "app_id": device.ios_app_id,
                    "apns": {
                        "payload": body,
                        "priority": None,
                        "push_type": None,
                        "expiration": expiration,
                    },
                }
            )

    outcomes = _send(
        server=server,
        realm=realm,
        protocol="legacy",
        deliveries=deliveries,
        give_up_at=retry_window_deadline(now=now, expiration=expiration),
    )
    dead = {
        (d["provider"], d["token"].lower() if d["provider"] == "apns" else d["token"])
        for d in deliveries
        if _dead(outcomes.get(d["i"]))
    }
    return {
        "total_android_devices": len(android),
        "total_apple_devices": len(apple),
        "deleted_devices": _deleted_devices(
            server=server, user_id=params.user_id, user_uuid=user_uuid, params=params, dead=dead
        ),
        "realm": CAN_PUSH if realm is not None else None,
    }


def _deleted_devices(
    *,
    server: RemoteZulipServer,
    user_id: int | None,
    user_uuid: str | None,
    params: LegacyNotifyParams,
    dead: set[tuple[str, str]],
) -> dict[str, list[str]]:
    """Tokens the server listed that the bouncer no longer has for this user (after sending)."""
    # One query for both providers.
    remaining = [
        (row.kind, row.token)
        for row in rows.where(
            RemotePushDeviceToken,
            *_user_condition(server=server, user_id=user_id, user_uuid=user_uuid),
        )
    ]
    have_fcm = {t for kind, t in remaining if kind == RemotePushDeviceToken.Kind.FCM} - {
        t for p, t in dead if p == "fcm"
    }
    have_apns = {t.lower() for kind, t in remaining if kind == RemotePushDeviceToken.Kind.APNS} - {
        t for p, t in dead if p == "apns"
    }
    android = sorted({t for t in params.android_devices if t not in have_fcm})
    apple: list[str] = []
    kept: set[str] = set()
    for token in params.apple_devices:
        lowered = token.lower()
        # Of case-duplicates the server sent, all but one are reported (Zulip's behaviour).
        if lowered not in have_apns or lowered in kept:
            apple.append(token)
        else:
            kept.add(lowered)
    return {"android_devices": android, "apple_devices": sorted(set(apple))}


def send_test_notification(
    *, server: RemoteZulipServer, params: payloads.TestNotificationParams
) -> None:
    user_uuid = _checked_identity(params.user_id, params.user_uuid)
    realm = None
    if params.realm_uuid is not None:
        realm = find_realm(server=server, realm_uuid=params.realm_uuid, required=False)
    if params.token_kind not in (RemotePushDeviceToken.Kind.APNS, RemotePushDeviceToken.Kind.FCM):
        raise BouncerError("Invalid token type")
    condition, user_params = _user_condition(
        server=server, user_id=params.user_id, user_uuid=user_uuid
    )
    # APNs tokens compare case-insensitively, as everywhere else (legacy/retirement.py).
    same_token = (
        "lower(token) = lower(%s)"
        if params.token_kind == RemotePushDeviceToken.Kind.APNS
        else "token = %s"
    )
    found = rows.where(
        RemotePushDeviceToken,
        f"{condition} AND kind = %s AND {same_token} ORDER BY id LIMIT 1",
        [*user_params, params.token_kind, params.token],
    )
    device = found[0] if found else None
    if device is None:
        raise BouncerError(
            "Device not recognized by the push bouncer",
            code=ErrorCode.INVALID_REMOTE_PUSH_DEVICE_TOKEN,
        )
    now = time.time()
    apns_body, fcm_data = payloads.test_notification_payloads(params.base_payload, now=int(now))
    delivery: Delivery = {"i": 0, "device_id": device.pk, "token": device.token}
    expiration = int(now) + payloads.LEGACY_APNS_EXPIRATION_SECONDS
    if device.kind == RemotePushDeviceToken.Kind.APNS:
        if not device.ios_app_id:
            logger.error("APNs: Missing ios_app_id for device %s", device.pk)
            return
        delivery |= {
            "provider": "apns",
            "app_id": device.ios_app_id,
            "apns": {
                "payload": apns_body,
                "priority": None,
                "push_type": None,
                "expiration": expiration,
            },
        }
    else:
        delivery |= {"provider": "fcm", "app_id": "", "fcm": {"data": fcm_data, "priority": "high"}}
    _send(
        server=server,
        realm=realm,
        protocol="legacy",
        deliveries=[delivery],
        give_up_at=retry_window_deadline(now=now, expiration=expiration),
    )
