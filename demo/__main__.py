"""`python -m demo --addr HOST:PORT` (`make demo`): see the bouncer work without credentials.

It starts the fake APNs and FCM servers of the test suite (tests/fakes/: real HTTP/2 over TLS
on loopback, checking the provider tokens), points the bouncer at them, serves the bouncer with
`manage.py serve` on the embedded SQLite database (as `make run` does), and plays a Zulip
server: it registers, uploads analytics (its realm), registers sealed E2EE devices and legacy
tokens, then notifies every few seconds. Some deliveries are answered "token dead" (410 /
UNREGISTERED) and some "unavailable" (503, retried by the bouncer), so every outcome shows in
the admin and /metrics within a minute.

No real provider can be reached: every APNs/FCM/Matrix credential and endpoint variable from
the environment is dropped, and the ones the bouncer gets name the fakes on 127.0.0.1 only
(checked before the bouncer starts).
"""

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import httpx

from registrations import sealing
from tests.fakes.apns import Answer, FakeApns, SigningKey
from tests.fakes.fcm import FakeFcm, FcmAnswer, ServiceAccount
from tests.fakes.tls import loopback_tls
from tests.services import wait_for_port
from tests.zulip_client import analytics_form

ROOT = Path(__file__).resolve().parent.parent
ROUND_SECONDS = 3
# Every so many rounds a new phone registers whose token the provider then reports dead, and
# a delivery is answered 503 once (the bouncer retries it in the background).
DEAD_TOKEN_EVERY = 4
UNAVAILABLE_EVERY = 3
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# RUN_ADDR may listen on every interface; the demo itself talks to it over loopback.
ANY_INTERFACE = "0.0.0.0"  # noqa: S104 - only recognised in --addr, never bound here

# Anything that could point the bouncer at a real provider, dropped from the environment.
PROVIDER_VARIABLES = {
    "APNS_TOKEN_KEY_FILE",
    "APNS_TOKEN_KEY_ID",
    "APNS_TEAM_ID",
    "APNS_CERT_FILE",
    "APNS_SANDBOX",
    "APNS_ENDPOINT",
    "FCM_CREDENTIALS_FILE",
    "ANDROID_FCM_CREDENTIALS_PATH",
    "FCM_ENDPOINT",
    "PUSH_APPS_FILE",
    "MATRIX_APPS_FILE",
    "PUSH_CA_FILE",
    "CELERY_BROKER_URL",
    "DATABASE_URL",
}


@dataclass
class DemoServer:
    """The simulated Zulip server's identity, kept in var/demo/ so that a second `make demo`
    is the same server coming back (idempotent registration), not a new one."""

    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    key: str = field(default_factory=lambda: secrets.token_hex(32))
    realm_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    apns_tokens: list[str] = field(
        default_factory=lambda: [secrets.token_hex(32) for _ in range(3)]
    )
    fcm_tokens: list[str] = field(
        default_factory=lambda: [f"fcm-demo-{secrets.token_hex(16)}" for _ in range(2)]
    )
    legacy_apns: str = field(default_factory=lambda: secrets.token_hex(32))
    legacy_fcm: str = field(default_factory=lambda: f"fcm-legacy-{secrets.token_hex(16)}")

    @classmethod
    def load(cls, path: Path) -> "DemoServer":
        if path.exists():
            return cls(**json.loads(path.read_text()))
        server = cls()
        path.write_text(json.dumps(asdict(server), indent=2))
        return server


class ZulipSimulation:
    """A Zulip server's side of the protocol, over HTTP, as tests/zulip_client.py sends it."""

    def __init__(self, base_url: str, identity: DemoServer, apns: FakeApns, fcm: FakeFcm) -> None:
        self.api = f"{base_url}/api/v1/remotes/"
        self.me = identity
        self.apns = apns
        self.fcm = fcm
        self.http = httpx.Client(auth=(identity.uuid, identity.key), timeout=30)
        self.public_key = ""
        self.round = 0

    def post(self, endpoint: str, **kwargs: Any) -> dict[str, Any]:
        answer = self.http.post(self.api + endpoint, **kwargs)
        if answer.status_code != 200:
            print(f"demo: {endpoint} answered {answer.status_code}: {answer.text}", flush=True)
        return dict(answer.json()) if answer.content else {}

    def onboard(self, public_key: str) -> None:
        self.public_key = public_key
        self.post(
            "server/register",
            data={
                "zulip_org_id": self.me.uuid,
                "zulip_org_key": self.me.key,
                "hostname": "chat.demo.example",
                "contact_email": "admin@demo.example",
            },
        )
        self.post("server/analytics", data=analytics_form(self.me.realm_uuid))
        for token in self.me.apns_tokens:
            self.register_e2ee(token, "apns")
        for token in self.me.fcm_tokens:
            self.register_e2ee(token, "fcm")
        for token, kind in ((self.me.legacy_apns, "1"), (self.me.legacy_fcm, "2")):
            self.post(
                "push/register",
                data={
                    "user_uuid": "1e8f2d5a-7bd1-4bb1-9a33-0a4f8e3c2a11",
                    "token": token,
                    "token_kind": kind,
                    **({"ios_app_id": "org.zulip.Zulip"} if kind == "1" else {}),
                },
            )

    def register_e2ee(self, token: str, kind: str) -> None:
        registration: dict[str, object] = {
            "token": token,
            "token_kind": kind,
            "ios_app_id": "org.zulip.Zulip" if kind == "apns" else None,
            "timestamp": int(time.time()),
        }
        self.post(
            "push/e2ee/register",
            data={
                "realm_uuid": self.me.realm_uuid,
                "token_id": sealing.token_id_b64(sealing.token_id_int(token)),
                "encrypted_push_registration": sealing.seal_registration(
                    registration, self.public_key
                ),
                "bouncer_public_key": self.public_key,
            },
        )

    def play_round(self) -> str:
        self.round += 1
        tokens = [*self.me.apns_tokens, *self.me.fcm_tokens]
        if self.round % DEAD_TOKEN_EVERY == 0:
            # A phone that registers, then is uninstalled: Apple reports its token dead.
            dead = secrets.token_hex(32)
            self.register_e2ee(dead, "apns")
            self.apns.script(dead, Answer(410, "Unregistered", timestamp=int(time.time())))
            tokens.append(dead)
        if self.round % UNAVAILABLE_EVERY == 0:
            self.apns.script(self.me.apns_tokens[0], Answer(503, "ServiceUnavailable"))
            self.fcm.script(self.me.fcm_tokens[0], FcmAnswer(error="UNAVAILABLE"))
        e2ee = self.post(
            "push/e2ee/notify",
            json={
                "realm_uuid": self.me.realm_uuid,
                "push_requests": [
                    {
                        "token_id": sealing.token_id_b64(sealing.token_id_int(t)),
                        "http_headers": {"apns_priority": 10, "apns_push_type": "alert"},
                        "payload": {"push_key_id": 1, "encrypted_data": "ZGVtbw=="},
                    }
                    if not t.startswith("fcm-")
                    else {
                        "token_id": sealing.token_id_b64(sealing.token_id_int(t)),
                        "fcm_priority": "high",
                        "payload": {"push_key_id": 1, "encrypted_data": "ZGVtbw=="},
                    }
                    for t in tokens
                ],
            },
        )
        legacy = self.post(
            "push/notify",
            json={
                "user_uuid": "1e8f2d5a-7bd1-4bb1-9a33-0a4f8e3c2a11",
                "apns_payload": {"alert": {"title": "Demo", "body": "hello"}, "badge": 0},
                "gcm_payload": {"event": "message", "content": "hello"},
                "gcm_options": {"priority": "high"},
                "apple_devices": [self.me.legacy_apns],
                "android_devices": [self.me.legacy_fcm],
            },
        )
        return (
            f"round {self.round}: e2ee sent apple={e2ee.get('apple_successfully_sent_count')} "
            f"android={e2ee.get('android_successfully_sent_count')}, "
            f"dead={len(e2ee.get('delete_token_ids', []))}; legacy "
            f"total={legacy.get('total_android_devices', 0) + legacy.get('total_apple_devices', 0)}"
        )


def bouncer_environment(
    var_dir: Path, apns: FakeApns, key: SigningKey, fcm_file: Path
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARIABLES}
    key_file = var_dir / "AuthKey_demo.p8"
    key_file.write_text(key.private_pem)
    key_file.chmod(0o600)
    env.update(
        BOUNCER_LOCAL_SECRETS="true",
        PYTHONUNBUFFERED="1",
        APNS_TOKEN_KEY_FILE=str(key_file),
        APNS_TOKEN_KEY_ID=key.key_id,
        APNS_TEAM_ID=key.team_id,
        APNS_ENDPOINT=apns.endpoint,
        FCM_CREDENTIALS_FILE=str(fcm_file),
        PUSH_CA_FILE=str(loopback_tls().ca_file),
    )
    return env


def only_loopback(env: dict[str, str], fcm_file: Path) -> None:
    """Refuse to start unless every provider address the bouncer will use is on loopback."""
    addresses = [
        env["APNS_ENDPOINT"],
        env["FCM_ENDPOINT"],
        json.loads(fcm_file.read_text())["token_uri"],
    ]
    for address in addresses:
        host = urlsplit(address).hostname
        if host not in LOOPBACK:
            raise SystemExit(f"demo: refusing to start, {address} is not on loopback")


def manage(command: list[str], env: dict[str, str], *, capture: bool = False) -> str:
    done = subprocess.run(  # noqa: S603 - this interpreter and manage.py, fixed arguments
        [sys.executable, "manage.py", *command],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=capture,
        text=True,
    )
    return done.stdout or ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--addr", default="127.0.0.1:8000")
    args = parser.parse_args()
    var_dir = Path(os.environ.get("BOUNCER_VAR_DIR", ROOT / "var")) / "demo"
    var_dir.mkdir(parents=True, exist_ok=True)
    # One CA for the fakes' certificates, which the bouncer trusts through PUSH_CA_FILE.
    os.environ["FAKE_TLS_DIR"] = str(var_dir / "tls")

    key = SigningKey.generate()
    apns = FakeApns(keys=[key], latency_ms=(10, 60)).start()
    account = ServiceAccount.generate()
    fcm = FakeFcm(account=account, latency_ms=(10, 60)).start()
    fcm_file = var_dir / "fcm-service-account.json"
    fcm_file.write_text(account.file_content(fcm.token_uri))
    fcm_file.chmod(0o600)
    env = bouncer_environment(var_dir, apns, key, fcm_file)
    env["FCM_ENDPOINT"] = fcm.endpoint
    only_loopback(env, fcm_file)

    host, _, port = args.addr.rpartition(":")
    base = f"http://{'127.0.0.1' if host in (ANY_INTERFACE, '') else host}:{port}"
    for command in (
        ["migrate", "--no-input", "-v", "0"],
        ["collectstatic", "--no-input", "-v", "0"],
        ["first_run", "--url", base],
    ):
        manage(command, env)
    listing = manage(["bouncer_keys", "list", "--json"], env, capture=True)
    public_key = next(k["public_key"] for k in json.loads(listing) if k["state"] == "active")
    print(f"demo: fake APNs at {apns.endpoint}, fake FCM at {fcm.endpoint}", flush=True)

    web = subprocess.Popen(  # noqa: S603 - this interpreter and manage.py, fixed arguments
        [sys.executable, "manage.py", "serve", "--bind", args.addr, "--workers", "1"],
        cwd=ROOT,
        env=env,
    )
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        wait_for_port(int(port), timeout=60)
        zulip = ZulipSimulation(base, DemoServer.load(var_dir / "zulip-server.json"), apns, fcm)
        zulip.onboard(public_key)
        print(
            f"demo: a simulated Zulip server (chat.demo.example) notifies every {ROUND_SECONDS} s;"
            f" watch {base}/admin/overview/ and {base}/metrics. Ctrl-C stops.",
            flush=True,
        )
        while not stopping and web.poll() is None:
            print(f"demo: {zulip.play_round()}", flush=True)
            deadline = time.monotonic() + ROUND_SECONDS
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        if web.poll() is None:
            web.send_signal(signal.SIGTERM)
            web.wait(timeout=30)
        apns.stop()
        fcm.stop()


if __name__ == "__main__":
    main()
