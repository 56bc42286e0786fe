"""Sending a batch and settling what happened: log, count, expire dead tokens, retry later.

The web process sends a notify request's first attempt itself, on its event loop
(`send_first_attempt`); the Celery workers run the retries (`process_batch`, through
delivery.tasks.deliver_batch). What a dead token means is the protocol's business: each
protocol app registers how its tokens are expired (`register_protocol`).
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from bouncer import metrics
from bouncer.asyncdb import in_thread
from delivery import attemptlog, channel, limits
from delivery.models import DeliveryAttempt
from delivery.outcomes import SendResult, Verdict, give_up, next_retry_delay
from delivery.relay import get_relay
from delivery.types import UNSENDABLE, Batch, Delivery

logger = logging.getLogger(__name__)

Scheduler = Callable[[dict[str, Any], float], None]
DeadTokenHandler = Callable[[list[Delivery]], None]

_dead_token_handlers: dict[str, DeadTokenHandler] = {}


def register_protocol(name: str, *, on_dead: DeadTokenHandler) -> None:
    """A protocol app says how tokens that Apple or Google declared dead are removed."""
    _dead_token_handlers[name] = on_dead


def _token_hint(token: str) -> str:
    # Enough for an operator to match two log lines; never the token itself.
    return f"{token[:6]}…"


def _log_result(batch: Batch, delivery: Delivery, result: SendResult, outcome: str) -> None:
    # A first attempt's success is the hot path's commonest line: debug, as the delivery log
    # and the counters keep it for operators at no log cost. A retry's success is info.
    success_level = logging.INFO if batch.attempt > 1 else logging.DEBUG
    if result.verdict == Verdict.DELIVERED and not logger.isEnabledFor(success_level):
        return
    provider = delivery.provider.upper()
    context = (
        f"{batch.protocol} device {delivery.device_id} ({_token_hint(delivery.token)}) "
        f"server {batch.server_id} batch {batch.id} attempt {batch.attempt}"
    )
    detail = f"{result.status or '-'} {result.reason or ''}".strip()
    if result.verdict == Verdict.DELIVERED:
        logger.log(
            success_level, "%s: delivered to %s (%s)", provider, context, result.upstream_id or ""
        )
    elif result.verdict == Verdict.TOKEN_DEAD:
        logger.info("%s: token dead for %s: %s", provider, context, detail)
    elif result.verdict == Verdict.CONFIG_FAULT:
        logger.error("%s: configuration fault sending to %s: %s", provider, context, detail)
    else:
        # "rejected", "retry", or "gave_up" once the retry window is spent.
        logger.warning("%s: %s sending to %s: %s", provider, outcome, context, detail)


@dataclass
class Settlement:
    """What an attempt's results mean, decided without I/O."""

    outcomes: list[str] = field(default_factory=list)
    rows: list[attemptlog.Row] = field(default_factory=list)
    dead: list[Delivery] = field(default_factory=list)
    retry: list[tuple[Delivery, SendResult]] = field(default_factory=list)


def decide(
    batch: Batch, sent: list[Delivery], results: list[SendResult], *, now: float
) -> Settlement:
    """Classify each result, log and count it, and collect the rows, dead tokens and retries.

    `now` is when the attempt started, so a retry due at the deadline still happens.
    """
    exhausted = give_up(attempt=batch.attempt, now=now, give_up_at=batch.give_up_at)
    settlement = Settlement()
    created = timezone.now()
    log_rows = settings.DELIVERY_LOG_DAYS > 0
    for delivery, result in zip(sent, results, strict=True):
        outcome = result.verdict.value
        if result.verdict == Verdict.TOKEN_DEAD:
            settlement.dead.append(delivery)
        elif result.verdict == Verdict.RETRY:
            if exhausted:
                outcome = DeliveryAttempt.Outcome.GAVE_UP.value
            else:
                settlement.retry.append((delivery, result))
        settlement.outcomes.append(outcome)
        if log_rows:
            settlement.rows.append(
                attemptlog.row(
                    created=created,
                    batch=batch,
                    delivery=delivery,
                    outcome=outcome,
                    status=result.status,
                    reason=result.reason or "",
                    upstream_id=result.upstream_id or "",
                    latency=result.latency,
                )
            )
        _log_result(batch, delivery, result, outcome)
        metrics.record_delivery(
            provider=delivery.provider,
            outcome=outcome,
            # Only what Apple or Google answered (or timed out on) is upstream latency; a
            # delivery refused here (no credentials, payload too large) never left.
            latency=None
            if result.status is None and result.reason != "Timeout"
            else result.latency,
        )
    return settlement


def _schedule_retries(
    batch: Batch, settlement: Settlement, schedule: Scheduler, *, now: float
) -> None:
    delay = max(
        next_retry_delay(
            verdict_reason=result.reason, attempt=batch.attempt, retry_after=result.retry_after
        )
        for _, result in settlement.retry
    )
    # Never past the point of giving up: the last attempt happens at the deadline, and never
    # past the broker's visibility timeout (the transport would hand the task out again).
    delay = min(delay, max(batch.give_up_at - now, 0), settings.CELERY_MAX_COUNTDOWN_SECONDS)
    retry = batch.with_deliveries([d for d, _ in settlement.retry], attempt=batch.attempt + 1)
    schedule(retry.to_json(), delay)


def apply(batch: Batch, settlement: Settlement, schedule: Scheduler, *, now: float) -> None:
    """Schedule the retries, expire dead tokens, write the log (blocking I/O: not on the loop).

    Raises what `schedule` raised (the broker is down) once the rest is done: the caller must
    not treat a retry that was never queued as handled.
    """
    # Retries first: they go through the broker, and a database outage below must not lose
    # a delivery that still has to happen.
    unscheduled: Exception | None = None
    if settlement.retry:
        try:
            _schedule_retries(batch, settlement, schedule, now=now)
        except (BrokerError, redis.RedisError) as e:  # re-raised once the rest is recorded
            unscheduled = e
    try:
        if settlement.dead:
            _dead_token_handlers[batch.protocol](settlement.dead)
        if settlement.rows:
            attemptlog.record(settlement.rows)
    except DatabaseError as e:
        # PostgreSQL down or restarting. The deliveries themselves are done; a dead token not
        # expired now is reported dead again by Apple or Google on its next notification,
        # and expired then.
        logger.error(
            "Batch %s attempt %d: database unavailable, %d dead tokens not expired yet "
            "(and, in-process, %d delivery log rows lost): %s",
            batch.id,
            batch.attempt,
            len(settlement.dead),
            len(settlement.rows),
            e,
        )
    if unscheduled is not None:
        raise unscheduled


def _log_oversize(batch: Batch) -> None:
    """One line per request for payloads over their provider's limit (the relay refuses them
    unsent), with the size and the limit: the Zulip server's operator needs to hear of it."""
    oversize = [d for d in batch.deliveries if limits.too_large(d)]
    if not oversize:
        return
    largest = max(oversize, key=lambda d: d.size)
    size = "unencodable" if largest.size == UNSENDABLE else f"{largest.size} bytes"
    logger.warning(
        "Server %s batch %s: %d of %d deliveries not sent: payload too large (%s %s, "
        "limit %d bytes)",
        batch.server_id,
        batch.id,
        len(oversize),
        len(batch.deliveries),
        largest.provider.upper(),
        size,
        limits.limit_for(largest),
    )


async def send_first_attempt(*, batch: Batch, schedule: Scheduler) -> dict[int, str]:
    """The web's side: send a batch's first attempt now and settle it; outcome by index.

    Sent on the web process's own event loop, within NOTIFY_WAIT_SECONDS: a delivery not
    answered by then is cancelled and retried in the background like any timeout. Nothing
    of the batch is left in this process once this returns, so a web process that dies
    mid-send has answered nothing, and the Zulip server retries the whole request (spec:
    it re-queues on a network error or 5xx); what still has to happen after the answer is
    in the broker (`schedule`) before the answer goes out.
    """
    now = time.time()
    _log_oversize(batch)
    results = await get_relay().send_many(
        batch.deliveries, batch.tenant, wait=settings.NOTIFY_WAIT_SECONDS
    )
    settlement = decide(batch, batch.deliveries, results, now=now)
    if settlement.retry or settlement.dead or settings.CELERY_TASK_ALWAYS_EAGER:
        # Broker and database work: rare on the hot path, and blocking, so off the loop.
        await in_thread(apply, batch, settlement, schedule, now=now)
    elif settlement.rows:
        attemptlog.record(settlement.rows)  # a queue put; the writer thread does the I/O
    return {
        d.index: outcome for d, outcome in zip(batch.deliveries, settlement.outcomes, strict=True)
    }


def process_batch(*, batch_json: dict[str, Any], schedule: Scheduler) -> None:
    """The worker's side (retries): send what has not been sent yet, then settle.

    A delivery counts as done (a re-run of the batch skips it) once its final outcome is
    known, or, for one answered "retry", once its retry is in the broker.
    """
    batch = Batch.from_json(batch_json)
    states = channel.claim_all(batch.id, batch.attempt, [d.index for d in batch.deliveries])
    to_send = [d for d in batch.deliveries if states[d.index] == "claimed"]
    busy = [d for d in batch.deliveries if states[d.index] == "busy"]
    if busy:
        # Another worker claimed these and may have died mid-send: look again once its
        # claim has lapsed. A delivery already done is never sent again.
        schedule(batch.with_deliveries(busy).to_json(), settings.DELIVERY_CLAIM_SECONDS + 1)
    if not to_send:
        return

    relay = get_relay()
    worker_channel = relay.channel

    async def mark_final(delivery: Delivery, result: SendResult) -> None:
        if result.verdict != Verdict.RETRY:
            await worker_channel.mark_done(
                batch_id=batch.id, attempt=batch.attempt, index=delivery.index
            )

    now = time.time()
    # Bounded as a whole, not only per send: the wait for room on the provider is outside
    # each send's own timeout, and the claims lapse after DELIVERY_CLAIM_SECONDS.
    results = relay.send_all(
        to_send, batch.tenant, on_result=mark_final, wait=settings.DELIVERY_BATCH_TIMEOUT_SECONDS
    )
    settlement = decide(batch, to_send, results, now=now)
    apply(batch, settlement, schedule, now=now)
    # Only now are the retried ones handled: their next attempt is in the broker.
    channel.mark_all_done(
        batch.id,
        batch.attempt,
        [
            d.index
            for d, outcome in zip(to_send, settlement.outcomes, strict=True)
            if outcome in (Verdict.RETRY.value, DeliveryAttempt.Outcome.GAVE_UP.value)
        ],
    )


def retry_window_deadline(*, now: float, expiration: float | None = None) -> float:
    """When a batch stops retrying: the retry window, or a legacy APNs expiration if sooner."""
    deadline = now + settings.DELIVERY_RETRY_WINDOW_SECONDS
    return min(deadline, expiration) if expiration else deadline


def prune_delivery_log(*, days: int) -> int:
    if days <= 0:
        return 0
    cutoff = timezone.now() - timedelta(days=days)
    deleted, _ = DeliveryAttempt.objects.filter(created__lt=cutoff).delete()
    return deleted
