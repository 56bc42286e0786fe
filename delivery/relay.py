"""One asyncio event loop per process, holding the persistent HTTP/2 connections.

Web processes (gunicorn threads, a notify request's first attempt) and Celery workers
(`--pool threads`, retries) hand their deliveries to this loop and wait. Everything the
process sends shares the loop, so deliveries go out concurrently over the same connections
and a request waiting on Apple does not hold a core: throughput is bounded by the upstreams'
concurrency, not by threads / round trip.
"""

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from delivery.apns import ApnsMessage, ApnsSender
from delivery.channel import WorkerChannel
from delivery.fcm import FcmMessage, FcmSender
from delivery.outcomes import TIMEOUT, SendResult, Verdict

logger = logging.getLogger(__name__)

# Beyond the senders' own per-request timeouts: a batch that somehow never finishes must
# not hold a worker thread forever.
BATCH_TIMEOUT_SECONDS = 120

OnResult = Callable[[dict[str, Any], SendResult], Awaitable[None]]


def _retry(reason: str, started: float) -> SendResult:
    return SendResult.unanswered(Verdict.RETRY, reason, latency=time.monotonic() - started)


def _message(delivery: dict[str, Any]) -> ApnsMessage | FcmMessage:
    if delivery["provider"] == "apns":
        apns = delivery["apns"]
        return ApnsMessage(
            token=delivery["token"],
            app_id=delivery["app_id"],
            payload=apns["payload"],
            priority=apns.get("priority"),
            push_type=apns.get("push_type"),
            expiration=apns.get("expiration"),
        )
    fcm = delivery["fcm"]
    return FcmMessage(token=delivery["token"], data=fcm["data"], priority=fcm["priority"])


class Relay:
    """The senders of this process, on one event loop.

    In the web server (`manage.py serve`) that loop is the server's own: the notify endpoints
    await the senders directly, and Django's threads hand over through `send_all`. Elsewhere
    (Celery workers, management commands, tests) the relay runs a loop in a thread of its own.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.pid = os.getpid()
        # One Redis connection pool for the claims of every retry batch of this process.
        self.channel = WorkerChannel()
        if loop is not None:
            self.loop = loop
            self._apns, self._fcm = ApnsSender(), FcmSender()
            return
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="delivery-loop", daemon=True
        )
        self._thread.start()
        # Senders are built inside the loop: their HTTP/2 clients belong to it.
        self._apns, self._fcm = asyncio.run_coroutine_threadsafe(self._build(), self.loop).result(
            timeout=30
        )

    async def _build(self) -> tuple[ApnsSender, FcmSender]:
        return ApnsSender(), FcmSender()

    async def aclose(self) -> None:
        await self._apns.close()
        await self._fcm.close()

    async def _send_one(self, delivery: dict[str, Any], on_result: OnResult | None) -> SendResult:
        message = _message(delivery)
        started = time.monotonic()
        try:
            if isinstance(message, ApnsMessage):
                result = await self._apns.send(message)
            else:
                result = await self._fcm.send(message)
        except Exception as e:  # one broken delivery must not sink its batch; logged below
            logger.exception(
                "%s: unexpected error sending to device %s",
                delivery["provider"].upper(),
                delivery["device_id"],
            )
            result = _retry(type(e).__name__, started)
        if on_result is not None:
            await on_result(delivery, result)
        return result

    async def _send_all(
        self, deliveries: list[dict[str, Any]], on_result: OnResult | None, wait: float | None
    ) -> list[SendResult]:
        started = time.monotonic()
        sends = [asyncio.ensure_future(self._send_one(d, on_result)) for d in deliveries]
        if wait is None:
            return list(await asyncio.gather(*sends))
        _, pending = await asyncio.wait(sends, timeout=wait)
        for send in pending:
            send.cancel()
        if pending:
            await asyncio.wait(pending)  # let the cancellations unwind (semaphores, streams)
        # Not answered in time: a timeout like any other, retried in the background. Apple or
        # Google may still have received it; a retry after a timeout is at-least-once.
        return [_retry(TIMEOUT, started) if send.cancelled() else send.result() for send in sends]

    def send_all(
        self,
        deliveries: list[dict[str, Any]],
        *,
        on_result: OnResult | None = None,
        wait: float | None = None,
    ) -> list[SendResult]:
        """Send every delivery concurrently and return their results, in order.

        `on_result` runs in the loop as each one ends. With `wait`, what is unanswered after
        that many seconds is cancelled and comes back as a timeout (verdict retry).
        """
        future = asyncio.run_coroutine_threadsafe(
            self._send_all(deliveries, on_result, wait), self.loop
        )
        try:
            return future.result(timeout=BATCH_TIMEOUT_SECONDS)
        except FutureTimeout:
            future.cancel()
            raise

    def run(self, coroutine: Awaitable[Any]) -> Any:
        async def wrapper() -> Any:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout=30)


_lock = threading.Lock()
_relay: Relay | None = None


def get_relay() -> Relay:
    """This process's relay (rebuilt after a fork: a loop thread does not survive one)."""
    global _relay
    with _lock:
        if _relay is None or _relay.pid != os.getpid():
            _relay = Relay()
        return _relay


def attach_relay(loop: asyncio.AbstractEventLoop) -> Relay:
    """Make the running server loop this process's relay (the web server's start-up)."""
    global _relay
    with _lock:
        _relay = Relay(loop)
        return _relay
