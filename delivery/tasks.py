"""Celery tasks: thin wrappers around one service function each."""

import logging
import threading
from typing import Any, cast

import redis
from celery import shared_task
from django.conf import settings
from django.db import connections
from kombu.exceptions import OperationalError as BrokerError

from delivery import batches

logger = logging.getLogger(__name__)


@shared_task(
    name="delivery.deliver_batch",
    acks_late=True,
    # Retries (a notify's first attempt is sent by the web process). A worker that dies
    # mid-batch hands the batch back to the queue; claims make the re-run send only what
    # was never answered (delivery/channel.py).
    reject_on_worker_lost=True,
    ignore_result=True,
)
def deliver_batch(batch: dict[str, Any]) -> None:
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        _drop_failed_connections()
    try:
        batches.process_batch(batch_json=batch, schedule=schedule_batch)
    except (redis.RedisError, BrokerError) as e:
        # The claims' Redis or the broker failed mid-batch. A failed task is acknowledged,
        # so its retries would be lost: the whole batch runs again instead, and the claims
        # make that run send only what was never answered. Its delay lets the claims this
        # run took lapse. If the broker is still down this raises, the acknowledgement
        # fails too, and the broker hands the batch out again.
        delay = settings.DELIVERY_CLAIM_SECONDS + 1
        logger.warning(
            "Batch %s attempt %s: %s (%s); the batch runs again in %d s",
            batch.get("id"),
            batch.get("attempt"),
            type(e).__name__,
            e,
            delay,
        )
        schedule_batch(batch, delay)


def _drop_failed_connections() -> None:
    """Worker threads keep their database connections across tasks (bouncer/celery.py): one
    that met an error (PostgreSQL restarted, say) is closed here, and the task reconnects.
    Lighter than Django's per-request check, which costs a round trip on every task."""
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and connection.errors_occurred:
            connection.close()


def schedule_batch(batch: dict[str, Any], delay: float) -> None:
    """Run (part of) a batch again after `delay` seconds."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        # No broker (make run): eager mode would ignore the countdown and retry at once.
        timer = threading.Timer(delay, _run_in_process, args=(batch,))
        _pending.add(timer)
        timer.daemon = True
        timer.start()
        return
    deliver_batch.apply_async(args=(batch,), countdown=delay)


# In-process retries not yet run (without a broker they live only in this process).
_pending: set[threading.Timer] = set()


def cancel_in_process_retries() -> int:
    """Drop the in-process retries still waiting (a test's end: they must not run in the
    next test's world); how many."""
    timers = [t for t in list(_pending) if t.is_alive()]
    for timer in timers:
        timer.cancel()
    _pending.clear()
    return len(timers)


def _run_in_process(batch: dict[str, Any]) -> None:
    _pending.discard(cast(threading.Timer, threading.current_thread()))
    try:
        deliver_batch.apply(args=(batch,))
    finally:
        # The timer's thread ends here: its database connection would be left open.
        connections.close_all()


@shared_task(name="delivery.prune_delivery_log", ignore_result=True)
def prune_delivery_log() -> None:
    deleted = batches.prune_delivery_log(days=settings.DELIVERY_LOG_DAYS)
    logger.info(
        "Delivery log: pruned %d attempts older than %d days", deleted, settings.DELIVERY_LOG_DAYS
    )
