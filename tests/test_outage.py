"""A dependency outage seen from a Zulip server: the production web process (manage.py
serve) answers 503 in Zulip's envelope while the broker or the database is
down, and recovers by itself when it is back."""

import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from django.db import connection

from registrations import sealing
from registrations.models import RemotePushDevice
from tests.conftest import make_server
from tests.fakes.apns import Answer, FakeApns, SigningKey
from tests.fakes.tls import loopback_tls
from tests.services import ROOT, PostgresCluster, RedisServer, WebServer
from tests.zulip_server_side import INTERNAL_SERVER_ERROR_ON_BOUNCER, e2ee_test_notification_result

TOKEN = "c0ffee" * 10 + "abcd"


@pytest.mark.django_db(transaction=True)
def test_broker_down_is_a_503_when_a_retry_is_needed_and_the_web_recovers_without_a_restart(
    tmp_path: Path,
) -> None:
    """The broker carries only retries: without it a notify Apple accepts still succeeds,
    and one that needs a retry is refused with a 503 so the Zulip server sends it again."""
    server = make_server()
    realm = server.add_realm()
    RemotePushDevice.objects.create(
        remote_realm=realm,
        token=TOKEN,
        token_kind="apns",
        token_id=sealing.token_id_int(TOKEN),
        ios_app_id="org.zulip.Zulip",
    )
    apns_key = SigningKey.generate()
    key_file = tmp_path / "AuthKey.p8"
    key_file.write_text(apns_key.private_pem)
    apns = FakeApns(keys=[apns_key]).start()
    broker = RedisServer()
    broker.start()
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": broker.url,
        "NOTIFY_WAIT_SECONDS": "0.3",
        "APNS_TOKEN_KEY_FILE": str(key_file),
        "APNS_TOKEN_KEY_ID": apns_key.key_id,
        "APNS_TEAM_ID": apns_key.team_id,
        "APNS_ENDPOINT": apns.endpoint,
        "PUSH_CA_FILE": str(loopback_tls().ca_file),
    }
    web = WebServer(env=env, log_path=tmp_path / "web.log")
    body = {
        "realm_uuid": str(realm.uuid),
        "push_requests": [
            {
                "token_id": sealing.token_id_b64(sealing.token_id_int(TOKEN)),
                "http_headers": {"apns_priority": 10, "apns_push_type": "alert"},
                "payload": {"push_key_id": 1, "encrypted_data": "abc"},
            }
        ],
    }
    url = f"{web.url}/api/v1/remotes/push/e2ee/notify"

    def notify() -> httpx.Response:
        return httpx.post(url, json=body, auth=(server.uuid, server.key), timeout=10)

    try:
        web.start()
        assert notify().json()["apple_successfully_sent_count"] == 1
        broker.stop()
        # Nothing to retry: the broker is not needed.
        delivered = notify()
        assert delivered.status_code == 200, delivered.text
        assert delivered.json()["apple_successfully_sent_count"] == 1
        # Apple asks for a retry, which cannot be queued.
        apns.script(TOKEN, Answer(503, "ServiceUnavailable"))
        down = notify()
        assert down.status_code == 503, down.text
        assert down.json()["code"] == "SERVICE_UNAVAILABLE"
        assert down.headers["Retry-After"] == "10"
        assert (
            e2ee_test_notification_result(status=503, body=down.json(), requested_token_ids=[])
            == INTERNAL_SERVER_ERROR_ON_BOUNCER
        )
        assert "Broker unreachable, retries of batch" in web.log()
        ready = httpx.get(f"{web.url}/ready", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["failed"] == ["broker unavailable"]
        broker.start()  # same port: the web process reconnects by itself
        apns.script(TOKEN, Answer(503, "ServiceUnavailable"))
        up = notify()
        assert up.status_code == 200, up.text
        assert up.json()["apple_successfully_sent_count"] == 0  # queued for a retry
    finally:
        web.stop()
        broker.stop()
        apns.stop()


def test_database_down_is_a_503_and_the_web_recovers_without_a_restart(tmp_path: Path) -> None:
    database = PostgresCluster()
    database.start()
    env = {**os.environ, "DATABASE_URL": database.url}
    web = WebServer(env=env, log_path=tmp_path / "web.log")
    try:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=120,
        )
        web.start()
        base = f"{web.url}/api/v1/remotes/"
        org_id, org_key = str(uuid.uuid4()), secrets.token_hex(32)
        registered = httpx.post(
            base + "server/register",
            data={
                "zulip_org_id": org_id,
                "zulip_org_key": org_key,
                "hostname": "chat.example.org",
                "contact_email": "admin@example.org",
            },
            timeout=10,
        )
        assert registered.status_code == 200, registered.text
        status_url = base + "server/analytics/status"
        assert httpx.get(status_url, auth=(org_id, org_key), timeout=10).status_code == 200

        database.halt()
        down = httpx.get(status_url, auth=(org_id, org_key), timeout=10)
        assert down.status_code == 503, down.text
        assert down.json() == {
            "result": "error",
            "msg": "Push notification service temporarily unavailable, retry later",
            "code": "SERVICE_UNAVAILABLE",
        }
        assert down.headers["Retry-After"] == "10"
        ready = httpx.get(f"{web.url}/ready", timeout=10)
        assert ready.status_code == 503
        assert "database unavailable" in ready.json()["failed"]

        database.resume()
        # The first request after the restart may still meet the dead connection; Django's
        # health check replaces it, so the service recovers within a request or two.
        answers = [httpx.get(status_url, auth=(org_id, org_key), timeout=10) for _ in range(3)]
        assert answers[-1].status_code == 200, [a.text for a in answers]
        assert all(a.status_code in (200, 503) for a in answers)
    finally:
        web.stop()
        database.stop()
