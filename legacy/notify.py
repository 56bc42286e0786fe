"""Legacy notify and the test notification (zulip-delivery.md section 2): the bouncer picks a
user's tokens, builds the payloads from the server's clear-text ones and sends them.

The selection (Zulip's de-duplication, retiring tokens whose phone moved to E2EE, linking
tokens to their realm) is a few ORM statements run in one thread hand-off; the sending is on
the event loop like every notification's.
"""

import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections, connection
from django.db.models import UUIDField
from django.db.models.functions import MD5, Lower

from bouncer import rows
from bouncer.asyncdb import in_thread
from bouncer.errors import BouncerError, ErrorCode
from delivery import engine, payloads
from delivery.payloads import LegacyNotifyParams, TestNotificationParams
from delivery.types import VOIP, Delivery, Provider, compact_json, fcm_data_size, is_voip_app
from legacy.models import RemotePushDeviceToken, token_digest
from legacy.retirement import retire_shadowed
from registrations.lookups import RealmInfo, ServerInfo, find_realm

logger = logging.getLogger(__name__)

# A billing-free bouncer always lets a realm push (spec part 1 section 8).
CAN_PUSH = {"can_push": True, "expected_end_timestamp": None}
PROTOCOL = "legacy"


def _user_condition(
    *, server_id: int, user_id: int | None, user_uuid: str | None
) -> tuple[str, list[object]]:
    """SQL for the server's legacy rows of a user, by uuid or id (either may be absent)."""
    field = RemotePushDeviceToken._meta.get_field("user_uuid")
    assert isinstance(field, UUIDField)
    named: list[str] = []
    params: list[object] = [server_id]
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
    *, server_id: int, user_id: int | None, user_uuid: str | None
) -> list[RemotePushDeviceToken]:
    """The user's tokens; an id-row duplicated by a uuid-row is deleted (Zulip's de-duplication)."""
    condition, params = _user_condition(server_id=server_id, user_id=user_id, user_uuid=user_uuid)
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


def _select_for_notify(
    *, server_id: int, realm_id: int | None, user_id: int | None, user_uuid: str | None
) -> list[RemotePushDeviceToken]:
    """The tokens to notify (runs in a thread: ORM statements)."""
    close_old_connections()
    devices = select_legacy_devices(server_id=server_id, user_id=user_id, user_uuid=user_uuid)
    # A token whose phone has moved to E2EE would get every notification twice: it is
    # retired here, before sending, and so reported in deleted_devices (FL 483's rule).
    retired = retire_shadowed(tokens=devices)
    devices = [d for d in devices if d.pk not in retired]
    if realm_id is not None:
        unlinked = [d.pk for d in devices if d.remote_realm_id is None]
        if unlinked:
            RemotePushDeviceToken.objects.filter(pk__in=unlinked).update(remote_realm_id=realm_id)
    return devices


@dataclass
class _Selection:
    android: list[RemotePushDeviceToken]
    apple: list[RemotePushDeviceToken]


def _split(devices: list[RemotePushDeviceToken]) -> _Selection:
    android = [d for d in devices if d.kind == RemotePushDeviceToken.Kind.FCM]
    apple: list[RemotePushDeviceToken] = []
    seen_apple: set[str] = set()
    for device in devices:
        if device.kind != RemotePushDeviceToken.Kind.APNS or device.token.lower() in seen_apple:
            continue
        seen_apple.add(device.token.lower())
        apple.append(device)
    return _Selection(android=android, apple=apple)


def _apns_delivery(
    device: RemotePushDeviceToken, index: int, body: str, expiration: int
) -> Delivery:
    """A legacy APNs notification: no priority or push type, kept by Apple for a day; to a
    PushKit token (an app id ending in ".voip"), a VoIP push."""
    assert device.ios_app_id
    return Delivery.apns(
        index=index,
        device_id=device.pk,
        token=device.token,
        app_id=device.ios_app_id,
        body=body,
        priority=None,
        push_type=VOIP if is_voip_app(device.ios_app_id) else None,
        expiration=expiration,
    )


async def _send(
    server: ServerInfo,
    realm: RealmInfo | None,
    deliveries: list[Delivery],
    *,
    now: float,
    expiration: int,
) -> dict[int, str]:
    return await engine.send_request(
        tenant=str(server.id),
        server_id=server.id,
        realm_id=realm.id if realm else None,
        protocol=PROTOCOL,
        deliveries=deliveries,
        give_up_at=engine.retry_window_deadline(now=now, expiration=expiration),
    )


async def notify(*, server: ServerInfo, params: LegacyNotifyParams) -> dict[str, Any]:
    user_uuid = _checked_identity(params.user_id, params.user_uuid)
    realm = None
    if params.realm_uuid is not None:
        realm = await find_realm(server=server, realm_uuid=params.realm_uuid, required=False)
    devices = await in_thread(
        _select_for_notify,
        server_id=server.id,
        realm_id=realm.id if realm else None,
        user_id=params.user_id,
        user_uuid=user_uuid,
    )
    selection = _split(devices)

    deliveries: list[Delivery] = []
    if selection.android:
        # Raised only when there are FCM devices, before anything is sent (Zulip's order).
        priority = payloads.fcm_priority(params.gcm_options, params.gcm_payload)
        data = payloads.legacy_fcm_data(params.gcm_payload)
        data_json, data_size = compact_json(data), fcm_data_size(data)
        deliveries += [
            Delivery.fcm(
                index=n,
                device_id=d.pk,
                token=d.token,
                data=data,
                data_json=data_json,
                data_size=data_size,
                priority=priority,
            )
            for n, d in enumerate(selection.android)
        ]
    now = time.time()
    expiration = int(now) + payloads.LEGACY_APNS_EXPIRATION_SECONDS
    if selection.apple:
        body = compact_json(payloads.legacy_apns_body(params.apns_payload))
        for device in selection.apple:
            if not device.ios_app_id:
                logger.error(
                    "APNs: Missing ios_app_id for user %s device %s",
                    user_uuid or params.user_id,
                    device.pk,
                )
                continue
            deliveries.append(_apns_delivery(device, len(deliveries), body, expiration))

    outcomes = await _send(server, realm, deliveries, now=now, expiration=expiration)
    dead = {
        (d.provider, d.token.lower() if d.provider == Provider.APNS else d.token)
        for d in deliveries
        if outcomes.get(d.index) == engine.TOKEN_DEAD
    }
    return {
        "total_android_devices": len(selection.android),
        "total_apple_devices": len(selection.apple),
        "deleted_devices": _deleted_devices(devices=devices, params=params, dead=dead),
        "realm": CAN_PUSH if realm is not None else None,
    }


def _deleted_devices(
    *,
    devices: list[RemotePushDeviceToken],
    params: LegacyNotifyParams,
    dead: set[tuple[Provider, str]],
) -> dict[str, list[str]]:
    """Tokens the server listed that the bouncer no longer has for this user (after sending)."""
    have_fcm = {d.token for d in devices if d.kind == RemotePushDeviceToken.Kind.FCM} - {
        t for p, t in dead if p == Provider.FCM
    }
    have_apns = {d.token.lower() for d in devices if d.kind == RemotePushDeviceToken.Kind.APNS} - {
        t for p, t in dead if p == Provider.APNS
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


def _find_test_device(
    *, server_id: int, params: TestNotificationParams, user_uuid: str | None
) -> RemotePushDeviceToken | None:
    close_old_connections()
    condition, user_params = _user_condition(
        server_id=server_id, user_id=params.user_id, user_uuid=user_uuid
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
    return found[0] if found else None


async def send_test_notification(*, server: ServerInfo, params: TestNotificationParams) -> None:
    user_uuid = _checked_identity(params.user_id, params.user_uuid)
    realm = None
    if params.realm_uuid is not None:
        realm = await find_realm(server=server, realm_uuid=params.realm_uuid, required=False)
    if params.token_kind not in (RemotePushDeviceToken.Kind.APNS, RemotePushDeviceToken.Kind.FCM):
        raise BouncerError("Invalid token type")
    device = await in_thread(
        _find_test_device, server_id=server.id, params=params, user_uuid=user_uuid
    )
    if device is None:
        raise BouncerError(
            "Device not recognized by the push bouncer",
            code=ErrorCode.INVALID_REMOTE_PUSH_DEVICE_TOKEN,
        )
    now = time.time()
    apns_body, fcm_data = payloads.test_notification_payloads(params.base_payload, now=int(now))
    expiration = int(now) + payloads.LEGACY_APNS_EXPIRATION_SECONDS
    if device.kind == RemotePushDeviceToken.Kind.APNS:
        if not device.ios_app_id:
            logger.error("APNs: Missing ios_app_id for device %s", device.pk)
            return
        delivery = _apns_delivery(device, 0, compact_json(apns_body), expiration)
    else:
        delivery = Delivery.fcm(
            index=0, device_id=device.pk, token=device.token, data=fcm_data, priority="high"
        )
    await _send(server, realm, [delivery], now=now, expiration=expiration)


def expire_dead(dead: list[Delivery]) -> None:
    """Tokens Apple or Google declared dead: removed for every server that has them, but only
    for the app the answer is evidence about (an APNs token is dead for its topic)."""
    # Through the md5(lower(token)) index; the token comparison guards against collisions.
    tokens = RemotePushDeviceToken.objects.annotate(
        digest=MD5(Lower("token")), lower_token=Lower("token")
    )
    by_app: dict[str, set[str]] = defaultdict(set)
    for d in dead:
        if d.provider == Provider.APNS:
            by_app[d.app_id].add(d.token.lower())
    for app_id, apns in by_app.items():
        tokens.filter(
            kind=RemotePushDeviceToken.Kind.APNS,
            ios_app_id=app_id,
            digest__in=[token_digest(t) for t in apns],
            lower_token__in=apns,
        ).delete()
    fcm = {d.token for d in dead if d.provider == Provider.FCM}
    if fcm:
        tokens.filter(
            kind=RemotePushDeviceToken.Kind.FCM,
            digest__in=[token_digest(t) for t in fcm],
            token__in=fcm,
        ).delete()
