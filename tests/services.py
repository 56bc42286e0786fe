"""Pytest plugin (loaded with `-p tests.services`): the real services a test session needs.

It starts a throwaway PostgreSQL cluster and a Redis server on loopback before Django
reads its settings, points DATABASE_URL and CELERY_BROKER_URL at them, and stops them
when the session ends. Nothing needs to be running beforehand. As root, PostgreSQL's
binaries must run as the `postgres` user, so the cluster's directory is handed to it.
"""

import base64
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PG_BIN_DIRS = [
    "/usr/lib/postgresql/15/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/17/bin",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, *, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _pg_binary(name: str) -> str:
    for directory in PG_BIN_DIRS:
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} not found in {PG_BIN_DIRS} or on PATH")
    return found


class PostgresCluster:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bouncer-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as_postgres: Callable[[], None] | None = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

            def demote() -> None:
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)

            self._as_postgres = demote

    def _run(self, *args: str) -> None:
        subprocess.run(
            args,
            check=True,
            preexec_fn=self._as_postgres,  # the session is still single-threaded here
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def start(self) -> None:
        self._run(
            _pg_binary("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.resume()

    def stop(self) -> None:
        self.halt(mode="immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def halt(self, *, mode: str = "fast") -> None:
        """Stop the server (a clean shutdown by default: with fsync off, an immediate one may
        lose the last commits); resume() starts it again on the same port with its data."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(_pg_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "stop")

    def resume(self) -> None:
        """Start the server on its data directory (after start()'s initdb, or a halt())."""
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.root}",
                # A throwaway cluster: durability buys nothing here and costs time.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        self._run(
            _pg_binary("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "postgres.log"),
            "-w",
            "-t",
            "30",
            "start",
        )

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"


class RedisServer:
    def __init__(self, *, appendonly: bool = False) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="bouncer-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        # Every write on disk before Redis answers it: a killed server loses nothing it
        # acknowledged (the fault tests restart it with work waiting).
        self.persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if appendonly
            else ["--appendonly", "no"]
        )

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)  # a restart after stop() reuses the port
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *self.persistence,
                "--dir",
                str(self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def crash(self) -> None:
        """SIGKILL, keeping the data directory: start() again reads what was on disk."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class WebServer:
    """The production web process (`manage.py serve`), on a free port."""

    def __init__(self, *, env: dict[str, str], log_path: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.env = env
        self.workers = workers
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "WebServer":
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the handle
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "serve",
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    "--workers",
                    str(self.workers),
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, timeout=30)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM: the server finishes its requests and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


_started: list[PostgresCluster | RedisServer] = []


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Runs before pytest-django imports the settings, so they see these services."""
    postgres = PostgresCluster()
    redis = RedisServer()
    try:
        postgres.start()
        _started.append(postgres)
        redis.start()
        _started.append(redis)
    except BaseException:
        for service in reversed(_started):
            service.stop()
        raise
    os.environ["DATABASE_URL"] = postgres.url
    os.environ["CELERY_BROKER_URL"] = redis.url
    os.environ["DJANGO_DEBUG"] = "false"
    os.environ["DJANGO_SECRET_KEY"] = base64.b64encode(os.urandom(32)).decode()
    os.environ["BOUNCER_KEY_ENCRYPTION_KEY"] = base64.b64encode(os.urandom(32)).decode()
    os.environ["BOUNCER_VAR_DIR"] = tempfile.mkdtemp(prefix="bouncer-var-")
    os.environ["ALLOWED_HOSTS"] = "testserver,127.0.0.1,localhost"
    # Production serves collected static files from here; the tests need it to exist only.
    os.environ["STATIC_ROOT"] = tempfile.mkdtemp(prefix="bouncer-static-")


def pytest_unconfigure(config: pytest.Config) -> None:
    while _started:
        _started.pop().stop()
    for name in ("BOUNCER_VAR_DIR", "STATIC_ROOT"):
        directory = os.environ.get(name)
        if directory:
            shutil.rmtree(directory, ignore_errors=True)


def migrate_with_key(env: dict[str, str]) -> str:
    """Migrate the database `env` names and give it a bouncer key pair, as an operator's
    first commands do; the key's public half."""
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=120)
    subprocess.run([*manage, "bouncer_keys", "generate"], cwd=ROOT, env=env, check=True)
    listing = subprocess.run(
        [*manage, "bouncer_keys", "list", "--json"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return str(json.loads(listing.stdout)[0]["public_key"])
