"""Servers are cached in each web process; a change made anywhere reaches every process
within BOUNCER_CACHE_SECONDS (here: two web servers sharing one database)."""

import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from django.db import connection

from registrations import services
from tests.conftest import make_server
from tests.services import WebServer

CACHE_SECONDS = 1.0
# The promise is "within BOUNCER_CACHE_SECONDS"; the margin is for a busy machine.
BOUND = CACHE_SECONDS + 5.0


def first_time(predicate: Callable[[], bool]) -> float | None:
    """Seconds until `predicate` first holds, polling; None if not within BOUND."""
    started = time.monotonic()
    while time.monotonic() - started < BOUND:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


@pytest.mark.django_db(transaction=True)
def test_a_deactivation_and_a_key_change_reach_the_other_process(tmp_path: Path) -> None:
    server = make_server()
    realm = server.add_realm()
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "BOUNCER_CACHE_SECONDS": str(CACHE_SECONDS),
    }
    first = WebServer(env=env, log_path=tmp_path / "first.log").start()
    second = WebServer(env=env, log_path=tmp_path / "second.log").start()
    body = {"realm_uuid": str(realm.uuid), "push_requests": []}

    def notify(web: WebServer, key: str) -> int:
        return httpx.post(
            f"{web.url}/api/v1/remotes/push/e2ee/notify",
            json=body,
            auth=(server.uuid, key),
            timeout=10,
        ).status_code

    try:
        assert notify(second, server.key) == 200  # cached in the second process now
        new_key = "n" * 64
        changed = httpx.post(
            f"{first.url}/api/v1/remotes/server/register",
            data={
                "zulip_org_id": server.uuid,
                "zulip_org_key": server.key,
                "new_org_key": new_key,
                "hostname": server.row.hostname,
                "contact_email": "admin@zulip.example.org",
            },
            timeout=10,
        )
        assert changed.status_code == 200, changed.text
        assert first_time(lambda: notify(second, new_key) == 200) is not None
        assert notify(second, server.key) == 401

        deactivated = httpx.post(
            f"{first.url}/api/v1/remotes/server/deactivate", auth=(server.uuid, new_key), timeout=10
        )
        assert deactivated.status_code == 200, deactivated.text
        assert first_time(lambda: notify(second, new_key) == 401) is not None

        # An operator's change (the admin and the commands call the same service).
        server.row.refresh_from_db()
        services.reactivate_server(server=server.row)
        assert first_time(lambda: notify(second, new_key) == 200) is not None
    finally:
        first.stop()
        second.stop()
