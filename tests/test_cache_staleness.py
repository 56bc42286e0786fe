"""Servers, realms and E2EE devices are cached in each web process; a change made anywhere
reaches every process within BOUNCER_CACHE_SECONDS (here: web servers sharing one database
with this test, which changes rows as another process would)."""

import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from django.db import connection

from delivery.types import Delivery
from registrations import services
from registrations.models import RemotePushDevice
from registrations.notify import expire_dead
from tests.conftest import add_e2ee_devices, make_server
from tests.delivery.test_notify_e2ee import apns_item, tid
from tests.fakes.apns import FakeApns
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


def web_env(**extra: str) -> dict[str, str]:
    db = connection.settings_dict
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "BOUNCER_CACHE_SECONDS": str(CACHE_SECONDS),
        **extra,
    }


@pytest.mark.django_db(transaction=True)
def test_a_deactivation_and_a_key_change_reach_the_other_process(tmp_path: Path) -> None:
    server = make_server()
    realm = server.add_realm()
    env = web_env()
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


@pytest.mark.django_db(transaction=True)
def test_a_device_expired_elsewhere_is_no_longer_sent_to(
    tmp_path: Path, apns_settings: dict[str, str], fake_apns: FakeApns
) -> None:
    server = make_server()
    realm = server.add_realm()
    token = "d1" * 32
    add_e2ee_devices(realm, [token])
    web = WebServer(env=web_env(**apns_settings), log_path=tmp_path / "web.log").start()

    def notify() -> dict[str, object]:
        answer = httpx.post(
            f"{web.url}/api/v1/remotes/push/e2ee/notify",
            json={"realm_uuid": str(realm.uuid), "push_requests": [apns_item(token)]},
            auth=(server.uuid, server.key),
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    try:
        assert notify()["apple_successfully_sent_count"] == 1  # the device is cached now
        assert notify()["apple_successfully_sent_count"] == 1
        # Expired outside the web process, as a worker does on a dead-token answer.
        row = RemotePushDevice.objects.get(remote_realm=realm, token=token)
        expire_dead(
            [
                Delivery.apns(
                    index=0,
                    device_id=row.device_id,
                    token=token,
                    app_id="org.zulip.Zulip",
                    body="{}",
                    priority=10,
                    push_type="alert",
                    expiration=None,
                )
            ]
        )
        assert first_time(lambda: notify()["delete_token_ids"] == [tid(token)]) is not None
        sent = len(fake_apns.requests_for(token))
        again = notify()
        assert again["apple_successfully_sent_count"] == 0
        assert again["delete_token_ids"] == [tid(token)]
        assert len(fake_apns.requests_for(token)) == sent
    finally:
        web.stop()
