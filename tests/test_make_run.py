"""`make run` serves the bouncer on the embedded SQLite database, with no services running."""

import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path

import httpx

from tests.services import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


def test_make_run_serves_the_api_on_sqlite_and_prints_a_public_key() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bouncer-make-run-") as var_dir:
        env = {
            key: value
            for key, value in os.environ.items()
            if key
            not in {
                "DATABASE_URL",
                "CELERY_BROKER_URL",
                "DJANGO_SECRET_KEY",
                "BOUNCER_KEY_ENCRYPTION_KEY",
                "DJANGO_DEBUG",
                "ALLOWED_HOSTS",
            }
        }
        env.update(BOUNCER_VAR_DIR=var_dir, RUN_ADDR=f"127.0.0.1:{port}", PYTHONUNBUFFERED="1")
        log_path = Path(var_dir) / "make-run.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                ["make", "--no-print-directory", "run"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                wait_for_port(port, timeout=90)
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                register = httpx.post(
                    f"http://127.0.0.1:{port}/api/v1/remotes/server/register",
                    data={
                        "zulip_org_id": "6cde5f7a-1f7e-4978-9716-49f69ebfc9fe",
                        "zulip_org_key": "k" * 64,
                        "hostname": "chat.zulip.example.org",
                        "contact_email": "admin@zulip.example.org",
                    },
                    timeout=10,
                )
            finally:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)
        output = log_path.read_text()
        assert health.status_code == 200, output
        assert register.status_code == 200, register.text
        assert register.json() == {"result": "success", "msg": "", "created": True}
        assert (Path(var_dir) / "bouncer.sqlite3").exists()
        # The key pair's public half is printed (standard base64 of 32 bytes).
        assert re.search(r"^[A-Za-z0-9+/]{43}=$", output, re.MULTILINE), output
