"""Load shedding: a request that waited too long in front of the bouncer gets a quick 503.

Above saturation, requests queue in front of the web processes (in their loops and the kernel);
served late, they only make the queue longer, and the Zulip server that sent them may
already have given up. The proxy stamps each request with when it arrived
(deploy/nginx/bouncer.conf: `X-Request-Start: t=<seconds>`); a request that has waited longer
than BOUNCER_MAX_QUEUE_SECONDS is answered at once with 503 SERVICE_UNAVAILABLE and
Retry-After, which a Zulip server retries later, instead of a timeout.
"""

import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from bouncer import metrics
from bouncer.errors import error_response, is_api_path, service_unavailable

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


def queued_seconds(header: str, *, now: float) -> float | None:
    """Time since the proxy's stamp: `t=1700000000.123` (seconds; ms or µs also accepted)."""
    raw = header.strip().removeprefix("t=")
    try:
        stamp = float(raw)
    except ValueError:
        return None
    # Proxies differ in the unit they stamp; a plausible epoch in seconds is ~1.7e9.
    if stamp > 1e14:
        stamp /= 1e6
    elif stamp > 1e11:
        stamp /= 1e3
    waited = now - stamp
    return waited if waited >= 0 else None


class LoadSheddingMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        header = request.headers.get("X-Request-Start")
        limit = settings.BOUNCER_MAX_QUEUE_SECONDS
        if header and limit > 0 and is_api_path(request.path):
            waited = queued_seconds(header, now=time.time())
            if waited is not None and waited > limit:
                metrics.SHED_REQUESTS.inc()
                logger.warning(
                    "Overloaded: %s waited %.1f s before a worker took it; answered 503",
                    request.path,
                    waited,
                )
                return error_response(
                    service_unavailable(
                        "Push notification service overloaded, retry later",
                        retry_after=RETRY_AFTER_SECONDS,
                    )
                )
        return self.get_response(request)
