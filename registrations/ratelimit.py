"""Request rate limits: per server (Zulip's `api_by_remote_server` rule) and per source address.

A fixed window per subject: one INCR per request in Redis, shared by every web process,
when the broker is Redis; an in-process counter otherwise (make run). When Redis cannot
be reached the limit is not applied: refusing every server's notifications because a
counter is unavailable would be worse than letting a burst through.

Subjects: `server:<id>` (every authenticated request, BOUNCER_RATE_LIMIT);
`anonymous:<address>` (the unauthenticated register, transfer and verify_challenge,
BOUNCER_ANONYMOUS_RATE_LIMIT); `verify_challenge:address:<address>` and
`verify_challenge:hostname:<digest>` (each verify_challenge makes the bouncer fetch a URL,
BOUNCER_VERIFY_RATE_LIMIT); `auth_failures:<address>` (failed authentications only; past
BOUNCER_AUTH_FAILURE_RATE_LIMIT further failures from the address are answered 429).
"""

import asyncio
import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from functools import cache

import redis
import redis.asyncio
from django.conf import settings
from django.http import HttpRequest

from bouncer.errors import BouncerError, ErrorCode

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after: float


class _LocalWindows:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, int]] = {}

    def hit(self, key: str, window: int) -> int:
        with self._lock:
            start, count = self._counts.get(key, (window, 0))
            if start != window:
                start, count = window, 0
            self._counts[key] = (start, count + 1)
            return count + 1


_local = _LocalWindows()


@cache
def _redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=1, socket_connect_timeout=1, health_check_interval=30
    )


def _window(subject: str, seconds: int, now: float) -> tuple[str, int, int]:
    """The counter's key, the window's number and the time it ends."""
    window = int(now // seconds)
    return f"bouncer:ratelimit:{subject}:{seconds}:{window}", window, (window + 1) * seconds


def hit(subject: str, *, limit: tuple[int, int] | None = None) -> Verdict:
    """Count one request by `subject` and say whether it is within the limit."""
    max_requests, seconds = limit or settings.BOUNCER_RATE_LIMIT
    now = time.time()
    key, window, window_end = _window(subject, seconds, now)
    if not settings.REDIS_URL:
        count = _local.hit(key, window)
    else:
        client = _redis_client(settings.REDIS_URL)
        try:
            pipe = client.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, seconds + 1)
            count = int(pipe.execute()[0])
        except redis.RedisError as e:
            logger.warning("Rate limit not applied: Redis unavailable (%s)", e)
            return Verdict(allowed=True, retry_after=0)
    if count > max_requests:
        return Verdict(allowed=False, retry_after=window_end - now)
    return Verdict(allowed=True, retry_after=0)


# The event loop's counts go to Redis in one pipeline this often: a round trip per request
# was a tenth of a one-device notify's CPU, and a flush every 0.1 s still a few percent. Every
# process still shares the count, up to what the others counted in the last SYNC_SECONDS,
# which against limits counted per minute is a rounding error.
SYNC_SECONDS = 0.25


class _BatchedCounts:
    """Per-process counts for the event loop, pushed to Redis every SYNC_SECONDS."""

    def __init__(self, url: str) -> None:
        self.client = redis.asyncio.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self.pending: dict[str, int] = {}
        self.lifetimes: dict[str, int] = {}  # seconds each key outlives its window's start
        # Keys whose lifetime the next flush sets: new to this process, or found created by
        # its last flush (Redis lost them meanwhile). Set once, not with every increment.
        self.unexpiring: set[str] = set()
        self.known: dict[str, tuple[int, float]] = {}  # key -> (Redis's count, window end)
        self.task: asyncio.Task[None] | None = None
        self.last_warning = 0.0

    def hit(self, key: str, *, seconds: int, window_end: float) -> int:
        self.pending[key] = self.pending.get(key, 0) + 1
        if key not in self.known:
            self.known[key] = (0, window_end)
            self.lifetimes[key] = seconds + 1
            self.unexpiring.add(key)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
        return self.known[key][0] + self.pending[key]

    async def _run(self) -> None:
        while self.pending or self.unexpiring:
            await asyncio.sleep(SYNC_SECONDS)
            await self.flush()

    async def flush(self) -> None:
        items, self.pending = list(self.pending.items()), {}
        expiring, self.unexpiring = self.unexpiring, set()
        pipe = self.client.pipeline(transaction=False)
        for key, count in items:
            pipe.incrby(key, count)
        for key in expiring:
            pipe.expire(key, self.lifetimes.get(key, 61))
        try:
            results = await pipe.execute()
        except (redis.RedisError, OSError) as e:
            # Fails open, as the synchronous path does: the counts of this moment are lost.
            self.unexpiring |= expiring
            now = time.monotonic()
            if now - self.last_warning > 60:
                self.last_warning = now
                logger.warning("Rate limit not applied: Redis unavailable (%s)", e)
            return
        now = time.time()
        self.known = {k: v for k, v in self.known.items() if v[1] > now}
        self.lifetimes = {k: v for k, v in self.lifetimes.items() if k in self.known}
        for (key, count), total in zip(items, results[: len(items)], strict=True):
            if key in self.known:
                self.known[key] = (int(total), self.known[key][1])
                if int(total) == count and key not in expiring:
                    self.unexpiring.add(key)  # this flush created it: it needs a lifetime


_batched: dict[tuple[str, int], _BatchedCounts] = {}


def _counts(url: str) -> _BatchedCounts:
    # One per event loop: an asyncio client's connections belong to the loop that made them.
    key = (url, id(asyncio.get_running_loop()))
    counts = _batched.get(key)
    if counts is None:
        counts = _batched[key] = _BatchedCounts(url)
    return counts


async def hit_async(subject: str, *, limit: tuple[int, int] | None = None) -> Verdict:
    """`hit` for the event loop: counted here at once, in Redis within SYNC_SECONDS."""
    if not settings.REDIS_URL:
        return hit(subject, limit=limit)
    max_requests, seconds = limit or settings.BOUNCER_RATE_LIMIT
    now = time.time()
    key, _, window_end = _window(subject, seconds, now)
    count = _counts(settings.REDIS_URL).hit(key, seconds=seconds, window_end=window_end)
    if count > max_requests:
        return Verdict(allowed=False, retry_after=window_end - now)
    return Verdict(allowed=True, retry_after=0)


async def enforce_async(subject: str, *, limit: tuple[int, int] | None = None) -> None:
    _raise_if_over(await hit_async(subject, limit=limit))


def client_address(request: HttpRequest) -> str:
    """The address a request comes from. Behind the proxy (deploy/nginx) every request comes
    from it, so the address is the last X-Forwarded-For entry: the one nginx appended itself
    ($proxy_add_x_forwarded_for); entries before it are the client's own claims."""
    if settings.BOUNCER_BEHIND_PROXY:
        forwarded = str(request.META.get("HTTP_X_FORWARDED_FOR", ""))
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last[:64]
    return str(request.META.get("REMOTE_ADDR") or "unknown")[:64]


def digest(value: str) -> str:
    """A short fixed-size key part for caller-chosen text (a hostname)."""
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:32]


def enforce_anonymous(request: HttpRequest) -> None:
    """The per-address limit of the unauthenticated endpoints (register, transfer, verify)."""
    enforce(f"anonymous:{client_address(request)}", limit=settings.BOUNCER_ANONYMOUS_RATE_LIMIT)


def rate_limited(retry_after: float) -> BouncerError:
    return BouncerError(
        "API usage exceeded rate limit",
        code=ErrorCode.RATE_LIMIT_HIT,
        status=429,
        data={"retry-after": round(retry_after, 3)},
        headers={"Retry-After": retry_after_header(retry_after)},
    )


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def enforce(subject: str, *, limit: tuple[int, int] | None = None) -> None:
    """Count a request; over the limit, Zulip's 429 RATE_LIMIT_HIT with Retry-After."""
    _raise_if_over(hit(subject, limit=limit))


def _raise_if_over(verdict: Verdict) -> None:
    if not verdict.allowed:
        raise rate_limited(verdict.retry_after)
