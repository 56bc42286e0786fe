"""Sending a batch and settling what happened: log, count, expire dead tokens, retry later.

The web process sends a notify request's first attempt itself (send_first_attempt); the
Celery workers run the retries (process_batch, through delivery.tasks.deliver_batch).

A batch is JSON primitives only (it travels through the broker):
    {"id": uuid, "attempt": 1, "server_id": int, "realm_id": int | None,
     "protocol": "legacy" | "e2ee", "give_up_at": epoch seconds,
     "deliveries": [{"i": index, "provider": "apns" | "fcm", "device_id": int, "token": str,
                     "app_id": str, "apns": {...} | "fcm": {...}}]}
"""

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError
from django.db.models.functions import MD5, Lower
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from bouncer import metrics
from delivery import attemptlog, channel
from delivery.models import DeliveryAttempt
from delivery.outcomes import SendResult, Verdict, give_up, next_retry_delay
from delivery.relay import get_relay
from legacy.models import RemotePushDeviceToken, token_digest
from registrations.models import RemotePushDevice

logger = logging.getLogger(__name__)

Batch = dict[str, Any]
Scheduler = Callable[[Batch, float], None]


def _token_hint(token: str) -> str:
    # Enough for an operator to match two log lines; never the token itself.
    return f"{token[:6]}…"


def _log_result(batch: Batch, delivery: dict[str, Any], result: SendResult, outcome: str) -> None:
    provider = delivery["provider"].upper()
    context = (
        f"{batch['protocol']} device {delivery['device_id']} ({_token_hint(delivery['token'])}) "
        f"server {batch['server_id']} batch {batch['id']} attempt {batch['attempt']}"
    )
    detail = f"{result.status or '-'} {result.reason or ''}".strip()
    if result.verdict == Verdict.DELIVERED:
        logger.info("%s: delivered to %s (%s)", provider, context, result.upstream_id or "")
    elif result.verdict == Verdict.TOKEN_DEAD:
        logger.info("%s: token dead for %s: %s", provider, context, detail)
    elif result.verdict == Verdict.CONFIG_FAULT:
        logger.error("%s: configuration fault sending to %s: %s", provider, context, detail)
    else:
        # "retry", or "gave_up" once the retry window is spent.
        logger.warning("%s: %s sending to %s: %s", provider, outcome, context, detail)


def expire_dead_tokens(*, protocol: str, dead: list[dict[str, Any]]) -> None:
    """E2EE rows are soft-expired; a dead legacy token goes for every server (as Zulip does)."""
    if not dead:
        return
    if protocol == "e2ee":
        RemotePushDevice.objects.filter(
            device_id__in=[d["device_id"] for d in dead], expired_time__isnull=True
        ).update(expired_time=timezone.now())
        return
    # Through the md5(lower(token)) index; the token comparison guards against collisions.
    rows = RemotePushDeviceToken.objects.annotate(
        digest=MD5(Lower("token")), lower_token=Lower("token")
    )
    apns = {d["token"].lower() for d in dead if d["provider"] == "apns"}
    fcm = {d["token"] for d in dead if d["provider"] == "fcm"}
    if apns:
        rows.filter(
            kind=RemotePushDeviceToken.Kind.APNS,
            digest__in=[token_digest(t) for t in apns],
            lower_token__in=apns,
        ).delete()
    if fcm:
        rows.filter(
            kind=RemotePushDeviceToken.Kind.FCM,
            digest__in=[token_digest(t) for t in fcm],
            token__in=fcm,
        ).delete()


def _write_log(batch: Batch, rows: list[tuple[dict[str, Any], SendResult, str]]) -> None:
    if settings.DELIVERY_LOG_DAYS <= 0 or not rows:
        return
    now = timezone.now()
    attemptlog.record(
        [
            attemptlog.row(
                created=now,
                batch=batch,
                delivery=delivery,
                outcome=outcome,
                status=result.status,
                reason=result.reason or "",
                upstream_id=result.upstream_id or "",
                latency=result.latency,
            )
            for delivery, result, outcome in rows
        ]
    )


def send_first_attempt(*, batch: Batch, schedule: Scheduler) -> dict[int, str]:
    """The web's side: send a batch's first attempt now and settle it; outcome by index.

    Sent from the web process's own event loop, within NOTIFY_WAIT_SECONDS: a delivery not
    answered by then is cancelled and retried in the background like any timeout. Nothing
    of the batch is left in this process once this returns, so a web process that dies
    mid-send has answered nothing, and the Zulip server retries the whole request (spec:
    it re-queues on a network error or 5xx); what still has to happen after the answer is
    in the broker (`schedule`) before the answer goes out.
    """
    deliveries: list[dict[str, Any]] = batch["deliveries"]
    now = time.time()
    results = get_relay().send_all(deliveries, wait=settings.NOTIFY_WAIT_SECONDS)
    outcomes = _settle(batch, deliveries, results, schedule, now=now)
    return {d["i"]: outcome for d, outcome in zip(deliveries, outcomes, strict=True)}


def process_batch(*, batch: Batch, schedule: Scheduler) -> None:
    """The worker's side (retries): send what has not been sent yet, then settle."""
    deliveries: list[dict[str, Any]] = batch["deliveries"]
    states = channel.claim_all(batch["id"], batch["attempt"], [d["i"] for d in deliveries])
    to_send = [d for d in deliveries if states[d["i"]] == "claimed"]
    busy = [d for d in deliveries if states[d["i"]] == "busy"]
    if busy:
        # Another worker claimed these and may have died mid-send: look again once its
        # claim has lapsed. A delivery already done is never sent again.
        schedule({**batch, "deliveries": busy}, settings.DELIVERY_CLAIM_SECONDS + 1)
    if not to_send:
        return

    relay = get_relay()
    worker_channel = relay.channel

    async def mark_done(delivery: dict[str, Any], result: SendResult) -> None:
        await worker_channel.mark_done(
            batch_id=batch["id"], attempt=batch["attempt"], index=delivery["i"]
        )

    now = time.time()
    results = relay.send_all(to_send, on_result=mark_done)
    _settle(batch, to_send, results, schedule, now=now)


def _settle(
    batch: Batch,
    sent: list[dict[str, Any]],
    results: list[SendResult],
    schedule: Scheduler,
    *,
    now: float,
) -> list[str]:
    """Log and count each result, schedule retries, expire dead tokens; the outcomes.

    `now` is when the attempt started, so a retry due at the deadline still happens. Raises
    what `schedule` raised (the broker is down) once the rest is done: the caller must not
    treat a retry that was never queued as handled.
    """
    exhausted = give_up(attempt=batch["attempt"], now=now, give_up_at=batch["give_up_at"])
    rows: list[tuple[dict[str, Any], SendResult, str]] = []
    dead: list[dict[str, Any]] = []
    retry: list[tuple[dict[str, Any], SendResult]] = []
    for delivery, result in zip(sent, results, strict=True):
        outcome = result.verdict.value
        if result.verdict == Verdict.TOKEN_DEAD:
            dead.append(delivery)
        elif result.verdict == Verdict.RETRY:
            if exhausted:
                outcome = DeliveryAttempt.Outcome.GAVE_UP.value
            else:
                retry.append((delivery, result))
        rows.append((delivery, result, outcome))
        _log_result(batch, delivery, result, outcome)
        metrics.record_delivery(
            provider=delivery["provider"],
            outcome=outcome,
            # Only what Apple or Google answered (or timed out on) is upstream latency; a
            # delivery refused here for want of credentials never left the process.
            latency=None if result.verdict == Verdict.CONFIG_FAULT else result.latency,
        )

    # Retries first: they go through the broker, and a database outage below must not lose
    # a delivery that still has to happen.
    unscheduled: Exception | None = None
    if retry:
        delay = max(
            next_retry_delay(
                verdict_reason=result.reason,
                attempt=batch["attempt"],
                retry_after=result.retry_after,
            )
            for _, result in retry
        )
        # Never past the point of giving up: the last attempt happens at the deadline.
        delay = min(delay, max(batch["give_up_at"] - now, 0))
        try:
            schedule(
                {**batch, "attempt": batch["attempt"] + 1, "deliveries": [d for d, _ in retry]},
                delay,
            )
        except (BrokerError, redis.RedisError) as e:  # re-raised once the rest is recorded
            unscheduled = e
    try:
        expire_dead_tokens(protocol=batch["protocol"], dead=dead)
        _write_log(batch, rows)
    except DatabaseError as e:
        # PostgreSQL down or restarting. The deliveries themselves are done; a dead token not
        # expired now is reported dead again by Apple or Google on its next notification,
        # and expired then.
        logger.error(
            "Batch %s attempt %d: database unavailable, %d dead tokens not expired yet "
            "(and, in-process, %d delivery log rows lost): %s",
            batch["id"],
            batch["attempt"],
            len(dead),
            len(rows),
            e,
        )
    if unscheduled is not None:
        raise unscheduled
    return [outcome for _, _, outcome in rows]


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
