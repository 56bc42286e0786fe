"""The engine's face to the protocol apps: send a request's deliveries, get outcomes back.

A protocol app (registrations' E2EE notify, legacy notify; Matrix next) builds `Delivery`
values and calls `send_request` from the event loop; the first attempt is sent now, within
NOTIFY_WAIT_SECONDS, and whatever must happen later is in the broker before this returns.
"""

import logging
import uuid

import redis
from kombu.exceptions import OperationalError

from bouncer.errors import TEMPORARILY_UNAVAILABLE, service_unavailable
from delivery.batches import retry_window_deadline, send_first_attempt
from delivery.models import DeliveryAttempt
from delivery.tasks import schedule_batch
from delivery.types import Batch, Delivery

logger = logging.getLogger(__name__)

DELIVERED = DeliveryAttempt.Outcome.DELIVERED.value
TOKEN_DEAD = DeliveryAttempt.Outcome.TOKEN_DEAD.value

__all__ = ["DELIVERED", "TOKEN_DEAD", "retry_window_deadline", "send_request"]


async def send_request(
    *,
    tenant: str,
    server_id: int,
    realm_id: int | None,
    protocol: str,
    deliveries: list[Delivery],
    give_up_at: float,
) -> dict[int, str]:
    """Each delivery's outcome by index. Raises a 503 BouncerError when its retries cannot be
    queued (broker down): the caller must not answer as if they had been."""
    if not deliveries:
        return {}
    batch = Batch(
        id=str(uuid.uuid4()),
        attempt=1,
        tenant=tenant,
        server_id=server_id,
        realm_id=realm_id,
        protocol=protocol,
        give_up_at=give_up_at,
        deliveries=deliveries,
    )
    try:
        return await send_first_attempt(batch=batch, schedule=schedule_batch)
    except (OperationalError, redis.RedisError) as e:
        logger.error("Broker unreachable, retries of batch %s not queued: %s", batch.id, e)
        raise service_unavailable(TEMPORARILY_UNAVAILABLE, retry_after=10) from None
