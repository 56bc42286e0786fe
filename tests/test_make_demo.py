"""`make demo`: the bouncer with fake APNs/FCM and a simulated Zulip server; deliveries, a
retry and a dead token show in /metrics and the admin within a minute."""

import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_until
from tests.services import free_port, wait_for_port
from tests.test_make_run import admin_login

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def outcomes(metrics: str) -> dict[tuple[str, str], float]:
    found = re.findall(
        r'^bouncer_notifications_total\{outcome="(\w+)",provider="(\w+)"\} ([\d.]+)$',
        metrics,
        flags=re.MULTILINE,
    )
    return {(provider, outcome): float(n) for outcome, provider, n in found}


def test_make_demo_shows_deliveries_retries_and_dead_tokens_within_a_minute() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bouncer-make-demo-") as var_dir:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SECRET_KEY", "DJANGO_DEBUG"}
        }
        # Credentials of a real provider in the environment must not reach the demo's bouncer.
        env.update(
            BOUNCER_VAR_DIR=var_dir,
            RUN_ADDR=f"127.0.0.1:{port}",
            APNS_ENDPOINT="https://api.push.apple.com",
            FCM_ENDPOINT="https://fcm.googleapis.com",
        )
        log_path = Path(var_dir) / "make-demo.log"
        with log_path.open("w") as log:
            demo = subprocess.Popen(
                ["make", "--no-print-directory", "demo"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                wait_for_port(port, timeout=120)
                base = f"http://127.0.0.1:{port}"
                seen: dict[tuple[str, str], float] = {}

                def every_outcome_seen() -> bool:
                    seen.update(outcomes(httpx.get(f"{base}/metrics", timeout=10).text))
                    return all(
                        seen.get(key, 0) >= 1
                        for key in (
                            ("apns", "delivered"),
                            ("apns", "retry"),
                            ("apns", "token_dead"),
                        )
                    )

                assert wait_until(every_outcome_seen, 60), (seen, log_path.read_text()[-5000:])
                password = re.search(r"user admin, password (\S+),", log_path.read_text())
                assert password is not None
                with httpx.Client(base_url=base, timeout=10) as browser:
                    assert admin_login(browser, "admin", password.group(1))
                    page = browser.get("/admin/delivery/deliveryattempt/").text
                    overview = browser.get("/admin/overview/").text
            finally:
                os.killpg(demo.pid, signal.SIGTERM)
                demo.wait(timeout=30)
        output = log_path.read_text()
        assert "fake APNs at https://127.0.0.1:" in output
        assert "api.push.apple.com" not in output
        assert "chat.demo.example" in page
        assert 'class="field-reason">Unregistered' in page
        assert 'data-provider="apns" data-app="org.zulip.Zulip"' in overview
