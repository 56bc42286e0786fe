"""Start the bouncer's production processes and its dependencies for a benchmark run.

PostgreSQL and Redis come from tests/services.py (throwaway, loopback); the web is the
production web server, `manage.py serve --bind HOST:PORT --workers N` (uvicorn), the worker
`celery -A bouncer worker` as deploy/systemd runs it, and the fake APNs and FCM run as their
own processes with injected latency (uniform per response). Everything stops when the run
ends.
"""

import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import PostgresCluster, RedisServer, free_port, wait_for_port  # noqa: E402

# The Matrix app both Matrix gateways serve in the benchmark: the bouncer (MATRIX_APPS_FILE)
# and Sygnal (its own config) get the same `apps:` entry, so the same request bodies go to
# the same fake APNs with the same key and topic on both.
MATRIX_APP_ID = "org.zulip.bench.ios"


def matrix_apps(env: dict[str, str]) -> dict[str, Any]:
    """Sygnal's `apps:` mapping: one APNs app signing with the stack's .p8 key. The host and
    CA are not in it (Sygnal has no setting for them): the bouncer takes APNS_ENDPOINT and
    PUSH_CA_FILE, Sygnal is pointed by bench/sygnal_launcher.py."""
    return {
        MATRIX_APP_ID: {
            "type": "apns",
            "keyfile": env["APNS_TOKEN_KEY_FILE"],
            "key_id": env["APNS_TOKEN_KEY_ID"],
            "team_id": env["APNS_TEAM_ID"],
            "topic": "org.zulip.Zulip",
            "push_type": "alert",
        }
    }


@dataclass
class Stack:
    env: dict[str, str]
    web_url: str
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.names.append(name)
        self.commands.append((args, {**self.env, **(env or {})}))
        self.processes.append(self._start(len(self.names) - 1, "wb"))

    def _start(self, i: int, mode: str) -> "subprocess.Popen[bytes]":
        args, env = self.commands[i]
        with (self.workdir / f"{self.names[i]}.log").open(mode) as log:
            # The child keeps its own copy of the log's descriptor.
            return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def restart(self, role: str) -> None:
        """Stop a role's processes as the run's end does (SIGTERM), start them again the same
        way (their logs continue); the caller waits until they answer."""
        for i, name in enumerate(self.names):
            if name.startswith(role):
                _stop(self.processes[i])
                self.processes[i] = self._start(i, "ab")

    names: list[str] = field(default_factory=list)
    commands: list[tuple[list[str], dict[str, str]]] = field(default_factory=list)
    # Processes not started by spawn(): PostgreSQL's postmaster, redis-server.
    services: dict[str, int] = field(default_factory=dict)
    # Removed when the stack stops (a peer's virtualenv: tens of MB); the logs stay.
    scratch: list[Path] = field(default_factory=list)

    def _pids(self, role: str) -> list[int]:
        roots = [
            process.pid
            for name, process in zip(self.names, self.processes, strict=True)
            if name.startswith(role)
        ]
        if role in self.services:
            roots.append(self.services[role])
        return _descendants(roots)

    def cpu_seconds(self, role: str) -> float:
        """User+system CPU of a role's processes (web, worker, apns, fcm, postgres, redis)
        so far, from /proc: each live process's own, plus what its children that have exited
        used (a PostgreSQL backend exits when its connection closes; its CPU then moves to
        the postmaster's children's time, and is counted once either way)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self._pids(role):
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                # utime, stime, cutime, cstime
                total += sum(int(f) for f in fields[11:15]) / tick
        return total

    def peak_memory_mb(self, role: str) -> float:
        """Sum of the peak resident memory (VmHWM) of a role's processes."""
        total_kb = 0
        for pid in self._pids(role):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total_kb += int(line.split()[1])
        return total_kb / 1024

    def delivered(self) -> int:
        """Notifications the fakes answered 200 to, as they last wrote it (every 0.2 s)."""
        total = 0
        for name in ("apns-delivered", "fcm-delivered"):
            path = self.workdir / name
            with contextlib.suppress(OSError, ValueError):
                total += int(path.read_text() or 0)
        return total


def _stop(process: "subprocess.Popen[bytes]") -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _descendants(roots: list[int]) -> list[int]:
    """The roots and every process under them, from one pass over /proc (a PostgreSQL
    postmaster has a backend per connection: one `ps` per process was dozens per reading)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    pending = list(roots)
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


@contextlib.contextmanager
def stack(
    *,
    web_workers: int = 2,
    celery_processes: int = 1,
    celery_threads: int = 32,
    celery_pool: str = "threads",
    apns_latency_ms: str = "20-60",
    fcm_latency_ms: str = "30-80",
    with_worker: bool = True,
) -> Iterator[Stack]:
    postgres, redis = PostgresCluster(), RedisServer()
    postgres.start()
    redis.start()
    workdir = Path(tempfile.mkdtemp(prefix="bouncer-bench-"))
    # One CA for this process and every process it starts (fakes, web, workers).
    os.environ["FAKE_TLS_DIR"] = str(workdir / "tls")
    web_port, apns_port, fcm_port = free_port(), free_port(), free_port()
    from cryptography.hazmat.primitives import serialization

    from tests.fakes.apns import SigningKey
    from tests.fakes.tls import loopback_tls

    key = SigningKey.generate()
    (workdir / "AuthKey.p8").write_text(key.private_pem)
    (workdir / "apns-public.pem").write_bytes(
        key.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    env = {
        **os.environ,
        "DATABASE_URL": postgres.url,
        "CELERY_BROKER_URL": redis.url,
        "DJANGO_SECRET_KEY": base64.b64encode(os.urandom(32)).decode(),
        "BOUNCER_KEY_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
        "DJANGO_DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "BOUNCER_VAR_DIR": str(workdir),
        "BOUNCER_RATE_LIMIT": "100000000/60",
        "BOUNCER_LOG_LEVEL": os.environ.get("BOUNCER_LOG_LEVEL", "INFO"),
        "APNS_TOKEN_KEY_FILE": str(workdir / "AuthKey.p8"),
        "APNS_TOKEN_KEY_ID": key.key_id,
        "APNS_TEAM_ID": key.team_id,
        "APNS_ENDPOINT": f"https://127.0.0.1:{apns_port}",
        "FCM_CREDENTIALS_FILE": str(workdir / "service-account.json"),
        "FCM_ENDPOINT": f"https://127.0.0.1:{fcm_port}",
        "STATIC_ROOT": str(workdir),
        "PUSH_CA_FILE": str(loopback_tls().ca_file),
        "PYTHONPATH": str(ROOT),
        "MATRIX_APPS_FILE": str(workdir / "matrix-apps.yaml"),
        # Every Matrix request comes from the load generator's one address; the production
        # default (6000/60 per homeserver) would be what is measured.
        "MATRIX_NOTIFY_RATE_LIMIT": "100000000/60",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("MATRIX_NOTIFY_ALLOWED_NETWORKS", None)
    # YAML reads JSON.
    (workdir / "matrix-apps.yaml").write_text(json.dumps({"apps": matrix_apps(env)}, indent=2))
    s = Stack(env=env, web_url=f"http://127.0.0.1:{web_port}", workdir=workdir)
    s.services["postgres"] = int((postgres.data / "postmaster.pid").read_text().split()[0])
    assert redis.process is not None
    s.services["redis"] = redis.process.pid
    try:
        s.spawn(
            "apns",
            [
                sys.executable,
                "-m",
                "tests.fakes.apns",
                "--port",
                str(apns_port),
                "--latency-ms",
                apns_latency_ms,
                "--key-id",
                key.key_id,
                "--team-id",
                key.team_id,
                "--public-key-file",
                str(workdir / "apns-public.pem"),
                "--stats-file",
                str(workdir / "apns-delivered"),
            ],
        )
        s.spawn(
            "fcm",
            [
                sys.executable,
                "-m",
                "tests.fakes.fcm",
                "--port",
                str(fcm_port),
                "--latency-ms",
                fcm_latency_ms,
                "--service-account-file",
                str(workdir / "service-account.json"),
                "--stats-file",
                str(workdir / "fcm-delivered"),
            ],
        )
        wait_for_port(apns_port, timeout=30)
        wait_for_port(fcm_port, timeout=30)
        # The fake FCM writes the service-account file the bouncer's checks read at start.
        deadline = time.monotonic() + 30
        while not (workdir / "service-account.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
            cwd=ROOT,
            env=env,
            check=True,
        )
        s.spawn(
            "web",
            [
                sys.executable,
                "manage.py",
                "serve",
                "--bind",
                f"127.0.0.1:{web_port}",
                "--workers",
                str(web_workers),
            ],
        )
        if with_worker:
            for i in range(celery_processes):
                s.spawn(
                    f"worker{i}",
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "bouncer",
                        "worker",
                        "--pool",
                        celery_pool,
                        "--concurrency",
                        str(celery_threads),
                        "--hostname",
                        f"bench{i}@%h",
                        "--without-mingle",
                        "--without-gossip",
                        "--loglevel",
                        "WARNING",
                    ],
                )
        wait_for_port(web_port, timeout=60)
        time.sleep(2 if with_worker else 0.5)  # the workers connect to the broker
        yield s
    finally:
        for process in s.processes:
            process.send_signal(signal.SIGTERM)
        for process in s.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        redis.stop()
        postgres.stop()
        for path in s.scratch:
            shutil.rmtree(path, ignore_errors=True)


def setup_django(s: Stack) -> None:
    os.environ.update({k: v for k, v in s.env.items() if k != "PYTHONPATH"})
    os.environ["DJANGO_SETTINGS_MODULE"] = "bouncer.settings"
    import django

    django.setup()
    # This process is the load generator: the bouncer's log level (INFO, its production
    # default) is for the bouncer's processes, not a line per request sent from here.
    for name in ("httpx", "httpcore", "delivery", "registrations", "legacy", "bouncer"):
        logging.getLogger(name).setLevel(logging.WARNING)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]
