"""A real Celery worker process for the tests that depend on one.

It runs exactly as production does (`celery -A bouncer worker`, thread pool) against the
test session's PostgreSQL database and Redis broker, with extra environment (the fake
upstreams' endpoints and credentials) given by the test.
"""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import connection

from tests.services import PostgresCluster, WebServer, migrate_with_key
from tests.zulip_client import ZulipServerClient

ROOT = Path(__file__).resolve().parent.parent.parent


class CeleryWorker:
    def __init__(self, *, env: Mapping[str, str], concurrency: int = 8, name: str = "w1") -> None:
        settings_dict = connection.settings_dict
        database_url = (
            f"postgres://{settings_dict['USER']}@{settings_dict['HOST']}:{settings_dict['PORT']}"
            f"/{settings_dict['NAME']}"
        )
        fd, log_name = tempfile.mkstemp(prefix=f"celery-{name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)
        self._log_file: Any = None
        self.env = {**os.environ, "DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1", **env}
        self.args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bouncer",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{name}@%h",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "INFO",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 60) -> "CeleryWorker":
        self._log_file = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.log():
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"Celery worker exited at start:\n{self.log()}")
            time.sleep(0.1)
        raise RuntimeError(f"Celery worker not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, *, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: the worker dies mid-batch, acknowledging nothing."""
        self.stop(sig=signal.SIGKILL)


@dataclass
class OwnDatabaseStack:
    """A web process and a worker on a PostgreSQL of their own (which a test may stop), with
    a Zulip server registered and its analytics uploaded (so its realm exists)."""

    database: PostgresCluster
    web: WebServer
    worker: CeleryWorker
    zulip: ZulipServerClient
    public_key: str


@contextlib.contextmanager
def own_database_stack(
    worker_env: Mapping[str, str], tmp_path: Path, name: str
) -> Iterator[OwnDatabaseStack]:
    database = PostgresCluster()
    database.start()
    env = {
        **os.environ,
        **worker_env,
        "DATABASE_URL": database.url,
        # Room for the web process to open its connections on this busy machine.
        "NOTIFY_WAIT_SECONDS": "3",
    }
    web = WebServer(env=env, log_path=tmp_path / "web.log")
    worker: CeleryWorker | None = None
    try:
        public_key = migrate_with_key(env)
        web.start()
        worker = CeleryWorker(env=env, name=name).start()
        zulip = ZulipServerClient(web.url)
        assert zulip.register().status_code == 200
        assert zulip.upload_analytics().status_code == 200
        yield OwnDatabaseStack(database, web, worker, zulip, public_key)
    finally:
        if worker is not None:
            worker.stop()
        web.stop()
        database.stop()
