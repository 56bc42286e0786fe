"""Load shedding: a request stamped by the proxy as having waited too long gets a quick 503."""

import time

import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from bouncer.overload import queued_seconds
from tests.conftest import ZulipServer

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
