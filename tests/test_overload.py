"""Load shedding: a request stamped by the proxy as having waited too long gets a quick 503."""

import contextlib
import os
import time
from pathlib import Path

import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from bouncer.overload import queued_seconds
from delivery.fairness import SiblingSignal
from tests.conftest import ZulipServer, wait_until
from tests.services import WebServer

STATUS = "/api/v1/remotes/server/analytics/status"


def test_a_request_that_waited_too_long_is_a_503_in_zulips_envelope(
    zulip_server: ZulipServer, settings: Settings
) -> None:
    settings.BOUNCER_MAX_QUEUE_SECONDS = 5
    response = Client().get(
        STATUS,
        HTTP_AUTHORIZATION=zulip_server.auth,
        HTTP_X_REQUEST_START=f"t={time.time() - 8:.3f}",
    )
    assert response.status_code == 503
    assert response.json() == {
        "result": "error",
        "msg": "Push notification service overloaded, retry later",
        "code": "SERVICE_UNAVAILABLE",
    }
    assert response["Retry-After"] == "5"


@pytest.mark.parametrize(
    "stamp",
    [
        None,  # no proxy in front (make run, straight to manage.py serve)
        "fresh",
        "t=garbage",
        "t=99999999999999999999",  # in the future whatever the unit: never shed
    ],
)
def test_a_request_that_did_not_wait_long_is_served(
    zulip_server: ZulipServer, settings: Settings, stamp: str | None
) -> None:
    settings.BOUNCER_MAX_QUEUE_SECONDS = 5
    headers = {"Authorization": zulip_server.auth}
    if stamp == "fresh":
        headers["X-Request-Start"] = f"t={time.time() - 1:.3f}"
    elif stamp is not None:
        headers["X-Request-Start"] = stamp
    response = Client().get(STATUS, headers=headers)
    assert response.status_code == 200, response.content


def test_zero_turns_shedding_off(zulip_server: ZulipServer, settings: Settings) -> None:
    settings.BOUNCER_MAX_QUEUE_SECONDS = 0
    response = Client().get(
        STATUS, HTTP_AUTHORIZATION=zulip_server.auth, HTTP_X_REQUEST_START="t=1000000000.0"
    )
    assert response.status_code == 200


def test_stamps_in_seconds_milliseconds_and_microseconds_all_read_as_seconds() -> None:
    now = 1_800_000_000.0
    assert queued_seconds("t=1799999998.5", now=now) == pytest.approx(1.5)
    assert queued_seconds("t=1799999998500", now=now) == pytest.approx(1.5)
    assert queued_seconds("1799999998500000", now=now) == pytest.approx(1.5)
    assert queued_seconds("t=", now=now) is None


def _workers_environments(supervisor: int) -> list[str]:
    """The environments of `manage.py serve`'s web processes (not its resource tracker)."""
    found = []
    for child in Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split():
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(Path(f"/proc/{child}/environ").read_bytes().decode())
    return found


def test_the_web_processes_of_one_server_share_an_isolation_signal_it_removes_when_it_stops(
    tmp_path: Path,
) -> None:
    """The flag by which one web process tells its siblings that it isolates a quiet Zulip
    server (delivery/fairness.py SiblingSignal): a file in a directory of the supervisor's,
    named in every worker's environment, gone with the server."""
    web = WebServer(
        env={**os.environ, "TMPDIR": str(tmp_path)}, log_path=tmp_path / "web.log", workers=2
    ).start()
    try:
        assert web.process is not None
        supervisor = web.process.pid
        assert wait_until(lambda: len(_workers_environments(supervisor)) == 2, timeout=30)
        (shared,) = tmp_path.glob("bouncer-serve-*")
        for environment in _workers_environments(supervisor):
            assert f"{SiblingSignal.ENV}={shared / 'isolating'}\0" in environment
    finally:
        web.stop()
    assert not list(tmp_path.glob("bouncer-serve-*"))
