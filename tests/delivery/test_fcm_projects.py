"""Two Firebase projects at once: the settings' (FCM_CREDENTIALS_FILE) and one named in
PUSH_APPS_FILE's "fcm" section, each with its own fake FCM, service account and OAuth token."""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_django.fixtures import Settings

from delivery import credentials
from delivery.fcm import FcmSender
from delivery.outcomes import SendResult, Verdict
from delivery.types import Delivery
from matrix import config
from tests.fakes.fcm import FakeFcm, ServiceAccount

TOKEN = "fcm-token-" + "a" * 140
OTHER_TOKEN = "fcm-token-" + "b" * 140
APP = "com.example.android"


@pytest.fixture(scope="module")
def second_account() -> ServiceAccount:
    return ServiceAccount.generate(project_id="second-project")


@pytest.fixture
def second_fcm(second_account: ServiceAccount) -> Iterator[FakeFcm]:
    fake = FakeFcm(account=second_account).start()
    yield fake
    fake.stop()


@pytest.fixture
def push_apps(
    settings: Settings,
    fcm_settings: dict[str, str],
    second_fcm: FakeFcm,
    second_account: ServiceAccount,
    tmp_path: Path,
) -> Path:
    account_file = tmp_path / "second-project.json"
    account_file.write_text(second_account.file_content(second_fcm.token_uri))
    apps = tmp_path / "push-apps.json"
    entry = {"service_account_file": str(account_file), "endpoint": second_fcm.endpoint}
    apps.write_text(json.dumps({"fcm": {APP: entry}}))
    settings.PUSH_APPS_FILE = str(apps)
    return apps


def message(token: str, app_id: str = "") -> Delivery:
    return Delivery.fcm(
        index=0, device_id=1, token=token, data={"event": "message"}, priority="high", app_id=app_id
    )


def send_all(deliveries: list[Delivery]) -> list[SendResult]:
    async def run() -> list[SendResult]:
        sender = FcmSender()
        try:
            return list(await asyncio.gather(*(sender.send(d) for d in deliveries)))
        finally:
            await sender.close()

    return asyncio.run(run())


@pytest.mark.usefixtures("push_apps")
def test_each_project_gets_its_own_oauth_token_and_project_url(
    fake_fcm: FakeFcm, second_fcm: FakeFcm
) -> None:
    # Each fake accepts only its own account's OAuth tokens and its own project in the path
    # (SENDER_ID_MISMATCH otherwise): delivered at both means each used its own.
    results = send_all([message(TOKEN), message(OTHER_TOKEN, APP), message(TOKEN)])
    assert [r.verdict for r in results] == [Verdict.DELIVERED] * 3
    assert [m["token"] for m in fake_fcm.messages] == [TOKEN, TOKEN]
    assert [m["token"] for m in second_fcm.messages] == [OTHER_TOKEN]
    assert (fake_fcm.token_requests, second_fcm.token_requests) == (1, 1)
    assert {r.upstream_id.split("/")[1] for r in results if r.upstream_id} == {
        "bouncer-test",
        "second-project",
    }


@pytest.mark.usefixtures("push_apps")
def test_an_app_id_push_apps_file_does_not_name_uses_the_settings_project(
    fake_fcm: FakeFcm, second_fcm: FakeFcm
) -> None:
    [result] = send_all([message(TOKEN, "com.example.unknown")])
    assert result.verdict == Verdict.DELIVERED
    assert len(fake_fcm.messages) == 1
    assert second_fcm.messages == []


def test_an_fcm_entry_without_a_service_account_fails_the_credentials_check(
    settings: Settings, tmp_path: Path
) -> None:
    apps = tmp_path / "push-apps.json"
    apps.write_text(json.dumps({"fcm": {APP: {"project_id": "x"}}}))
    settings.PUSH_APPS_FILE = str(apps)
    assert credentials.check_credentials() == [
        f"PUSH_APPS_FILE: fcm app {APP} needs service_account_file"
    ]


def test_an_unreadable_service_account_of_an_fcm_entry_is_reported(
    settings: Settings, tmp_path: Path
) -> None:
    apps = tmp_path / "push-apps.json"
    apps.write_text(json.dumps({"fcm": {APP: {"service_account_file": "/nonexistent.json"}}}))
    settings.PUSH_APPS_FILE = str(apps)
    settings.FCM_CREDENTIALS_FILE = ""
    [problem] = credentials.check_credentials()
    assert problem.startswith(f"FCM service account for {APP}: cannot read /nonexistent.json")


@pytest.mark.usefixtures("push_apps")
def test_a_matrix_gcm_app_may_send_with_a_push_apps_file_project(
    settings: Settings, second_fcm: FakeFcm, tmp_path: Path
) -> None:
    matrix_apps = tmp_path / "sygnal.yaml"
    matrix_apps.write_text(
        json.dumps({"apps": {"im.example": {"type": "gcm", "api_version": "v1", "fcm_app": APP}}})
    )
    settings.MATRIX_APPS_FILE = str(matrix_apps)
    config._load.cache_clear()
    try:
        assert config.check_apps() == []
        [result] = send_all([message(OTHER_TOKEN, config.APP_PREFIX + "im.example")])
    finally:
        config._load.cache_clear()
    assert result.verdict == Verdict.DELIVERED
    assert [m["token"] for m in second_fcm.messages] == [OTHER_TOKEN]


def test_a_matrix_gcm_app_naming_an_unknown_fcm_app_fails_the_check(
    settings: Settings, tmp_path: Path
) -> None:
    matrix_apps = tmp_path / "sygnal.yaml"
    matrix_apps.write_text(
        json.dumps(
            {"apps": {"im.example": {"type": "gcm", "api_version": "v1", "fcm_app": "nope"}}}
        )
    )
    settings.MATRIX_APPS_FILE = str(matrix_apps)
    settings.PUSH_APPS_FILE = ""
    config._load.cache_clear()
    try:
        assert config.check_apps() == [
            "MATRIX_APPS_FILE: apps.im.example.fcm_app: PUSH_APPS_FILE has no fcm app 'nope'"
        ]
    finally:
        config._load.cache_clear()
