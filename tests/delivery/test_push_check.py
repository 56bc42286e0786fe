"""`manage.py push_check`: one test push through the production senders to the fakes, and the
answer explained."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from pytest_django.fixtures import Settings

from tests.fakes.apns import Answer, FakeApns
from tests.fakes.fcm import FakeFcm, FcmAnswer


def push_check(*args: str) -> str:
    out = StringIO()
    call_command("push_check", *args, stdout=out)
    return out.getvalue()


@pytest.mark.usefixtures("upstreams")
def test_working_credentials_are_reported_ok_for_both_providers(
    fake_apns: FakeApns, fake_fcm: FakeFcm
) -> None:
    output = push_check()
    assert "APNs: OK. Apple answered 200" in output
    assert "FCM: OK. Google answered 200" in output
    assert fake_apns.delivered == 1
    assert fake_fcm.delivered == 1


@pytest.mark.usefixtures("upstreams")
def test_a_phones_token_gets_the_test_notification(fake_apns: FakeApns) -> None:
    token = "ab" * 32
    output = push_check("--provider", "apns", "--token", token)
    assert "delivered; the phone should show 'Push check'" in output
    [received] = fake_apns.requests_for(token)
    assert received.body["aps"]["alert"]["title"] == "Push check"


@pytest.mark.usefixtures("upstreams")
def test_a_dead_token_still_means_the_credentials_work(fake_apns: FakeApns) -> None:
    token = "cd" * 32
    fake_apns.script(token, Answer(410, "Unregistered", timestamp=1))
    output = push_check("--provider", "apns", "--token", token)
    assert "APNs: OK" in output
    assert "this token is dead" in output


@pytest.mark.usefixtures("upstreams")
def test_refused_credentials_are_explained_and_fail_the_command(
    settings: Settings, fake_fcm: FakeFcm
) -> None:
    settings.APNS_TEAM_ID = "WRONGTEAM1"  # the fake checks the token's issuer
    out = StringIO()
    with pytest.raises(CommandError, match="APNs cannot deliver"):
        call_command("push_check", "--provider", "apns", stdout=out)
    assert "check APNS_TOKEN_KEY_ID and APNS_TEAM_ID" in out.getvalue()


@pytest.mark.usefixtures("upstreams")
def test_an_unavailable_provider_is_a_temporary_problem(fake_fcm: FakeFcm) -> None:
    token = "push-check-phone"
    fake_fcm.script(token, FcmAnswer(error="UNAVAILABLE"))
    with pytest.raises(CommandError, match="FCM cannot deliver"):
        push_check("--provider", "fcm", "--token", token)


def test_missing_credentials_are_named(db: None, settings: Settings) -> None:
    settings.APNS_TOKEN_KEY_FILE = ""
    settings.APNS_CERT_FILE = ""
    settings.PUSH_APPS_FILE = ""
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("push_check", "--provider", "apns", stdout=out)
    assert "APNs: PROBLEM" in out.getvalue()


def test_a_deployment_without_credentials_is_warned_at_start(settings: Settings) -> None:
    from django.core.checks import run_checks

    settings.APNS_TOKEN_KEY_FILE = ""
    settings.APNS_CERT_FILE = ""
    settings.PUSH_APPS_FILE = ""
    settings.FCM_CREDENTIALS_FILE = ""
    ids = {message.id for message in run_checks()}
    assert {"bouncer.W001", "bouncer.W002"} <= ids


@pytest.mark.usefixtures("upstreams")
def test_configured_credentials_raise_no_warning() -> None:
    from django.core.checks import run_checks

    ids = {message.id for message in run_checks()}
    assert not ids & {"bouncer.W001", "bouncer.W002"}
