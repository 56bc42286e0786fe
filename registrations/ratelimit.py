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

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from functools import cache

import redis
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


def _window(subject: str, seconds: int) -> tuple[str, int, float]:
    now = time.time()
    window = int(now // seconds)
    return f"bouncer:ratelimit:{subject}:{seconds}:{window}", window, (window + 1) * seconds - now


def hit(subject: str, *, limit: tuple[int, int] | None = None) -> Verdict:
    """Count one request by `subject` and say whether it is within the limit."""
    max_requests, seconds = limit or settings.BOUNCER_RATE_LIMIT
    key, window, retry_after = _window(subject, seconds)
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
    verdict = hit(subject, limit=limit)
    if not verdict.allowed:
        raise rate_limited(verdict.retry_after)
