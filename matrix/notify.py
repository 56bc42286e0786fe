"""`POST /_matrix/push/v1/notify`: a homeserver's notification to its pushers' devices.

Each device becomes a `Delivery` for its app's provider, named `matrix:<app>` so the senders
use that app's credentials, topic and environment; the engine sends them and waits up to
NOTIFY_WAIT_SECONDS. The answer's `rejected` lists the pushkeys the homeserver should
forget: those of unknown apps, those no token can come of, and those Apple or Google
declared dead within the wait. What is still to be retried then is retried by the workers,
and a token found dead later is found dead again on the next notification.
"""

import logging
import time
from dataclasses import dataclass, field

from delivery import engine
from delivery.types import Delivery, Provider
from matrix import channels, payloads
from matrix.config import MatrixApp, MatrixConfigError, find_app
from matrix.notification import Device, Notification

logger = logging.getLogger(__name__)

PROTOCOL = "matrix"
# The delivery log's server id for Matrix deliveries: no Zulip server is involved.
NO_SERVER = 0


@dataclass
class _Plan:
    deliveries: list[Delivery] = field(default_factory=list)
    pushkeys: dict[int, str] = field(default_factory=dict)  # delivery index -> pushkey
    rejected: list[str] = field(default_factory=list)
    # (app_id, channel) -> the devices whose delivery waits on that channel being enabled
    gated: dict[tuple[str, str], list[tuple[Device, MatrixApp]]] = field(default_factory=dict)


def _reject(plan: _Plan, device: Device, why: str) -> None:
    logger.info("Matrix: pushkey of app %r rejected: %s", device.app_id, why)
    plan.rejected.append(device.pushkey)


def _delivery(n: Notification, device: Device, app: MatrixApp, index: int) -> Delivery | str | None:
    """The device's delivery; a reason to reject its pushkey; None when nothing is to be sent."""
    try:
        if app.provider == Provider.APNS:
            body = payloads.apns_payload(n, device, send_badge_counts=app.send_badge_counts)
            if body is None:
                return None
            token = payloads.apns_token(
                device.pushkey, convert_to_hex=app.convert_device_token_to_hex
            )
            if not token:
                return "pushkey is not base64"
            return Delivery.apns(
                index=index,
                device_id=0,
                token=token,
                app_id=app.delivery_app_id,
                topic=app.topic,
                body=body,
                priority=payloads.apns_priority(n, push_type=app.push_type),
                push_type=app.push_type,
                expiration=None,
            )
        data = payloads.fcm_data(n, device, send_badge_counts=app.send_badge_counts)
        if data is None:
            return None
        return Delivery.fcm(
            index=index,
            device_id=0,
            token=device.pushkey,
            data=data,
            priority=payloads.fcm_priority(n),
            app_id=app.delivery_app_id,
            fcm_options=app.fcm_options,
        )
    except payloads.BadDefaultPayload:
        return "default_payload is not an object"


def _plan(n: Notification) -> _Plan:
    plan = _Plan()
    for device in n.devices:
        try:
            app = find_app(device.app_id)
        except MatrixConfigError as e:
            # The operator's file is broken (the start-up check says so too): not the
            # homeserver's pushers' fault, so they are kept; nothing is sent.
            logger.error("Matrix: MATRIX_APPS_FILE unusable, nothing sent: %s", e)
            continue
        if app is None:
            _reject(plan, device, "unknown app_id")
            continue
        channel = device.channel or app.channel_for_type(n.type)
        if channel is not None:
            plan.gated.setdefault((device.app_id, channel), []).append((device, app))
            continue
        _add(plan, n, device, app)
    return plan


def _add(plan: _Plan, n: Notification, device: Device, app: MatrixApp) -> None:
    made = _delivery(n, device, app, len(plan.deliveries))
    if isinstance(made, str):
        _reject(plan, device, made)
    elif made is not None:
        plan.pushkeys[made.index] = device.pushkey
        plan.deliveries.append(made)


async def notify(*, n: Notification, tenant: str) -> list[str]:
    """Send the notification; the pushkeys to reject."""
    plan = _plan(n)
    if plan.gated:
        # Only devices whose channel is enabled get a notification naming one.
        wanted = {key: [d.pushkey for d, _ in items] for key, items in plan.gated.items()}
        enabled = await channels.enabled_pushkeys(wanted)
        for key, items in plan.gated.items():
            for device, app in items:
                if device.pushkey in enabled.get(key, set()):
                    _add(plan, n, device, app)
    outcomes = await engine.send_request(
        tenant=tenant,
        server_id=NO_SERVER,
        realm_id=None,
        protocol=PROTOCOL,
        deliveries=plan.deliveries,
        give_up_at=engine.retry_window_deadline(now=time.time()),
    )
    dead = [
        plan.pushkeys[d.index]
        for d in plan.deliveries
        if outcomes.get(d.index) == engine.TOKEN_DEAD
    ]
    return list(dict.fromkeys(plan.rejected + dead))


def report_dead(dead: list[Delivery]) -> None:
    """Nothing to expire here: the homeserver deletes the pusher once its pushkey is in
    `rejected`. A token found dead on a retry is reported on the next notification."""
    for delivery in dead:
        logger.info(
            "Matrix: %s token of %s dead (%s…)",
            delivery.provider.upper(),
            delivery.app_id.removeprefix("matrix:"),
            delivery.token[:6],
        )
