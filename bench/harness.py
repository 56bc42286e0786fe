"""Start the bouncer's production processes and its dependencies for a benchmark run.

PostgreSQL and Redis come from tests/services.py (throwaway, loopback); the web is gunicorn
with deploy/gunicorn.conf.py, the worker `celery -A bouncer worker`, and the fake APNs runs
as its own process with injected latency. Everything stops when the run ends.
"""

import base64
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import PostgresCluster, RedisServer, free_port, wait_for_port  # noqa: E402


@dataclass
class Stack:
    env: dict[str, str]
    web_url: str
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                args,
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    def cpu_seconds(self) -> dict[str, float]:
        """User+system CPU of each spawned process and its children, from /proc."""
        result: dict[str, float] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for process in self.processes:
            total = 0.0
            for pid in [process.pid, *_children(process.pid)]:
                with contextlib.suppress(OSError):
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / tick
            result[" ".join(process.args[1:4]) if isinstance(process.args, list) else "?"] = total
        return result


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return []
    kids = [int(p) for p in out.split()]
    return kids + [g for k in kids for g in _children(k)]


@contextlib.contextmanager
def stack(
    *,
    web_workers: int = 2,
    web_threads: int = 32,
    celery_processes: int = 1,
    celery_threads: int = 64,
    apns_latency_ms: str = "40-40",
    with_worker: bool = True,
) -> Iterator[Stack]:
    postgres, redis = PostgresCluster(), RedisServer()
    postgres.start()
    redis.start()
    workdir = Path(tempfile.mkdtemp(prefix="bouncer-bench-"))
    # One CA for this process and every process it starts (fakes, web, workers).
    os.environ["FAKE_TLS_DIR"] = str(workdir / "tls")
    web_port, apns_port = free_port(), free_port()
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
        "BOUNCER_LOG_LEVEL": "WARNING",
        "APNS_TOKEN_KEY_FILE": str(workdir / "AuthKey.p8"),
        "APNS_TOKEN_KEY_ID": key.key_id,
        "APNS_TEAM_ID": key.team_id,
        "APNS_ENDPOINT": f"https://127.0.0.1:{apns_port}",
        "PUSH_CA_FILE": str(loopback_tls().ca_file),
        "GUNICORN_BIND": f"127.0.0.1:{web_port}",
        "GUNICORN_WORKERS": str(web_workers),
        "GUNICORN_THREADS": str(web_threads),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    s = Stack(env=env, web_url=f"http://127.0.0.1:{web_port}", workdir=workdir)
    try:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
            cwd=ROOT,
            env=env,
            check=True,
        )
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
            "web",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "deploy/gunicorn.conf.py",
                "--access-logfile",
                "/dev/null",
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
                        "threads",
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
        wait_for_port(apns_port, timeout=30)
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


def delivered_at_fake(s: Stack) -> int:
    path = s.workdir / "apns-delivered"
    return int(path.read_text() or 0) if path.exists() else 0


def setup_django(s: Stack) -> None:
    os.environ.update({k: v for k, v in s.env.items() if k != "PYTHONPATH"})
    os.environ["DJANGO_SETTINGS_MODULE"] = "bouncer.settings"
    import django

    django.setup()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]
