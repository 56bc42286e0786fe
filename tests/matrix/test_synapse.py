"""A real homeserver pushing through the bouncer: Synapse (matrix-synapse from PyPI, SQLite,
loopback) with an HTTP pusher whose URL is the bouncer's /_matrix/push/v1/notify, served by
`manage.py serve`; the notification is observed at the fake APNs, and a token Apple calls
Unregistered makes Synapse remove the pusher (the bouncer rejected its pushkey).

Synapse is installed into a virtualenv of its own (never the project's), cached under
~/.cache/bouncer-tests (BOUNCER_SYNAPSE_VENV elsewhere) so that reruns start at once.
"""

import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from django.db import connection

from tests.conftest import wait_until
from tests.fakes.apns import Answer, FakeApns, Received
from tests.matrix.conftest import APNS_APP, APNS_PUSHKEY, APNS_TOKEN_HEX, TOPIC
from tests.services import ROOT, WebServer, free_port, wait_for_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("matrix_apps"),
    pytest.mark.django_db(transaction=True),
    # Installing Synapse on a cold cache takes a while; a warm run, a few tens of seconds.
    pytest.mark.timeout(600),
]

SYNAPSE_VENV = Path(
    os.environ.get("BOUNCER_SYNAPSE_VENV")
    or Path.home() / ".cache" / "bouncer-tests" / "synapse-venv"
)
# Synapse retries a failed push with backoff; a push and a pusher's removal take well under
# this on a quiet machine.
BOUND_SECONDS = 60.0


def _synapse_importable(python: Path) -> bool:
    return (
        python.exists()
        and subprocess.run(
            [str(python), "-c", "import synapse.app.homeserver"], capture_output=True, check=False
        ).returncode
        == 0
    )


def _install_synapse() -> Path | str:
    """The venv's python, or why Synapse could not be installed."""
    python = SYNAPSE_VENV / "bin" / "python"
    if _synapse_importable(python):
        return python
    uv = shutil.which("uv")
    # uv under pyenv resolves the interpreter from the checkout's .python-version: run it there.
    if uv is not None:
        steps = [
            [uv, "venv", "--allow-existing", "--python", sys.executable, str(SYNAPSE_VENV)],
            [uv, "pip", "install", "--python", str(python), "matrix-synapse"],
        ]
    else:
        steps = [
            [sys.executable, "-m", "venv", str(SYNAPSE_VENV)],
            [str(python), "-m", "pip", "install", "--quiet", "matrix-synapse"],
        ]
    for step in steps:
        done = subprocess.run(step, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"{' '.join(step[:3])} failed: {(done.stderr or done.stdout)[-500:]}"
    if not _synapse_importable(python):
        return "matrix-synapse installed but does not import"
    return python


@pytest.fixture(scope="session")
def synapse_python() -> Path:
    found = _install_synapse()
    if isinstance(found, str):
        pytest.skip(f"Synapse cannot be installed here: {found}")
    return found


@dataclass
class User:
    user_id: str
    token: str


@dataclass
class Synapse:
    url: str
    shared_secret: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def call(self, method: str, path: str, user: User | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {user.token}"} if user else {}
        response = httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def register(self, name: str) -> User:
        """A user, through the admin API's shared-secret registration."""
        nonce = self.call("GET", "/_synapse/admin/v1/register")["nonce"]
        password = secrets.token_hex(8)
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join(p.encode() for p in (nonce, name, password, "notadmin")))
        answer = self.call(
            "POST",
            "/_synapse/admin/v1/register",
            json={
                "nonce": nonce,
                "username": name,
                "password": password,
                "admin": False,
                "mac": mac.hexdigest(),
            },
        )
        return User(user_id=answer["user_id"], token=answer["access_token"])

    def pushers(self, user: User) -> list[dict[str, Any]]:
        pushers: list[dict[str, Any]] = self.call("GET", "/_matrix/client/v3/pushers", user)[
            "pushers"
        ]
        return pushers


@pytest.fixture
def synapse(synapse_python: Path, tmp_path: Path) -> Iterator[Synapse]:
    folder = tmp_path / "synapse"
    folder.mkdir()
    config_path = folder / "homeserver.yaml"
    subprocess.run(
        [
            str(synapse_python),
            "-m",
            "synapse.app.homeserver",
            "--server-name",
            "localhost",
            "--config-path",
            str(config_path),
            "--generate-config",
            "--report-stats=no",
        ],
        cwd=folder,
        check=True,
        capture_output=True,
    )
    port = free_port()
    shared_secret = secrets.token_hex(16)
    config = yaml.safe_load(config_path.read_text())
    lots = {"per_second": 1000, "burst_count": 1000}
    config.update(
        listeners=[
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        database={"name": "sqlite3", "args": {"database": str(folder / "homeserver.db")}},
        registration_shared_secret=shared_secret,
        # Synapse refuses to call pushers on loopback unless told it may.
        ip_range_whitelist=["127.0.0.0/8"],
        trusted_key_servers=[],
        suppress_key_server_warning=True,
        rc_message=lots,
        rc_registration=lots,
        rc_login={"address": lots, "account": lots, "failed_attempts": lots},
        rc_joins={"local": lots, "remote": lots},
        rc_invites={"per_room": lots, "per_user": lots, "per_issuer": lots},
    )
    config_path.write_text(yaml.safe_dump(config))
    log_path = folder / "synapse.out"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(synapse_python), "-m", "synapse.app.homeserver", "-c", str(config_path)],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Synapse(
        url=f"http://127.0.0.1:{port}",
        shared_secret=shared_secret,
        process=process,
        log_path=log_path,
    )
    try:
        wait_for_port(port, timeout=60)
        assert wait_until(lambda: _healthy(server.url), timeout=60), log_path.read_text()
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def bouncer(matrix_apps: Path, apns_settings: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """`manage.py serve` with the Matrix apps, on the test database; its URL."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "MATRIX_APPS_FILE": str(matrix_apps),
        "APNS_ENDPOINT": apns_settings["APNS_ENDPOINT"],
        "PUSH_CA_FILE": apns_settings["PUSH_CA_FILE"],
        "MATRIX_NOTIFY_ALLOWED_NETWORKS": "127.0.0.0/8",
        "NOTIFY_WAIT_SECONDS": "10",
    }
    web = WebServer(env=env, log_path=tmp_path / "bouncer.log").start()
    try:
        yield web.url
    finally:
        web.stop()


def _shared_room(synapse: Synapse, alice: User, bob: User) -> str:
    room: str = synapse.call(
        "POST",
        "/_matrix/client/v3/createRoom",
        bob,
        json={"invite": [alice.user_id], "is_direct": True, "preset": "trusted_private_chat"},
    )["room_id"]
    synapse.call("POST", f"/_matrix/client/v3/join/{room}", alice, json={})
    return room


def _set_pusher(synapse: Synapse, user: User, bouncer: str, **data: str) -> None:
    synapse.call(
        "POST",
        "/_matrix/client/v3/pushers/set",
        user,
        json={
            "kind": "http",
            "app_id": APNS_APP,
            "pushkey": APNS_PUSHKEY,
            "app_display_name": "Example",
            "device_display_name": "Alice's phone",
            "lang": "en",
            "data": {"url": f"{bouncer}/_matrix/push/v1/notify", **data},
        },
    )


def _say(synapse: Synapse, user: User, room: str, text: str) -> str:
    event_id: str = synapse.call(
        "PUT",
        f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{uuid.uuid4().hex}",
        user,
        json={"msgtype": "m.text", "body": text},
    )["event_id"]
    return event_id


def _pushed(fake_apns: FakeApns, predicate: Callable[[Received], bool]) -> Received | None:
    found: list[Received] = []

    def seen() -> bool:
        found[:] = [r for r in fake_apns.requests_for(APNS_TOKEN_HEX) if predicate(r)]
        return bool(found)

    wait_until(seen, timeout=BOUND_SECONDS)
    return found[0] if found else None


def _unregistered_removes_the_pusher(
    synapse: Synapse, fake_apns: FakeApns, alice: User, bob: User, room: str
) -> None:
    fake_apns.script(APNS_TOKEN_HEX, Answer(410, "Unregistered"))
    event_id = _say(synapse, bob, room, "Are you still there?")

    assert _pushed(fake_apns, lambda r: r.body.get("event_id") == event_id and r.status == 410)
    assert wait_until(lambda: synapse.pushers(alice) == [], timeout=BOUND_SECONDS), (
        synapse.log_path.read_text()[-3000:]
    )


def test_synapse_pushes_a_message_through_the_bouncer_and_drops_a_dead_pusher(
    synapse: Synapse, bouncer: str, fake_apns: FakeApns
) -> None:
    alice, bob = synapse.register("alice"), synapse.register("bob")
    room = _shared_room(synapse, alice, bob)
    _set_pusher(synapse, alice, bouncer)
    assert [p["pushkey"] for p in synapse.pushers(alice)] == [APNS_PUSHKEY]

    event_id = _say(synapse, bob, room, "Hello Alice")

    received = _pushed(fake_apns, lambda r: r.body.get("event_id") == event_id)
    assert received is not None, Path(synapse.log_path).read_text()[-3000:]
    assert received.status == 200
    assert received.headers["apns-topic"] == TOPIC
    # A one-to-one message notifies with a sound: Synapse sends prio high.
    assert received.headers["apns-priority"] == "10"
    assert received.body == {
        "aps": {
            "alert": {
                "loc-key": "MSG_FROM_USER_WITH_CONTENT",
                "loc-args": ["bob", "Hello Alice"],
            },
            "badge": 1,
        },
        "room_id": room,
        "event_id": event_id,
    }

    _unregistered_removes_the_pusher(synapse, fake_apns, alice, bob, room)


def test_synapse_event_id_only_pushes_only_the_ids(
    synapse: Synapse, bouncer: str, fake_apns: FakeApns
) -> None:
    alice, bob = synapse.register("alice"), synapse.register("bob")
    room = _shared_room(synapse, alice, bob)
    _set_pusher(synapse, alice, bouncer, format="event_id_only")

    event_id = _say(synapse, bob, room, "Hello Alice")

    received = _pushed(fake_apns, lambda r: r.body.get("event_id") == event_id)
    assert received is not None, Path(synapse.log_path).read_text()[-3000:]
    assert received.headers["apns-topic"] == TOPIC
    assert received.headers["apns-priority"] == "10"
    # No sender, no room name, no text: the app fetches the event itself.
    assert received.body == {"room_id": room, "event_id": event_id, "unread_count": 1}
    assert "Hello" not in json.dumps(received.body)

    _unregistered_removes_the_pusher(synapse, fake_apns, alice, bob, room)
