"""Per-server request rate limit (Zulip's `api_by_remote_server` rule).

A fixed window per server: one INCR per request in Redis, shared by every web process,
when the broker is Redis; an in-process counter otherwise (make run). When Redis cannot
be reached the limit is not applied: refusing every server's notifications because a
counter is unavailable would be worse than letting a burst through.
"""

import asyncio
import logging
import math
import threading
import time
from dataclasses import dataclass
from functools import cache

import redis
import redis.asyncio
from django.conf import settings

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


def hit(subject: str, *, limit: tuple[int, int] | None = None) -> Verdict:
    """Count one request by `subject` and say whether it is within the limit."""
    max_requests, seconds = limit or settings.BOUNCER_RATE_LIMIT
    now = time.time()
    window = int(now // seconds)
    retry_after = (window + 1) * seconds - now
    key = f"bouncer:ratelimit:{subject}:{seconds}:{window}"
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
        return Verdict(allowed=False, retry_after=retry_after)
    return Verdict(allowed=True, retry_after=0)


_async_clients: dict[tuple[str, int], redis.asyncio.Redis] = {}


def _async_client(url: str) -> redis.asyncio.Redis:
    # One per event loop: an asyncio client's connections belong to the loop that made them.
    key = (url, id(asyncio.get_running_loop()))
    client = _async_clients.get(key)
    if client is None:
        client = _async_clients[key] = redis.asyncio.Redis.from_url(
            url, socket_timeout=1, socket_connect_timeout=1
        )
    return client


async def hit_async(subject: str, *, limit: tuple[int, int] | None = None) -> Verdict:
    """`hit` for the event loop (one pipelined round trip to Redis)."""
    if not settings.REDIS_URL:
        return hit(subject, limit=limit)
    max_requests, seconds = limit or settings.BOUNCER_RATE_LIMIT
    now = time.time()
    window = int(now // seconds)
    key = f"bouncer:ratelimit:{subject}:{seconds}:{window}"
    try:
        pipe = _async_client(settings.REDIS_URL).pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, seconds + 1)
        count = int((await pipe.execute())[0])
    except (redis.RedisError, OSError) as e:
        logger.warning("Rate limit not applied: Redis unavailable (%s)", e)
        return Verdict(allowed=True, retry_after=0)
    if count > max_requests:
        return Verdict(allowed=False, retry_after=(window + 1) * seconds - now)
    return Verdict(allowed=True, retry_after=0)


async def enforce_async(subject: str, *, limit: tuple[int, int] | None = None) -> None:
    _raise_if_over(await hit_async(subject, limit=limit))


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def enforce(subject: str, *, limit: tuple[int, int] | None = None) -> None:
    """Count a request; over the limit, Zulip's 429 RATE_LIMIT_HIT with Retry-After."""
    _raise_if_over(hit(subject, limit=limit))


def _raise_if_over(verdict: Verdict) -> None:
    if not verdict.allowed:
        raise BouncerError(
            "API usage exceeded rate limit",
            code=ErrorCode.RATE_LIMIT_HIT,
            status=429,
            data={"retry-after": round(verdict.retry_after, 3)},
            headers={"Retry-After": retry_after_header(verdict.retry_after)},
        )
