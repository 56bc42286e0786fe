"""Registration transfer against a real Zulip-like server on loopback TLS (spec 2.2)."""

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

import pytest
from django.core import signing
from django.test import Client
from pytest_django.fixtures import Settings

from registrations.models import AuditLog, RemoteZulipServer
from registrations.transfer import FETCH_DEADLINE_SECONDS
from tests.conftest import API, ZulipServer, basic_auth, make_server
from tests.fakes.tls import loopback_tls
from tests.services import free_port

pytestmark = pytest.mark.django_db


class FakeZulipServer:
    """Serves GET /api/v1/zulip-services/verify/<token>/ like a Zulip server that prepared it."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.hosts: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                token = self.path.removeprefix("/api/v1/zulip-services/verify/").rstrip("/")
                fake.hosts.append(self.headers.get("Host", ""))
                if token == "redirect":
                    self.send_response(302)
                    self.send_header("Location", "https://127.0.0.2/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if token == "slow":
                    time.sleep(FETCH_DEADLINE_SECONDS + 1)
                if token == "big":
                    raw = b'{"verification_secret": "' + b"A" * 100_000 + b'"}'
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                    return
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
    # The fake host is on loopback, which the bouncer refuses to fetch from by default.
    settings.BOUNCER_TRANSFER_ALLOW_PRIVATE_HOSTS = True
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
    settings.BOUNCER_TRANSFER_ALLOW_PRIVATE_HOSTS = True
    hostname = f"127.0.0.1:{free_port()}"
    make_server(hostname=hostname)
    response = post("server/register/verify_challenge", hostname=hostname, access_token="t")
    assert response.status_code == 400
    # Zulip's words, the same for every connection failure: nothing about the network.
    assert response.json()["msg"] == (
        "Connection error occurred while communicating with the host."
    )


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254"])
def test_private_and_loopback_hosts_are_not_fetched_by_default(db: None, address: str) -> None:
    server = make_server(hostname=f"{address}:8443")
    response = post(
        "server/register/verify_challenge", hostname=f"{address}:8443", access_token="t"
    )
    assert response.status_code == 400
    assert response.json()["msg"] == (
        "Connection error occurred while communicating with the host."
    )
    assert RemoteZulipServer.objects.get(pk=server.row.pk).api_key_matches(server.key)


def test_a_refused_host_gets_the_same_answer_as_an_unreachable_one(
    settings: Settings, db: None
) -> None:
    # Otherwise the endpoint would tell a caller which internal addresses answer.
    make_server(hostname="10.0.0.1")
    refused = post("server/register/verify_challenge", hostname="10.0.0.1", access_token="t")
    settings.BOUNCER_TRANSFER_ALLOW_PRIVATE_HOSTS = True
    hostname = f"127.0.0.1:{free_port()}"
    make_server(hostname=hostname)
    unreachable = post("server/register/verify_challenge", hostname=hostname, access_token="t")
    assert refused.json() == unreachable.json()


def test_the_host_is_asked_by_its_name(zulip_host: FakeZulipServer) -> None:
    make_server(hostname=zulip_host.hostname)
    post("server/register/verify_challenge", hostname=zulip_host.hostname, access_token="nope")
    assert zulip_host.hosts == [zulip_host.hostname]


def test_a_redirect_is_not_followed(zulip_host: FakeZulipServer) -> None:
    make_server(hostname=zulip_host.hostname)
    response = post(
        "server/register/verify_challenge", hostname=zulip_host.hostname, access_token="redirect"
    )
    assert response.status_code == 400
    assert response.json()["msg"] == "Error response received from the host: 302"
    assert len(zulip_host.hosts) == 1


def test_an_oversized_answer_is_refused(zulip_host: FakeZulipServer) -> None:
    server = make_server(hostname=zulip_host.hostname)
    response = post(
        "server/register/verify_challenge", hostname=zulip_host.hostname, access_token="big"
    )
    assert response.status_code == 400
    assert response.json()["msg"] == (
        "Connection error occurred while communicating with the host."
    )
    assert RemoteZulipServer.objects.get(pk=server.row.pk).api_key_matches(server.key)


def test_a_slow_host_meets_one_deadline(zulip_host: FakeZulipServer) -> None:
    make_server(hostname=zulip_host.hostname)
    started = time.monotonic()
    response = post(
        "server/register/verify_challenge", hostname=zulip_host.hostname, access_token="slow"
    )
    assert time.monotonic() - started < FETCH_DEADLINE_SECONDS + 1
    assert response.status_code == 400
    assert response.json()["msg"] == "The request timed out while communicating with the host."


def test_transfer_ignores_deactivated_servers(db: None) -> None:
    make_server(hostname="old.zulip.example.org", deactivated=True)
    response = post("server/register/transfer", hostname="old.zulip.example.org")
    assert response.status_code == 400
    assert response.json()["msg"] == "old.zulip.example.org not yet registered"


def test_a_transfer_goes_to_the_active_server_of_the_hostname(
    zulip_host: FakeZulipServer,
) -> None:
    old = make_server(hostname=zulip_host.hostname, deactivated=True)
    active = make_server(hostname=zulip_host.hostname)
    zulip_host.secrets["t"] = post("server/register/transfer", hostname=zulip_host.hostname).json()[
        "verification_secret"
    ]
    body = post(
        "server/register/verify_challenge", hostname=zulip_host.hostname, access_token="t"
    ).json()
    assert body["zulip_org_id"] == active.uuid
    assert RemoteZulipServer.objects.get(pk=old.row.pk).api_key_matches(old.key)


def test_an_access_token_cannot_change_the_url(zulip_host: FakeZulipServer) -> None:
    make_server(hostname=zulip_host.hostname)
    response = post(
        "server/register/verify_challenge", hostname=zulip_host.hostname, access_token="../../x"
    )
    assert response.status_code == 400
    assert response.json()["msg"] == "Invalid access_token"


def verify_from(address: str, hostname: str) -> int:
    response = Client(REMOTE_ADDR=address).post(
        API + "server/register/verify_challenge",
        data=urlencode({"hostname": hostname, "access_token": "x"}),
        content_type="application/x-www-form-urlencoded",
    )
    return int(response.status_code)


def test_verify_challenge_is_rate_limited_per_address(
    zulip_host: FakeZulipServer, settings: Settings
) -> None:
    settings.BOUNCER_VERIFY_RATE_LIMIT = (3, 60)
    make_server(hostname=zulip_host.hostname)
    other = make_server(hostname="other.zulip.example.org")
    statuses = [verify_from("203.0.113.7", zulip_host.hostname) for _ in range(3)]
    assert 429 not in statuses
    # The same address is refused for any hostname; another address is not.
    assert verify_from("203.0.113.7", other.row.hostname) == 429
    assert verify_from("203.0.113.8", other.row.hostname) != 429


def test_verify_challenge_is_rate_limited_per_hostname(
    zulip_host: FakeZulipServer, settings: Settings
) -> None:
    settings.BOUNCER_VERIFY_RATE_LIMIT = (3, 60)
    make_server(hostname=zulip_host.hostname)
    statuses = [verify_from(f"203.0.113.{i}", zulip_host.hostname) for i in range(4)]
    assert statuses[:3] == [400, 400, 400]
    assert statuses[3] == 429


def test_the_unauthenticated_endpoints_are_limited_per_address(
    db: None, settings: Settings
) -> None:
    settings.BOUNCER_ANONYMOUS_RATE_LIMIT = (4, 60)
    hosts = ["a.zulip.example.org", "b.zulip.example.org"]

    def transfer_from(address: str, hostname: str) -> int:
        response = Client(REMOTE_ADDR=address).post(
            API + "server/register/transfer",
            data=urlencode({"hostname": hostname}),
            content_type="application/x-www-form-urlencoded",
        )
        return int(response.status_code)

    assert [transfer_from("203.0.113.9", h) for h in hosts * 2] == [400] * 4
    assert transfer_from("203.0.113.9", hosts[0]) == 429
    assert transfer_from("203.0.113.10", hosts[0]) == 400


def test_behind_the_proxy_the_address_is_nginxs_last_forwarded_entry(
    db: None, settings: Settings
) -> None:
    settings.BOUNCER_ANONYMOUS_RATE_LIMIT = (2, 60)
    settings.BOUNCER_BEHIND_PROXY = True

    def transfer(forwarded_for: str) -> int:
        response = Client(REMOTE_ADDR="127.0.0.1").post(
            API + "server/register/transfer",
            data=urlencode({"hostname": "a.zulip.example.org"}),
            content_type="application/x-www-form-urlencoded",
            HTTP_X_FORWARDED_FOR=forwarded_for,
        )
        return int(response.status_code)

    # A client cannot escape its limit by claiming other addresses before its own.
    assert [transfer(f"10.9.9.{i}, 198.51.100.1") for i in range(3)] == [400, 400, 429]
    assert transfer("198.51.100.2") == 400


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
