"""deploy/ as an operator uses it: install.sh, then the processes exactly as the systemd units
start them, against PostgreSQL and Redis, a Zulip server's whole journey, and SIGTERM.

The units are read from deploy/systemd/ and run with /opt/bouncer, /run/bouncer and
/var/lib/bouncer moved into a temporary directory; nothing else about them changes.
"""

import base64
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trustme

from tests.conftest import delivered_notifications, wait_until
from tests.fakes.apns import Answer, FakeApns, SigningKey
from tests.fakes.tls import loopback_tls
from tests.services import RedisServer, free_port, wait_for_port
from tests.zulip_client import ZulipServerClient

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
SKIP_COPY = {".git", ".venv", ".uv", "var", "static", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


@dataclass
class Unit:
    """One systemd service file, run here as systemd would run it."""

    name: str
    pre: list[list[str]]
    start: list[list[str]]
    environment: dict[str, str]
    working_directory: str
    hostname: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _log: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, name: str, *, paths: dict[str, str], hostname: str = "node1") -> "Unit":
        text = (UNITS / f"{name}.service").read_text()
        for old, new in paths.items():
            text = text.replace(old, new)
        text = text.replace("%H", hostname).replace("%%", "%")
        values: dict[str, list[str]] = {}
        for line in text.splitlines():
            if "=" in line and not line.startswith(("#", "[")):
                key, _, value = line.partition("=")
                values.setdefault(key.strip(), []).append(value.strip())
        environment = dict(v.split("=", 1) for v in values.get("Environment", []))
        return cls(
            name=name,
            pre=[v.split() for v in values.get("ExecStartPre", [])],
            start=[v.split() for v in values.get("ExecStart", [])],
            environment=environment,
            working_directory=values["WorkingDirectory"][0],
            hostname=hostname,
        )

    def _run(self, command: list[str], env: dict[str, str], *, timeout: float) -> str:
        """One ExecStart/ExecStartPre line, as systemd runs it: a failure stops the unit."""
        done = subprocess.run(
            command,
            cwd=self.working_directory,
            env={**env, **self.environment},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{self.name}: {command} failed:\n{output}"
        return output

    def run_oneshot(self, env: dict[str, str]) -> str:
        return "".join(self._run(c, env, timeout=120) for c in [*self.pre, *self.start])

    def start_service(self, env: dict[str, str], log_dir: Path, *, tag: str = "") -> "Unit":
        for command in self.pre:
            self._run(command, env, timeout=60)
        [command] = self.start
        self.log_path = log_dir / f"{self.name}-{self.hostname}{tag}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=self.working_directory,
            env={**env, **self.environment},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            assert self.process is not None
            assert self.process.poll() is None, f"{self.name} exited:\n{self.log()}"
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no {text!r} after {timeout} s:\n{self.log()}")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, as `systemctl stop` sends it (KillMode=mixed: to the main process)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._log.close()
        return code


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this checkout, installed by deploy/install.sh as an operator would."""
    target = tmp_path_factory.mktemp("opt") / "bouncer"
    shutil.copytree(ROOT, target, ignore=lambda _, names: [n for n in names if n in SKIP_COPY])
    env = {
        k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"}
    }
    env.pop("STATIC_ROOT", None)
    uv = shutil.which("uv")
    if uv:
        env["UV"] = uv
    done = subprocess.run(
        ["deploy/install.sh"],
        cwd=target,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "install.sh: done" in done.stdout
    return target


@dataclass
class Installation:
    root: Path
    env: dict[str, str]
    paths: dict[str, str]
    logs: Path
    web_url: str
    apns: FakeApns


@pytest.fixture
def installation(installed: Path, tmp_path: Path) -> Iterator[Installation]:
    """A fresh database and broker, a fake APNs, and the environment file's values."""
    admin_url = os.environ["DATABASE_URL"]
    database = f"deploy_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")  # a random hex name, no user input
    broker = RedisServer()
    broker.start()
    key = SigningKey.generate()
    apns = FakeApns(keys=[key]).start()
    key_file = tmp_path / "AuthKey.p8"
    key_file.write_text(key.private_pem)
    port = free_port()
    for directory in ("run", "lib", "logs"):
        (tmp_path / directory).mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        # What /etc/bouncer/bouncer.env holds (deploy/env.example).
        "DATABASE_URL": admin_url.rsplit("/", 1)[0] + "/" + database,
        "CELERY_BROKER_URL": broker.url,
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "BOUNCER_KEY_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "BOUNCER_BIND": f"127.0.0.1:{port}",
        "BOUNCER_WEB_WORKERS": "2",
        "APNS_TOKEN_KEY_FILE": str(key_file),
        "APNS_TOKEN_KEY_ID": key.key_id,
        "APNS_TEAM_ID": key.team_id,
        "APNS_ENDPOINT": apns.endpoint,
        "PUSH_CA_FILE": str(loopback_tls().ca_file),
    }
    paths = {
        "/opt/bouncer": str(installed),
        "/run/bouncer": str(tmp_path / "run"),
        "/var/lib/bouncer": str(tmp_path / "lib"),
    }
    try:
        yield Installation(
            root=installed,
            env=env,
            paths=paths,
            logs=tmp_path / "logs",
            web_url=f"http://127.0.0.1:{port}",
            apns=apns,
        )
    finally:
        apns.stop()
        broker.stop()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


@pytest.mark.slow
def test_install_script_builds_the_production_environment(installed: Path) -> None:
    assert (installed / ".venv" / "bin" / "celery").exists()
    # The web server `manage.py serve` runs, with its fast loop and HTTP parser.
    for module in ("uvicorn", "uvloop", "httptools", "a2wsgi"):
        assert list((installed / ".venv").glob(f"lib/python*/site-packages/{module}")), module
    # The dev group stays out of production.
    assert not list((installed / ".venv").glob("lib/python*/site-packages/pytest"))
    assert (installed / "static" / "admin" / "css" / "base.css").exists()


def _bouncer_public_key(inst: Installation) -> str:
    listing = subprocess.run(
        [".venv/bin/python", "manage.py", "bouncer_keys", "list", "--json"],
        cwd=inst.root,
        env=inst.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    [key] = [k for k in json.loads(listing.stdout) if k["state"] == "active"]
    return str(key["public_key"])


def _migrate(inst: Installation) -> None:
    """bouncer-migrate.service: migrations and a first key pair, idempotent."""
    migrate = Unit.load("bouncer-migrate", paths=inst.paths)
    output = migrate.run_oneshot(inst.env)
    assert "Applying registrations.0001_initial... OK" in output
    assert "New bouncer key pair" in output
    # It runs before every start of the other units: the second time, nothing changes.
    again = migrate.run_oneshot(inst.env)
    assert "No migrations to apply." in again
    assert "New bouncer key pair" not in again


def _start_web(inst: Installation, web: Unit) -> Unit:
    """bouncer-migrate, then bouncer-web, as Requires=/After= order them; the web, serving."""
    _migrate(inst)
    web.start_service(inst.env, inst.logs)
    wait_for_port(int(inst.env["BOUNCER_BIND"].rsplit(":", 1)[1]), timeout=60)
    return web


def _serving_processes(web: Unit) -> list[int]:
    """The process ids uvicorn's supervisor reports having started."""
    return [int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", web.log())]


def _onboard(inst: Installation, tokens: list[str]) -> ZulipServerClient:
    """A Zulip server registers itself, uploads analytics (its realm) and registers devices."""
    public_key = _bouncer_public_key(inst)
    zulip = ZulipServerClient(inst.web_url)
    assert zulip.register().status_code == 200
    assert zulip.upload_analytics().status_code == 200
    for token in tokens:
        response = zulip.register_e2ee(public_key, token)
        assert response.status_code == 200, response.text
    return zulip


@pytest.mark.slow
def test_the_units_serve_a_zulip_server_and_stop_cleanly_on_sigterm(
    installation: Installation,
) -> None:
    inst = installation
    web = Unit.load("bouncer-web", paths=inst.paths)
    workers = [Unit.load("bouncer-worker", paths=inst.paths, hostname=f"n{i}") for i in (1, 2)]
    scheduler = Unit.load("bouncer-scheduler", paths=inst.paths)
    assert web.environment["PROMETHEUS_MULTIPROC_DIR"] == f"{inst.paths['/run/bouncer']}/prometheus"
    tokens = [secrets.token_hex(32) for _ in range(6)]
    running: list[Unit] = []
    try:
        running.append(_start_web(inst, web))
        for worker in workers:
            running.append(worker.start_service(inst.env, inst.logs))
        running.append(scheduler.start_service(inst.env, inst.logs))
        for worker in workers:
            worker.wait_for_log("ready.")
        scheduler.wait_for_log("beat: Starting...")

        ready = httpx.get(f"{inst.web_url}/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        # BOUNCER_WEB_WORKERS=2: uvicorn's supervisor and its two serving processes.
        assert wait_until(lambda: len(_serving_processes(web)) == 2, 30), web.log()
        # The admin's static files come from the web process itself (WhiteNoise).
        css = httpx.get(f"{inst.web_url}/static/admin/css/base.css", timeout=10)
        assert css.status_code == 200
        assert "text/css" in css.headers["content-type"]

        zulip = _onboard(inst, tokens)
        # The web sends each first attempt itself; one that Apple asks to retry is delivered
        # once, by one of the two workers sharing the queue.
        inst.apns.script(tokens[5], Answer(503, "ServiceUnavailable"))
        for pair, sent in ((tokens[0:2], 2), (tokens[2:4], 2), (tokens[4:6], 1)):
            body = zulip.notify(pair).json()
            assert body["apple_successfully_sent_count"] == sent, body
        assert wait_until(lambda: inst.apns.delivered == 6, 15), "\n".join(u.log() for u in running)
        time.sleep(0.5)
        for token in tokens[:5]:
            assert [r.status for r in inst.apns.requests_for(token)] == [200]
        assert [r.status for r in inst.apns.requests_for(tokens[5])] == [503, 200]

        # Who sent what, from the delivery log (a first attempt's success is a debug line).
        def attempts() -> list[tuple[int, str]]:
            with psycopg.connect(inst.env["DATABASE_URL"]) as conn:
                return list(
                    conn.execute(
                        "SELECT attempt, outcome FROM delivery_deliveryattempt "
                        "ORDER BY attempt, outcome"
                    )
                )

        assert wait_until(
            lambda: attempts() == [(1, "delivered")] * 5 + [(1, "retry"), (2, "delivered")], 10
        ), attempts()
        assert sum(w.log().count("delivered to e2ee device") for w in workers) == 1

        # The web's and the workers' counters meet in the web's /metrics (Prometheus
        # multi-process mode).
        metrics = httpx.get(f"{inst.web_url}/metrics", timeout=10).text
        assert delivered_notifications(metrics) == 6, metrics

        # SIGTERM while a notify waits on Apple: the request is finished, then the web exits.
        inst.apns.latency_ms = (1500, 1500)
        answers: list[httpx.Response] = []
        slow = threading.Thread(target=lambda: answers.append(zulip.notify(tokens[:1])))
        slow.start()
        assert wait_until(lambda: len(inst.apns.received) == 8, 10)
        serving = _serving_processes(web)
        assert web.terminate() == 0, web.log()
        slow.join(timeout=30)
        assert answers[0].status_code == 200
        assert answers[0].json()["apple_successfully_sent_count"] == 1
        running.remove(web)

        assert not any(Path(f"/proc/{pid}").exists() for pid in serving), (
            "a web process outlived SIGTERM"
        )
        for unit in [*workers, scheduler]:
            assert unit.terminate() == 0, unit.log()
            running.remove(unit)
        for unit in [web, *workers, scheduler]:
            assert "Traceback" not in unit.log(), unit.log()
        for worker in workers:
            assert "Warm shutdown" in worker.log()
    finally:
        for unit in running:
            unit.terminate(timeout=10)


@pytest.mark.slow
def test_a_rolling_restart_of_the_workers_loses_and_repeats_no_delivery(
    installation: Installation,
) -> None:
    inst = installation
    inst.env["NOTIFY_WAIT_SECONDS"] = "0.5"
    web = Unit.load("bouncer-web", paths=inst.paths)
    tokens = [secrets.token_hex(32) for _ in range(40)]
    running: list[Unit] = []
    try:
        running.append(_start_web(inst, web))
        first = [Unit.load("bouncer-worker", paths=inst.paths, hostname=f"a{i}") for i in (1, 2)]
        for worker in first:
            running.append(worker.start_service(inst.env, inst.logs, tag="-old"))
        for worker in first:
            worker.wait_for_log("ready.")
        zulip = _onboard(inst, tokens)
        inst.apns.latency_ms = (200, 400)
        for token in tokens:  # Apple refuses every first attempt: the workers retry them all
            inst.apns.script(token, Answer(503, "ServiceUnavailable"))

        sending_done = threading.Event()
        statuses: list[int] = []

        def send_all() -> None:
            for i in range(0, len(tokens), 2):
                statuses.append(zulip.notify(tokens[i : i + 2]).status_code)
                time.sleep(0.05)
            sending_done.set()

        sender = threading.Thread(target=send_all)
        sender.start()
        # Restart one worker at a time while notifications keep coming, as an upgrade does.
        for i, old in enumerate(first):
            time.sleep(0.4)
            assert old.terminate(timeout=60) == 0, old.log()
            running.remove(old)
            assert "Warm shutdown" in old.log()
            new = Unit.load("bouncer-worker", paths=inst.paths, hostname=f"b{i}")
            running.append(new.start_service(inst.env, inst.logs, tag="-new"))
            new.wait_for_log("ready.")
        sender.join(timeout=60)
        assert sending_done.is_set()
        assert statuses == [200] * 20

        def all_delivered() -> bool:
            return all(any(r.status == 200 for r in inst.apns.requests_for(t)) for t in tokens)

        assert wait_until(all_delivered, 60), "\n".join(u.log() for u in running)
        time.sleep(1)
        for token in tokens:
            assert [r.status for r in inst.apns.requests_for(token)] == [503, 200]
    finally:
        for unit in running:
            unit.terminate(timeout=10)


def test_every_way_of_running_the_web_runs_manage_py_serve() -> None:
    """The systemd unit, the image and compose start the same server (interface.md section 2)."""
    web = Unit.load("bouncer-web", paths={})
    assert web.start == [["/opt/bouncer/.venv/bin/python", "manage.py", "serve"]]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert 'CMD ["python", "manage.py", "serve"]' in dockerfile
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    assert '["python", "manage.py", "serve", "--bind", "0.0.0.0:8000"]' in compose
    for path in (ROOT / "deploy").rglob("*"):
        if path.is_file():
            assert "gunicorn" not in path.read_text().lower(), path


@pytest.mark.slow
def test_the_systemd_units_pass_systemd_analyze(installed: Path, tmp_path: Path) -> None:
    for unit in UNITS.glob("*.service"):
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/bouncer", str(installed)))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # Unknown keys and bad values are only warnings to systemd: none may appear either.
    assert done.stderr.strip() == ""


def test_the_nginx_site_passes_nginx_t(tmp_path: Path) -> None:
    certificate = trustme.CA().issue_cert("push.example.org")
    certificate.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "site.pem"))
    site = (ROOT / "deploy" / "nginx" / "bouncer.conf").read_text()
    site = site.replace(
        "/etc/letsencrypt/live/push.example.org/fullchain.pem", str(tmp_path / "site.pem")
    ).replace("/etc/letsencrypt/live/push.example.org/privkey.pem", str(tmp_path / "site.pem"))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\n"
        "events {}\n"
        f"http {{ access_log off; include {tmp_path}/site.conf; }}\n"
    )
    done = subprocess.run(
        [
            shutil.which("nginx") or "/usr/sbin/nginx",
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(tmp_path / "nginx.conf"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "[warn]" not in done.stderr, done.stderr


def _variables_read_by_the_code() -> set[str]:
    settings_text = (ROOT / "bouncer" / "settings.py").read_text()
    names = set(re.findall(r'env_(?:str|bool|int|float|secret)\("([A-Z0-9_]+)"', settings_text))
    names |= set(re.findall(r'os\.environ\.get\("([A-Z0-9_]+)"', settings_text))
    serve_text = (ROOT / "bouncer" / "management" / "commands" / "serve.py").read_text()
    names |= set(re.findall(r'os\.environ\.get\("([A-Z0-9_]+)"', serve_text))
    return names


def test_env_example_lists_every_variable_the_code_reads() -> None:
    example = (ROOT / "deploy" / "env.example").read_text()
    listed = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", example, flags=re.MULTILINE))
    listed |= {name.removesuffix("_FILE") for name in listed}
    read = _variables_read_by_the_code()
    assert len(read) > 30  # the patterns above still find what settings.py reads
    assert read - listed == set()


@pytest.mark.slow
def test_a_unit_with_a_bad_configuration_refuses_to_start(
    installation: Installation, tmp_path: Path
) -> None:
    inst = installation
    _migrate(inst)
    env = {**inst.env, "APNS_TOKEN_KEY_FILE": str(tmp_path / "missing.p8")}
    with pytest.raises(AssertionError, match=r"bouncer\.E003"):
        Unit.load("bouncer-worker", paths=inst.paths).start_service(env, inst.logs)


@pytest.mark.slow
def test_the_nginx_site_serves_the_bouncer_over_tls_and_http2(
    installation: Installation, tmp_path: Path
) -> None:
    """deploy/nginx/bouncer.conf in front of the web unit, ports and certificate moved."""
    inst = installation
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "site.pem")
    )
    http_port, https_port = free_port(), free_port()
    web_port = inst.env["BOUNCER_BIND"].rsplit(":", 1)[1]
    site = (ROOT / "deploy" / "nginx" / "bouncer.conf").read_text()
    for old, new in {
        "/etc/letsencrypt/live/push.example.org/fullchain.pem": str(tmp_path / "site.pem"),
        "/etc/letsencrypt/live/push.example.org/privkey.pem": str(tmp_path / "site.pem"),
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen [::]:80;": "",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "listen [::]:443 ssl http2;": "",
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{web_port};",
    }.items():
        assert old in site
        site = site.replace(old, new)
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        "daemon off;\n"
        f"pid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\n"
        "events {}\n"
        f"http {{ access_log off; include {tmp_path}/site.conf; }}\n"
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proxy = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    web = Unit.load("bouncer-web", paths=inst.paths)
    try:
        _start_web(inst, web)
        wait_for_port(https_port, timeout=20)
        base = f"https://127.0.0.1:{https_port}"
        trust = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with httpx.Client(http2=True, verify=trust, timeout=15) as client:
            health = client.get(f"{base}/health")
            assert health.status_code == 200
            assert health.http_version == "HTTP/2"
            assert health.headers["strict-transport-security"] == "max-age=31536000"
            zulip = ZulipServerClient(base)
            registered = client.post(
                f"{base}/api/v1/remotes/server/register",
                data={
                    "zulip_org_id": zulip.uuid,
                    "zulip_org_key": zulip.key,
                    "hostname": "chat.example.org",
                    "contact_email": "admin@example.org",
                },
            )
            assert registered.status_code == 200, registered.text
            assert client.get(f"{base}/metrics").status_code == 200  # from loopback
            assert client.get(f"{base}/static/admin/css/base.css").status_code == 200
            # Only the bouncer's paths are served.
            assert client.get(f"{base}/api/v1/users").status_code == 404
            assert client.get(f"{base}/anything").status_code == 404
        plain = httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=10)
        assert plain.status_code == 301
        assert plain.headers["location"].startswith("https://")
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        web.terminate(timeout=30)
