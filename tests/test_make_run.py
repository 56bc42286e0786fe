"""`make run` serves the bouncer on the embedded SQLite database, with no services running,
with the production web server, and says how to use it."""

import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from registrations import sealing
from tests.services import free_port, wait_for_port
from tests.zulip_client import ZulipServerClient

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_KEY = r"^[A-Za-z0-9+/]{43}=$"

pytestmark = pytest.mark.slow


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
                # The look-ups written in plain SQL (bouncer/rows.py), on SQLite: server,
                # realm, key pair, devices.
                public_key = re.search(PUBLIC_KEY, log_path.read_text(), re.MULTILINE)
                assert public_key is not None, log_path.read_text()
                zulip = ZulipServerClient(f"http://127.0.0.1:{port}")
                token = "ab" * 32
                answers = [
                    zulip.register(),
                    zulip.upload_analytics(),
                    zulip.register_e2ee(public_key.group(0), token),
                ]
                notified = zulip.notify([token, "cd" * 32])
                # The production server: DEBUG off (no debug page), the admin's static files
                # served by the web process, and the admin account the output names.
                missing = httpx.get(f"http://127.0.0.1:{port}/nothing-here", timeout=5)
                css = httpx.get(f"http://127.0.0.1:{port}/static/admin/css/base.css", timeout=5)
                password = re.search(r"user admin, password (\S+),", log_path.read_text())
                assert password is not None, log_path.read_text()
                logged_in = _admin_login(port, "admin", password.group(1))
                # After one `make run`, manage.py works in the checkout with no environment:
                # it reads the secrets make run generated into var/.
                listed = subprocess.run(
                    [".venv/bin/python", "manage.py", "bouncer_keys", "list"],
                    cwd=ROOT,
                    env={"PATH": os.environ["PATH"], "BOUNCER_VAR_DIR": var_dir},
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
            finally:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)
        output = log_path.read_text()
        assert health.status_code == 200, output
        assert register.status_code == 200, register.text
        assert register.json() == {"result": "success", "msg": "", "created": True}
        assert (Path(var_dir) / "bouncer.sqlite3").exists()
        assert "Uvicorn running on" in output, output
        assert missing.status_code == 404
        assert "Django" not in missing.text  # no debug page
        assert css.status_code == 200
        assert logged_in
        assert listed.returncode == 0, listed.stderr
        for line in (
            f"http://127.0.0.1:{port}/admin/",
            f'ZULIP_SERVICES_URL = "http://127.0.0.1:{port}"',
            "register_server",
        ):
            assert line in output, output
        assert public_key.group(0) in listed.stdout
        # The key pair's public half is printed (standard base64 of 32 bytes).
        assert re.search(PUBLIC_KEY, output, re.MULTILINE), output
        assert [a.status_code for a in answers] == [200, 200, 200], output
        assert notified.status_code == 200, output
        body = notified.json()
        # No APNs credentials here: the known device is a configuration fault (not sent, kept);
        # the unknown one is reported for deletion.
        assert body["apple_successfully_sent_count"] == 0
        assert body["delete_token_ids"] == [
            sealing.token_id_b64(sealing.token_id_int("cd" * 32))
        ], body


def _admin_login(port: int, username: str, password: str) -> bool:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as browser:
        return admin_login(browser, username, password)


def admin_login(browser: httpx.Client, username: str, password: str) -> bool:
    """Django admin's login form, as a browser fills it in."""
    form = browser.get("/admin/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert csrf is not None, form.text
    answer = browser.post(
        "/admin/login/?next=/admin/",
        data={
            "csrfmiddlewaretoken": csrf.group(1),
            "username": username,
            "password": password,
            "next": "/admin/",
        },
    )
    return answer.status_code == 302 and answer.headers["location"] == "/admin/"
