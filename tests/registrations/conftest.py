"""Every test starts with empty per-address rate-limit windows.

The test client always comes from 127.0.0.1, so the per-address limits of the
unauthenticated endpoints and of failed authentications would otherwise be shared by every
test that runs within the same minute.
"""

import pytest
import redis
from django.conf import settings


def clear_address_windows() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    for pattern in (
        "bouncer:ratelimit:anonymous:*",
        "bouncer:ratelimit:auth_failures:*",
        "bouncer:ratelimit:verify_challenge:*",
    ):
        for key in client.scan_iter(pattern):
            client.delete(key)


@pytest.fixture(autouse=True)
def fresh_address_rate_limits() -> None:
    clear_address_windows()
