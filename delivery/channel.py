"""Claims: a retry batch re-delivered after its worker died sends only what was never answered.

A retry batch's delivery is claimed (SET NX with a lifetime) before it is sent and marked
done as soon as Apple or Google answers it; a re-run finds it done and skips it, or finds a
live claim and looks again once the claim has lapsed. (A notify request's first attempt
needs none: the web process sends it itself and nothing re-runs it.)

Without a broker (`make run`) retries run in-process and the same protocol runs in memory.
"""

import threading
import time
from functools import cache
from typing import Literal

import redis
import redis.asyncio
from django.conf import settings

DONE_TTL_SECONDS = 24 * 60 * 60

ClaimState = Literal["claimed", "done", "busy"]


def _claim_key(batch_id: str, index: int, attempt: int) -> str:
    return f"bouncer:claim:{batch_id}:{index}:{attempt}"


class _MemoryChannel:
    """The in-process stand-in used when there is no broker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claims: dict[str, tuple[str, float]] = {}

    def claim(self, key: str) -> ClaimState:
        now = time.monotonic()
        with self._lock:
            value, expires = self._claims.get(key, ("", 0.0))
            if value == "done":
                return "done"
            if value and expires > now:
                return "busy"
            self._claims[key] = ("claimed", now + settings.DELIVERY_CLAIM_SECONDS)
            return "claimed"

    def mark_done(self, key: str) -> None:
        with self._lock:
            self._claims[key] = ("done", time.monotonic() + DONE_TTL_SECONDS)


_memory = _MemoryChannel()


@cache
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


class WorkerChannel:
    """The claims' async side, used from the delivery event loop."""

    def __init__(self) -> None:
        self._async_client: redis.asyncio.Redis | None = None

    def _client(self) -> redis.asyncio.Redis:
        if self._async_client is None:
            self._async_client = redis.asyncio.Redis.from_url(
                settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5
            )
        return self._async_client

    async def mark_done(self, *, batch_id: str, attempt: int, index: int) -> None:
        """A delivery of a retry batch has its answer: a re-run of the batch skips it."""
        key = _claim_key(batch_id, index, attempt)
        if not settings.REDIS_URL:
            _memory.mark_done(key)
            return
        await self._client().set(key, "done", ex=DONE_TTL_SECONDS)


def claim_all(batch_id: str, attempt: int, indexes: list[int]) -> dict[int, ClaimState]:
    """Claim each delivery of a batch before sending it (sync, from the task thread)."""
    keys = {i: _claim_key(batch_id, i, attempt) for i in indexes}
    if not settings.REDIS_URL:
        return {i: _memory.claim(key) for i, key in keys.items()}
    client = _redis(settings.REDIS_URL)
    pipe = client.pipeline(transaction=False)
    for key in keys.values():
        pipe.set(key, "claimed", nx=True, ex=settings.DELIVERY_CLAIM_SECONDS)
    won = pipe.execute()
    states: dict[int, ClaimState] = {}
    lost = [i for i, ok in zip(keys, won, strict=True) if not ok]
    if lost:
        values = client.mget([keys[i] for i in lost])
        for i, value in zip(lost, values, strict=True):
            states[i] = "done" if value == b"done" else "busy"
    for i, ok in zip(keys, won, strict=True):
        if ok:
            states[i] = "claimed"
    return states


def mark_all_done(batch_id: str, attempt: int, indexes: list[int]) -> None:
    """Mark deliveries done once their retry is in the broker (sync, from the task thread)."""
    if not indexes:
        return
    keys = [_claim_key(batch_id, i, attempt) for i in indexes]
    if not settings.REDIS_URL:
        for key in keys:
            _memory.mark_done(key)
        return
    pipe = _redis(settings.REDIS_URL).pipeline(transaction=False)
    for key in keys:
        pipe.set(key, "done", ex=DONE_TTL_SECONDS)
    pipe.execute()
