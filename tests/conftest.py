"""Shared fixtures: registered Zulip servers and realms, a client that talks like one, and
the fake APNs and FCM servers with the settings that point the bouncer at them."""

import base64
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from django.db import connection
from django.test import Client
from django.test.client import Client as DjangoClient
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from pytest_django.fixtures import Settings

from bouncer.asgi import DJANGO_THREADS, application
from bouncer.asyncdb import close_database, close_thread_connections
from bouncer.endpoints import ROUTES
from delivery import tasks
from delivery.relay import get_relay
from registrations import keys, lookups, sealing
from registrations.models import RemotePushDevice, RemoteRealm, RemoteZulipServer
from tests.fakes.apns import FakeApns, SigningKey
from tests.fakes.fcm import FakeFcm, ServiceAccount
from tests.fakes.tls import loopback_tls

API = "/api/v1/remotes/"


def basic_auth(role: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{role}:{key}".encode()).decode()


@dataclass
class ZulipServer:
    """A Zulip server as the bouncer sees it: its credentials and a client sending as it does.

    Zulip's PushBouncerSession posts forms (`requests` with `data=dict`, so
    application/x-www-form-urlencoded) and, for notify and deactivate, orjson bodies.
    """

    uuid: str
    key: str
    row: RemoteZulipServer
    client: DjangoClient

    @property
    def auth(self) -> str:
        return basic_auth(self.uuid, self.key)

    def post_form(self, endpoint: str, data: Mapping[str, Any], *, auth: str | None = None) -> Any:
        return self.client.post(
            API + endpoint,
            data=urlencode(data),
            content_type="application/x-www-form-urlencoded",
            HTTP_AUTHORIZATION=auth or self.auth,
            HTTP_USER_AGENT="ZulipServer/12.0",
        )

    def post_json(self, endpoint: str, body: Any, *, auth: str | None = None) -> Any:
        if API + endpoint in ROUTES:
            return call_endpoint(
                "POST", API + endpoint, json.dumps(body).encode(), auth=auth or self.auth
            )
        return self.client.post(
            API + endpoint,
            data=json.dumps(body),
            content_type="application/json",
            HTTP_AUTHORIZATION=auth or self.auth,
            HTTP_USER_AGENT="ZulipServer/12.0",
        )

    def get(self, endpoint: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.client.get(
            API + endpoint,
            data=params or {},
            HTTP_AUTHORIZATION=self.auth,
            HTTP_USER_AGENT="ZulipServer/12.0",
        )

    def add_realm(self, **fields: Any) -> RemoteRealm:
        defaults: dict[str, Any] = {
            "uuid": uuid.uuid4(),
            "remote_id": RemoteRealm.objects.filter(server=self.row).count() + 2,
            "host": f"realm{secrets.token_hex(3)}.{self.row.hostname}",
            "name": "Test realm",
            "date_created": timezone.now(),
        }
        defaults.update(fields)
        return RemoteRealm.objects.create(server=self.row, **defaults)


class EndpointResponse:
    """What an endpoint on the event loop answered, read as tests read Django's responses."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status_code = status
        self.headers = {k.decode().lower(): v.decode() for k, v in headers}
        self.content = body

    def json(self) -> Any:
        return json.loads(self.content)

    def __getitem__(self, name: str) -> str:
        return self.headers[name.lower()]

    def has_header(self, name: str) -> bool:
        return name.lower() in self.headers


def call_endpoint(
    method: str, path: str, body: bytes, *, auth: str | None = None, **extra: str
) -> EndpointResponse:
    """An HTTP request to an endpoint the web server serves on its event loop
    (bouncer/endpoints.py), on this process's loop (the relay's), through its ASGI interface."""
    headers = [(b"user-agent", b"ZulipServer/12.0"), (b"content-length", str(len(body)).encode())]
    if not any(k.lower() == "content-type" for k in extra):
        headers.append((b"content-type", b"application/json"))
    if auth is not None:
        headers.append((b"authorization", auth.encode()))
    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
    }
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    get_relay().run(application.routes[path](scope, receive, send))
    start, *bodies = sent
    return EndpointResponse(
        start["status"], start["headers"], b"".join(m.get("body", b"") for m in bodies)
    )


@pytest.fixture(scope="session", autouse=True)
def _endpoint_connections(django_db_setup: None) -> Iterator[None]:
    """The endpoints' own database connections end before the test database is dropped."""
    yield
    relay = get_relay()
    relay.run(relay.aclose())  # the senders' connections to the fakes, closed, not collected
    relay.run(close_database())
    close_thread_connections()
    # Django's threads inside the ASGI application (the requests the endpoints leave to it).
    close_thread_connections(application.django.executor, DJANGO_THREADS)  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _no_leftover_retries() -> Iterator[None]:
    """A test's in-process retries (no broker) end with it: run later, they would deliver
    to the next test's fakes, or reach the broker once the test's settings are undone."""
    yield
    tasks.cancel_in_process_retries()


@pytest.fixture(autouse=True)
def _fresh_lookups() -> None:
    """Each test sees the database as it made it: no server or realm cached by another."""
    lookups.forget_all()


def wait_until(predicate: Callable[[], object], timeout: float) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass (other processes at work)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def delivered_notifications(metrics_text: str, *, provider: str = "apns") -> float:
    """bouncer_notifications_total{outcome="delivered"} for a provider, from /metrics text."""
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "bouncer_notifications_total" and sample.labels == {
                "provider": provider,
                "outcome": "delivered",
            }:
                return sample.value
    return 0.0


def at_once[T](action: Callable[[], T], *, times: int) -> list[T]:
    """Run `action` in `times` threads released together (each closes its DB connection)."""
    barrier = threading.Barrier(times)
    results: list[T] = []

    def worker() -> None:
        barrier.wait()
        try:
            results.append(action())
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def add_e2ee_devices(realm: RemoteRealm, tokens: Iterable[str]) -> None:
    """APNs E2EE devices as a sealed registration would have stored them."""
    RemotePushDevice.objects.bulk_create(
        (
            RemotePushDevice(
                remote_realm=realm,
                token=t,
                token_kind="apns",
                token_id=sealing.token_id_int(t),
                ios_app_id="org.zulip.Zulip",
            )
            for t in tokens
        ),
        batch_size=5000,
    )


def e2ee_register(
    server: ZulipServer,
    realm: RemoteRealm,
    token: str,
    kind: str = "apns",
    ios_app_id: str = "org.zulip.Zulip",
) -> Any:
    """`push/e2ee/register` for a phone with this token, sealed to the active bouncer key."""
    public = (keys.active_key() or keys.generate_key()).public_key
    payload = {
        "token": token,
        "token_kind": kind,
        "timestamp": int(time.time()),
        "ios_app_id": ios_app_id if kind == "apns" else None,
    }
    return server.post_form(
        "push/e2ee/register",
        {
            "realm_uuid": str(realm.uuid),
            "token_id": sealing.token_id_b64(sealing.token_id_int(token)),
            "encrypted_push_registration": sealing.seal_registration(payload, public),
            "bouncer_public_key": public,
        },
    )


def e2ee_notify(server: ZulipServer, realm: RemoteRealm, tokens: list[str]) -> Any:
    """`push/e2ee/notify` to the APNs devices with these tokens."""
    return server.post_json(
        "push/e2ee/notify",
        {
            "realm_uuid": str(realm.uuid),
            "push_requests": [
                {
                    "token_id": sealing.token_id_b64(sealing.token_id_int(t)),
                    "http_headers": {"apns_priority": 10, "apns_push_type": "alert"},
                    "payload": {"push_key_id": 1, "encrypted_data": "abc"},
                }
                for t in tokens
            ],
        },
    )


def make_server(*, hostname: str | None = None, **fields: Any) -> ZulipServer:
    server_uuid = str(uuid.uuid4())
    key = secrets.token_hex(32)
    row = RemoteZulipServer(
        uuid=server_uuid,
        hostname=hostname or f"zulip-{secrets.token_hex(4)}.example.org",
        contact_email="admin@zulip.example.org",
        last_api_feature_level=483,
        **fields,
    )
    row.set_api_key(key)
    row.save()
    return ZulipServer(uuid=server_uuid, key=key, row=row, client=Client())


@pytest.fixture
def zulip_server(db: None) -> ZulipServer:
    """A registered, active Zulip server."""
    return make_server()


@pytest.fixture
def other_zulip_server(db: None) -> ZulipServer:
    return make_server()


@pytest.fixture
def realm(zulip_server: ZulipServer) -> RemoteRealm:
    """A realm of `zulip_server`, as analytics upload would have created it."""
    return zulip_server.add_realm()


# --- Fake APNs and FCM on loopback, and settings that point the bouncer at them -------------


@pytest.fixture(scope="session")
def apns_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def fake_apns(apns_key: SigningKey) -> Iterator[FakeApns]:
    fake = FakeApns(keys=[apns_key]).start()
    yield fake
    fake.stop()


@pytest.fixture
def apns_settings(
    settings: Settings, fake_apns: FakeApns, apns_key: SigningKey, tmp_path: Path
) -> dict[str, str]:
    """The bouncer's APNs settings for the fake; also returned as environment variables."""
    key_file = tmp_path / "AuthKey.p8"
    key_file.write_text(apns_key.private_pem)
    env = {
        "APNS_TOKEN_KEY_FILE": str(key_file),
        "APNS_TOKEN_KEY_ID": apns_key.key_id,
        "APNS_TEAM_ID": apns_key.team_id,
        "APNS_ENDPOINT": fake_apns.endpoint,
        "PUSH_CA_FILE": str(loopback_tls().ca_file),
    }
    for name, value in env.items():
        setattr(settings, name, value)
    return env


@pytest.fixture(scope="session")
def service_account() -> ServiceAccount:
    return ServiceAccount.generate()


@pytest.fixture
def fake_fcm(service_account: ServiceAccount) -> Iterator[FakeFcm]:
    fake = FakeFcm(account=service_account).start()
    yield fake
    fake.stop()


@pytest.fixture
def fcm_settings(
    settings: Settings, fake_fcm: FakeFcm, service_account: ServiceAccount, tmp_path: Path
) -> dict[str, str]:
    credentials_file = tmp_path / "service-account.json"
    credentials_file.write_text(service_account.file_content(fake_fcm.token_uri))
    env = {
        "FCM_CREDENTIALS_FILE": str(credentials_file),
        "FCM_ENDPOINT": fake_fcm.endpoint,
        "PUSH_CA_FILE": str(loopback_tls().ca_file),
    }
    for name, value in env.items():
        setattr(settings, name, value)
    return env


@pytest.fixture
def in_process_delivery(settings: Settings) -> None:
    """Deliveries run in the test process, as under `make run` (no broker).

    The relay, senders, claims and outcome channel are the production code; only the hop
    through Redis to a worker process is skipped. Tests that need that hop start a real
    worker (tests/delivery/test_worker.py).
    """
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.REDIS_URL = ""
    settings.NOTIFY_WAIT_SECONDS = 5.0


@pytest.fixture
def upstreams(apns_settings: dict[str, str], fcm_settings: dict[str, str]) -> dict[str, str]:
    return {**apns_settings, **fcm_settings}
