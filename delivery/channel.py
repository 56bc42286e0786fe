"""How a notify request and the worker delivering its batch talk: outcomes and claims.

The worker pushes each delivery's outcome onto a Redis list named after the batch as soon
as APNs or FCM answers; the web process waiting on that request pops them with BLPOP until
it has them all or NOTIFY_WAIT_SECONDS run out. Claims make a re-run harmless: a delivery
is claimed (SET NX with a lifetime) before it is sent and marked done as soon as its outcome
is known, so a batch re-delivered after a worker died sends only what was never answered.

Without a broker (`make run`) tasks run in-process and the same protocol runs in memory.
"""

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from typing import Literal

import redis
import redis.asyncio
from django.conf import settings

OUTCOMES_TTL_SECONDS = 300
DONE_TTL_SECONDS = 24 * 60 * 60

ClaimState = Literal["claimed", "done", "busy"]


@dataclass(frozen=True, slots=True)
class Outcome:
    index: int
    outcome: str
    status: int | None
    reason: str

    def dumps(self) -> str:
        return json.dumps([self.index, self.outcome, self.status, self.reason])

    @classmethod
    def loads(cls, raw: bytes | str) -> "Outcome":
        index, outcome, status, reason = json.loads(raw)
        return cls(index=index, outcome=outcome, status=status, reason=reason)


def _outcomes_key(batch_id: str) -> str:
    return f"bouncer:outcomes:{batch_id}"


def _claim_key(batch_id: str, index: int, attempt: int) -> str:
    return f"bouncer:claim:{batch_id}:{index}:{attempt}"


class _MemoryChannel:
    """The in-process stand-in used when there is no broker."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._outcomes: dict[str, list[str]] = defaultdict(list)
        self._claims: dict[str, tuple[str, float]] = {}

    def publish(self, batch_id: str, outcome: Outcome) -> None:
        with self._cond:
            self._outcomes[batch_id].append(outcome.dumps())
            self._cond.notify_all()

    def wait(self, batch_id: str, expected: int, timeout: float) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._outcomes[batch_id]) < expected:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            raw = self._outcomes.pop(batch_id, [])
        return [Outcome.loads(r) for r in raw]

    def claim(self, key: str) -> ClaimState:
        now = time.monotonic()
        with self._cond:
            value, expires = self._claims.get(key, ("", 0.0))
            if value == "done":
                return "done"
            if value and expires > now:
                return "busy"
            self._claims[key] = ("claimed", now + settings.DELIVERY_CLAIM_SECONDS)
            return "claimed"

    def mark_done(self, key: str) -> None:
        with self._cond:
            self._claims[key] = ("done", time.monotonic() + DONE_TTL_SECONDS)


_memory = _MemoryChannel()


@cache
def _redis(url: str) -> redis.Redis:
    # BLPOP holds the socket for up to NOTIFY_WAIT_SECONDS; the socket timeout must exceed it.
    return redis.Redis.from_url(
        url,
        socket_timeout=settings.NOTIFY_WAIT_SECONDS + 5,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


def wait_for_outcomes(batch_id: str, *, expected: int, timeout: float) -> list[Outcome]:
    """The outcomes of a batch's first attempt that arrive within `timeout` seconds."""
    if not settings.REDIS_URL:
        return _memory.wait(batch_id, expected, timeout)
    client = _redis(settings.REDIS_URL)
    key = _outcomes_key(batch_id)
    deadline = time.monotonic() + timeout
    raw: list[bytes | str] = []
    while len(raw) < expected:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        popped = client.blpop([key], timeout=max(remaining, 0.01))
        if popped is None:
            break
        raw.append(popped[1])
        # Whatever else has arrived meanwhile, in one round trip.
        more = client.lpop(key, expected - len(raw)) if len(raw) < expected else None
        if isinstance(more, list):
            raw.extend(more)
    return [Outcome.loads(r) for r in raw]


class WorkerChannel:
    """The worker's side, used from the delivery event loop (async) and task threads (sync)."""

    def __init__(self) -> None:
        self._async_client: redis.asyncio.Redis | None = None

    def _client(self) -> redis.asyncio.Redis:
        if self._async_client is None:
            self._async_client = redis.asyncio.Redis.from_url(
                settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5
            )
        return self._async_client

    async def record(self, *, batch_id: str, attempt: int, outcome: Outcome, report: bool) -> None:
        """Mark a delivery done and, for a first attempt, tell the waiting request."""
        key = _claim_key(batch_id, outcome.index, attempt)
        if not settings.REDIS_URL:
            _memory.mark_done(key)
            if report:
                _memory.publish(batch_id, outcome)
            return
        pipe = self._client().pipeline(transaction=False)
        pipe.set(key, "done", ex=DONE_TTL_SECONDS)
        if report:
            pipe.rpush(_outcomes_key(batch_id), outcome.dumps())
            pipe.expire(_outcomes_key(batch_id), OUTCOMES_TTL_SECONDS)
        await pipe.execute()


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
