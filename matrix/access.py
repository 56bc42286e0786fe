"""Who may call the Matrix endpoints: the operator's networks and a rate limit per address.

Matrix's push gateway API has no authentication (a homeserver calls it as itself), so the
operator restricts it by source network (MATRIX_NOTIFY_ALLOWED_NETWORKS) and each source
address is rate limited (MATRIX_NOTIFY_RATE_LIMIT). Behind the proxy the address is the last
X-Forwarded-For entry, as for every other endpoint (registrations/ratelimit.py).
"""

import ipaddress
from functools import cache

from django.conf import settings

from bouncer.errors import MatrixError
from registrations import ratelimit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@cache
def _parsed(networks: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def address_allowed(address: str) -> bool:
    networks = settings.MATRIX_NOTIFY_ALLOWED_NETWORKS
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in _parsed(tuple(networks)))


def forwarded_address(remote: str, forwarded_for: str | None) -> str:
    if settings.BOUNCER_BEHIND_PROXY and forwarded_for:
        last = forwarded_for.rsplit(",", 1)[-1].strip()
        if last:
            return last[:64]
    return remote[:64] or "unknown"


def forbidden() -> MatrixError:
    return MatrixError(
        "This push gateway does not serve your address", errcode="M_FORBIDDEN", status=403
    )


def rate_limited(retry_after: float) -> MatrixError:
    return MatrixError(
        "Too many requests",
        errcode="M_LIMIT_EXCEEDED",
        status=429,
        data={"retry_after_ms": int(retry_after * 1000)},
        headers={"Retry-After": ratelimit.retry_after_header(retry_after)},
    )


def check(address: str) -> None:
    """Sync: the allowed networks and the rate limit (raises MatrixError)."""
    if not address_allowed(address):
        raise forbidden()
    verdict = ratelimit.hit(f"matrix:{address}", limit=settings.MATRIX_NOTIFY_RATE_LIMIT)
    if not verdict.allowed:
        raise rate_limited(verdict.retry_after)


async def check_async(address: str) -> None:
    """`check` for the event loop."""
    if not address_allowed(address):
        raise forbidden()
    verdict = await ratelimit.hit_async(
        f"matrix:{address}", limit=settings.MATRIX_NOTIFY_RATE_LIMIT
    )
    if not verdict.allowed:
        raise rate_limited(verdict.retry_after)
