"""Registration transfer against a real Zulip-like server on loopback TLS (spec 2.2)."""

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
from django.conf import settings as django_settings
from django.core import signing
from django.test import Client
from pytest_django.fixtures import Settings

from registrations.models import AuditLog, RemoteZulipServer
from tests.conftest import API, ZulipServer, basic_auth, make_server
from tests.fakes.tls import loopback_tls
from tests.services import free_port

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_verify_rate_limit() -> None:
    """verify_challenge's limit is global; each test starts with an empty window."""
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    for key in client.scan_iter("bouncer:ratelimit:verify_challenge:*"):
        client.delete(key)


class FakeZulipServer:
    """Serves GET /api/v1/zulip-services/verify/<token>/ like a Zulip server that prepared it."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                token = self.path.removeprefix("/api/v1/zulip-services/verify/").rstrip("/")
                if token in fake.secrets:
                    status, body = (
                        200,
                        {
                            "result": "success",
                            "msg": "",
                            "verification_secret": fake.secrets[token],
                        },
                    )
                else:
                    status, body = (
                        400,
                        {
                            "result": "error",
                            "msg": "Verification secret not prepared",
                            "code": "REMOTE_SERVER_VERIFICATION_SECRET_NOT_PREPARED",
                        },
                    )
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = (
            loopback_tls().server_context().wrap_socket(self.httpd.socket, server_side=True)
        )
        self.hostname = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def zulip_host(settings: Settings) -> Iterator[FakeZulipServer]:
    settings.PUSH_CA_FILE = str(loopback_tls().ca_file)
    fake = FakeZulipServer()
    yield fake
    fake.stop()


def post(endpoint: str, **params: str) -> Any:
    return Client().post(
        API + endpoint, data=urlencode(params), content_type="application/x-www-form-urlencoded"
    )


def test_a_transfer_gives_the_server_a_new_key(zulip_host: FakeZulipServer) -> None:
    old = make_server(hostname=zulip_host.hostname)
    prepared = post("server/register/transfer", hostname=zulip_host.hostname)
    assert prepared.status_code == 200
    secret = prepared.json()["verification_secret"]
    assert secret == secret.upper()
    zulip_host.secrets["token123"] = secret

    response = post(
        "server/register/verify_challenge", hostname=zulip_host.hostname, access_token="token123"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["zulip_org_id"] == old.uuid
    new_key = body["zulip_org_key"]
    assert len(new_key) == 64
    row = RemoteZulipServer.objects.get(pk=old.row.pk)
    assert row.api_key_matches(new_key)
    assert not row.api_key_matches(old.key)
    assert AuditLog.objects.filter(
        server=row, event_type="remote_server_registration_transferred"
    ).exists()
    # The new key authenticates; the old one no longer does.
    client = Client()
    ok = client.get(
        API + "server/analytics/status", HTTP_AUTHORIZATION=basic_auth(old.uuid, new_key)
    )
    assert ok.status_code == 200
    stale = client.get(API + "server/analytics/status", HTTP_AUTHORIZATION=old.auth)
    assert stale.status_code == 401


def test_transfer_of_an_unknown_hostname_is_refused(db: None) -> None:
    response = post("server/register/transfer", hostname="unknown.zulip.example.org")
    assert response.status_code == 400
    assert response.json()["msg"] == "unknown.zulip.example.org not yet registered"


def test_a_host_without_a_prepared_secret_is_reported(zulip_host: FakeZulipServer) -> None:
    make_server(hostname=zulip_host.hostname)
    response = post(
        "server/register/verify_challenge", hostname=zulip_host.hostname, access_token="nope"
    )
    assert response.status_code == 400
    assert response.json()["msg"] == "The host reported it has no verification secret."


def test_a_secret_for_another_hostname_is_refused(zulip_host: FakeZulipServer) -> None:
    server = make_server(hostname=zulip_host.hostname)
    make_server(hostname="other.zulip.example.org")
    zulip_host.secrets["t"] = post(
        "server/register/transfer", hostname="other.zulip.example.org"
    ).json()["verification_secret"]
    response = post(
        "server/register/verify_challenge", hostname=zulip_host.hostname, access_token="t"
    )
    assert response.json()["msg"] == "The verification secret is for a different hostname"
    assert RemoteZulipServer.objects.get(pk=server.row.pk).api_key_matches(server.key)


def test_an_expired_secret_is_refused(zulip_host: FakeZulipServer) -> None:
    make_server(hostname=zulip_host.hostname)
    # Signed 60 s ago: past the 10 s a secret lives.
    signer = signing.TimestampSigner(salt="remote_server_transfer")
    stale_value = f"{zulip_host.hostname}:{signing.b62_encode(int(time.time()) - 60)}"
    zulip_host.secrets["t"] = (
        f"{stale_value}:{signer.signature(stale_value)}".encode().hex().upper()
    )
    response = post(
        "server/register/verify_challenge", hostname=zulip_host.hostname, access_token="t"
    )
    assert response.json()["msg"] == "The verification secret has expired"


def test_a_forged_or_malformed_secret_is_refused(zulip_host: FakeZulipServer) -> None:
    make_server(hostname=zulip_host.hostname)
    zulip_host.secrets["forged"] = f"{zulip_host.hostname}:abc:def".encode().hex().upper()
    zulip_host.secrets["junk"] = "not hex at all"
    forged = post(
        "server/register/verify_challenge", hostname=zulip_host.hostname, access_token="forged"
    )
    assert forged.json()["msg"] == "The verification secret is invalid"
    junk = post(
        "server/register/verify_challenge", hostname=zulip_host.hostname, access_token="junk"
    )
    assert junk.json()["msg"] == "The verification secret is malformed"


def test_an_unreachable_host_is_a_clear_400(settings: Settings, db: None) -> None:
    hostname = f"127.0.0.1:{free_port()}"
    make_server(hostname=hostname)
    response = post("server/register/verify_challenge", hostname=hostname, access_token="t")
    assert response.status_code == 400
    assert response.json()["msg"].startswith(f"Error connecting to {hostname}")


def test_an_access_token_cannot_change_the_url(zulip_host: FakeZulipServer) -> None:
    make_server(hostname=zulip_host.hostname)
    response = post(
        "server/register/verify_challenge", hostname=zulip_host.hostname, access_token="../../x"
    )
    assert response.status_code == 400
    assert response.json()["msg"] == "Invalid access_token"


def test_verify_challenge_is_rate_limited_globally(zulip_host: FakeZulipServer) -> None:
    make_server(hostname=zulip_host.hostname)
    statuses = [
        post(
            "server/register/verify_challenge", hostname=zulip_host.hostname, access_token="x"
        ).status_code
        for _ in range(12)
    ]
    assert 429 in statuses


def test_registration_of_a_transferred_server_uses_the_new_key(zulip_host: FakeZulipServer) -> None:
    server: ZulipServer = make_server(hostname=zulip_host.hostname)
    zulip_host.secrets["t"] = post("server/register/transfer", hostname=zulip_host.hostname).json()[
        "verification_secret"
    ]
    new_key = post(
        "server/register/verify_challenge", hostname=zulip_host.hostname, access_token="t"
    ).json()["zulip_org_key"]
    again = post(
        "server/register",
        zulip_org_id=server.uuid,
        zulip_org_key=new_key,
        hostname=zulip_host.hostname,
        contact_email="admin@zulip.example.org",
    )
    assert again.json() == {"result": "success", "msg": "", "created": False}
