"""One asyncio event loop per process, holding the persistent HTTP/2 connections.

In the web server (`manage.py serve`) that loop is the server's own: the notify endpoints
await `send` directly, and Django's threads hand over through `send_all`. Celery workers
(`--pool threads`, retries), management commands and tests run the loop in a thread of the
relay's own. Everything the process sends shares the loop, so deliveries go out
concurrently over the same connections and throughput is bounded by the upstreams'
concurrency, not by threads / round trip.

Before a delivery is sent its payload is checked against the provider's limit; then it waits
its tenant's turn for room on the provider (fairness.FairGate), then its sender sends it.
"""

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

import uvloop
from django.conf import settings

from delivery import limits
from delivery.apns import ApnsSender
from delivery.channel import WorkerChannel
from delivery.fairness import FairGate
from delivery.fcm import FcmSender
from delivery.outcomes import TIMEOUT, SendResult, Verdict
from delivery.types import Delivery, Provider

logger = logging.getLogger(__name__)

# Beyond the senders' own per-request timeouts: a batch that somehow never finishes must
# not hold a worker thread forever.
BATCH_TIMEOUT_SECONDS = 120

OnResult = Callable[[Delivery, SendResult], Awaitable[None]]


class Sender(Protocol):
    """One provider's client: sends one delivery, classifies the answer. Built once per
    process, inside the loop it sends from."""

    provider: str

    async def send(self, delivery: Delivery) -> SendResult: ...

    async def close(self) -> None: ...


def _retry(reason: str, started: float) -> SendResult:
    return SendResult.unanswered(Verdict.RETRY, reason, latency=time.monotonic() - started)


class Relay:
    """The senders of this process, on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.pid = os.getpid()
        # One Redis connection pool for the claims of every retry batch of this process.
        self.channel = WorkerChannel()
        self._thread: threading.Thread | None = None
        if loop is not None:
            self.loop = loop
            self._build()
            return
        # uvloop, as the web server runs: the same loop implementation everywhere.
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="delivery-loop", daemon=True
        )
        self._thread.start()
        # Senders are built inside the loop: their HTTP/2 clients belong to it.
        asyncio.run_coroutine_threadsafe(self._abuild(), self.loop).result(timeout=30)

    async def _abuild(self) -> None:
        self._build()

    def _build(self) -> None:
        self.senders: dict[str, Sender] = {
            Provider.APNS: ApnsSender(),
            Provider.FCM: FcmSender(),
        }
        self.gates = {
            provider: FairGate(settings.DELIVERY_MAX_IN_FLIGHT) for provider in self.senders
        }

    async def aclose(self) -> None:
        for sender in self.senders.values():
            await sender.close()

    async def send(self, delivery: Delivery, tenant: str) -> SendResult:
        """One delivery: checked against its provider's limit, sent in its tenant's turn."""
        if limits.too_large(delivery):
            return SendResult.unanswered(Verdict.REJECTED, limits.PAYLOAD_TOO_LARGE, latency=0.0)
        started = time.monotonic()
        gate = self.gates[delivery.provider]
        await gate.acquire(tenant)
        try:
            return await self.senders[delivery.provider].send(delivery)
        except Exception as e:  # one broken delivery must not sink its batch; logged here
            logger.exception(
                "%s: unexpected error sending to device %s",
                delivery.provider.upper(),
                delivery.device_id,
            )
            return _retry(type(e).__name__, started)
        finally:
            gate.release()

    async def _send_one(
        self, delivery: Delivery, tenant: str, on_result: OnResult | None
    ) -> SendResult:
        result = await self.send(delivery, tenant)
        if on_result is not None:
            await on_result(delivery, result)
        return result

    async def send_many(
        self,
        deliveries: list[Delivery],
        tenant: str,
        *,
        on_result: OnResult | None = None,
        wait: float | None = None,
    ) -> list[SendResult]:
        """Send every delivery concurrently and return their results, in order.

        `on_result` runs as each one ends. With `wait`, what is unanswered after that many
        seconds is cancelled and comes back as a timeout (verdict retry).
        """
        started = time.monotonic()
        if len(deliveries) == 1:
            # The commonest request: no task of its own, the same timeout semantics.
            try:
                async with asyncio.timeout(wait):
                    return [await self._send_one(deliveries[0], tenant, on_result)]
            except TimeoutError:
                return [_retry(TIMEOUT, started)]
        sends = [asyncio.ensure_future(self._send_one(d, tenant, on_result)) for d in deliveries]
        if wait is None:
            return list(await asyncio.gather(*sends))
        _, pending = await asyncio.wait(sends, timeout=wait)
        for send in pending:
            send.cancel()
        if pending:
            await asyncio.wait(pending)  # let the cancellations unwind (gates, streams)
        # Not answered in time: a timeout like any other, retried in the background. Apple or
        # Google may still have received it; a retry after a timeout is at-least-once.
        return [_retry(TIMEOUT, started) if send.cancelled() else send.result() for send in sends]

    def send_all(
        self,
        deliveries: list[Delivery],
        tenant: str,
        *,
        on_result: OnResult | None = None,
        wait: float | None = None,
    ) -> list[SendResult]:
        """`send_many` from a thread other than the loop's (workers, Django views)."""
        future = asyncio.run_coroutine_threadsafe(
            self.send_many(deliveries, tenant, on_result=on_result, wait=wait), self.loop
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
