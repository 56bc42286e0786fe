"""APNs environments and VoIP (PushKit) for every protocol, against two fake APNs hosts: the
default one stands in for api.push.apple.com, a second for api.sandbox.push.apple.com."""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_django.fixtures import Settings

from delivery import limits
from delivery.apns import ApnsSender
from delivery.outcomes import SendResult, Verdict, classify_apns
from delivery.types import Delivery
from legacy.models import RemotePushDeviceToken
from registrations.models import RemotePushDevice, RemoteRealm
from tests.conftest import ZulipServer, e2ee_notify, e2ee_register, make_server
from tests.fakes.apns import Answer, FakeApns, SigningKey

TOKEN = "c0ffee" * 10 + "abcd"
VOIP_TOKEN = "beef" * 16
USER_UUID = "1e8f2d5a-7bd1-4bb1-9a33-0a4f8e3c2a11"


@pytest.fixture
def sandbox_apns(apns_key: SigningKey) -> Iterator[FakeApns]:
    fake = FakeApns(keys=[apns_key]).start()
    yield fake
    fake.stop()


@pytest.fixture
def environments(
    settings: Settings, apns_settings: dict[str, str], sandbox_apns: FakeApns, tmp_path: Path
) -> None:
    """org.zulip.Zulip in production (the settings' key); com.example.dev in the sandbox."""
    push_apps(settings, apns_settings, sandbox_apns, tmp_path, "com.example.dev", sandbox=True)


def push_apps(
    settings: Settings,
    apns_settings: dict[str, str],
    sandbox_server: FakeApns,
    tmp_path: Path,
    app_id: str,
    /,
    **options: bool,
) -> None:
    """A PUSH_APPS_FILE with one APNs app signed with the settings' key, and the sandbox's
    endpoint pointed at `sandbox_server`."""
    settings.APNS_SANDBOX_ENDPOINT = sandbox_server.endpoint
    apps = tmp_path / "push-apps.json"
    entry = {
        "token_key_file": apns_settings["APNS_TOKEN_KEY_FILE"],
        "key_id": apns_settings["APNS_TOKEN_KEY_ID"],
        "team_id": apns_settings["APNS_TEAM_ID"],
        **options,
    }
    apps.write_text(json.dumps({"apns": {app_id: entry}}))
    settings.PUSH_APPS_FILE = str(apps)


def send_all(deliveries: list[Delivery]) -> list[SendResult]:
    async def run() -> list[SendResult]:
        sender = ApnsSender()
        try:
            return list(await asyncio.gather(*(sender.send(d) for d in deliveries)))
        finally:
            await sender.close()

    return asyncio.run(run())


def apns(token: str, app_id: str, **fields: Any) -> Delivery:
    values: dict[str, Any] = {
        "index": 0,
        "device_id": 1,
        "token": token,
        "app_id": app_id,
        "body": {"aps": {"alert": "ring"}},
        "priority": 5,
        "push_type": "alert",
        "expiration": None,
    }
    values.update(fields)
    return Delivery.apns(**values)


# --- The sender -----------------------------------------------------------------------------


def test_a_voip_push_goes_to_the_voip_topic_at_once(
    apns_settings: dict[str, str], fake_apns: FakeApns
) -> None:
    [result] = send_all([apns(VOIP_TOKEN, "org.zulip.Zulip", push_type="voip", priority=5)])
    assert result.verdict == Verdict.DELIVERED
    [received] = fake_apns.requests_for(VOIP_TOKEN)
    assert received.headers["apns-push-type"] == "voip"
    assert received.headers["apns-topic"] == "org.zulip.Zulip.voip"
    assert received.headers["apns-priority"] == "10"


def test_a_voip_topic_already_suffixed_is_kept() -> None:
    delivery = apns(VOIP_TOKEN, "org.zulip.Zulip.voip", push_type="voip")
    assert delivery.topic == "org.zulip.Zulip.voip"


def test_a_voip_payload_may_be_larger_than_an_alerts(
    apns_settings: dict[str, str], fake_apns: FakeApns
) -> None:
    body = {"aps": {}, "call": "x" * 4900}
    [voip] = send_all([apns(VOIP_TOKEN, "org.zulip.Zulip", push_type="voip", body=body)])
    assert voip.verdict == Verdict.DELIVERED
    assert limits.too_large(apns(TOKEN, "org.zulip.Zulip", body=body))
    assert not limits.too_large(apns(TOKEN, "org.zulip.Zulip", body=body, push_type="voip"))


def test_an_invalid_push_type_answer_to_a_voip_push_is_the_operators_to_fix() -> None:
    assert classify_apns(400, "InvalidPushType", push_type="voip") == Verdict.CONFIG_FAULT
    assert classify_apns(400, "InvalidPushType", push_type="alert") == Verdict.REJECTED
    # A normal token registered as a PushKit one is dead for the VoIP topic.
    assert classify_apns(400, "DeviceTokenNotForTopic", push_type="voip") == Verdict.TOKEN_DEAD


@pytest.mark.usefixtures("environments")
def test_each_app_is_sent_to_its_own_environment(
    fake_apns: FakeApns, sandbox_apns: FakeApns
) -> None:
    results = send_all([apns(TOKEN, "org.zulip.Zulip"), apns(VOIP_TOKEN, "com.example.dev")])
    assert [r.verdict for r in results] == [Verdict.DELIVERED, Verdict.DELIVERED]
    assert [r.headers["apns-topic"] for r in fake_apns.received] == ["org.zulip.Zulip"]
    assert [r.headers["apns-topic"] for r in sandbox_apns.received] == ["com.example.dev"]


@pytest.mark.usefixtures("environments")
def test_a_voip_app_id_uses_its_bundles_entry_and_environment(
    fake_apns: FakeApns, sandbox_apns: FakeApns
) -> None:
    [result] = send_all([apns(VOIP_TOKEN, "com.example.dev.voip", push_type="voip")])
    assert result.verdict == Verdict.DELIVERED
    assert fake_apns.received == []
    [received] = sandbox_apns.requests_for(VOIP_TOKEN)
    assert received.headers["apns-topic"] == "com.example.dev.voip"


def test_without_a_sandbox_endpoint_apns_endpoint_serves_both_environments(
    settings: Settings, apns_settings: dict[str, str], fake_apns: FakeApns, tmp_path: Path
) -> None:
    settings.APNS_SANDBOX_ENDPOINT = ""
    apps = tmp_path / "push-apps.json"
    apps.write_text(
        json.dumps(
            {
                "apns": {
                    "com.example.dev": {
                        "token_key_file": apns_settings["APNS_TOKEN_KEY_FILE"],
                        "key_id": apns_settings["APNS_TOKEN_KEY_ID"],
                        "team_id": apns_settings["APNS_TEAM_ID"],
                        "sandbox": True,
                    }
                }
            }
        )
    )
    settings.PUSH_APPS_FILE = str(apps)
    [result] = send_all([apns(TOKEN, "com.example.dev")])
    assert result.verdict == Verdict.DELIVERED
    assert len(fake_apns.requests_for(TOKEN)) == 1


# --- Zulip legacy: the registration's ios_app_id names the app, its environment and VoIP ----


def register_legacy(server: ZulipServer, token: str, ios_app_id: str) -> Any:
    return server.post_form(
        "push/register",
        {"user_uuid": USER_UUID, "token": token, "token_kind": 1, "ios_app_id": ios_app_id},
    )


def notify_legacy(server: ZulipServer, apple_devices: list[str]) -> Any:
    return server.post_json(
        "push/notify",
        {
            "user_uuid": USER_UUID,
            "apns_payload": {"alert": "hi", "custom": {"zulip": {"event": "message"}}},
            "gcm_payload": {},
            "gcm_options": {},
            "android_devices": [],
            "apple_devices": apple_devices,
        },
    )


@pytest.mark.usefixtures("in_process_delivery", "environments")
@pytest.mark.django_db(transaction=True)
def test_a_legacy_pushkit_registration_gets_voip_pushes(
    zulip_server: ZulipServer, fake_apns: FakeApns
) -> None:
    assert register_legacy(zulip_server, VOIP_TOKEN, "org.zulip.Zulip.voip").status_code == 200
    body = notify_legacy(zulip_server, [VOIP_TOKEN]).json()
    assert body["total_apple_devices"] == 1
    [received] = fake_apns.requests_for(VOIP_TOKEN)
    assert received.headers["apns-push-type"] == "voip"
    assert received.headers["apns-topic"] == "org.zulip.Zulip.voip"
    assert received.headers["apns-priority"] == "10"
    assert received.body == {"zulip": {"event": "message"}, "aps": {"alert": "hi"}}


@pytest.mark.usefixtures("in_process_delivery", "environments")
@pytest.mark.django_db(transaction=True)
def test_a_dead_answer_from_one_environment_keeps_the_other_environments_token(
    zulip_server: ZulipServer, fake_apns: FakeApns, sandbox_apns: FakeApns
) -> None:
    # The same token string under a production app (one server) and a sandbox app (another):
    # production's BadDeviceToken says nothing about the sandbox registration.
    other = make_server()
    assert register_legacy(zulip_server, TOKEN, "org.zulip.Zulip").status_code == 200
    assert register_legacy(other, TOKEN, "com.example.dev").status_code == 200
    fake_apns.script(TOKEN, Answer(400, "BadDeviceToken"))

    body = notify_legacy(zulip_server, [TOKEN]).json()
    assert body["deleted_devices"]["apple_devices"] == [TOKEN]
    assert list(RemotePushDeviceToken.objects.values_list("ios_app_id", flat=True)) == [
        "com.example.dev"
    ]

    body = notify_legacy(other, [TOKEN]).json()
    assert body["deleted_devices"]["apple_devices"] == []
    assert [r.status for r in sandbox_apns.requests_for(TOKEN)] == [200]
    assert RemotePushDeviceToken.objects.count() == 1


# --- Zulip E2EE: the sealed registration's ios_app_id, the server's apns_push_type -----------


@pytest.mark.usefixtures("in_process_delivery", "environments")
@pytest.mark.django_db(transaction=True)
def test_an_e2ee_pushkit_registration_gets_voip_pushes_whatever_the_server_chose(
    zulip_server: ZulipServer, realm: RemoteRealm, fake_apns: FakeApns
) -> None:
    response = e2ee_register(zulip_server, realm, VOIP_TOKEN, ios_app_id="org.zulip.Zulip.voip")
    assert response.status_code == 200
    body = e2ee_notify(zulip_server, realm, [VOIP_TOKEN]).json()
    assert body["apple_successfully_sent_count"] == 1
    [received] = fake_apns.requests_for(VOIP_TOKEN)
    assert received.headers["apns-push-type"] == "voip"
    assert received.headers["apns-topic"] == "org.zulip.Zulip.voip"
    assert received.headers["apns-priority"] == "10"


@pytest.mark.usefixtures("in_process_delivery", "environments")
@pytest.mark.django_db(transaction=True)
def test_an_e2ee_device_of_a_sandbox_app_is_sent_to_the_sandbox(
    zulip_server: ZulipServer, realm: RemoteRealm, fake_apns: FakeApns, sandbox_apns: FakeApns
) -> None:
    response = e2ee_register(zulip_server, realm, TOKEN, ios_app_id="com.example.dev")
    assert response.status_code == 200
    sandbox_apns.script(TOKEN, Answer(410, "Unregistered"))
    body = e2ee_notify(zulip_server, realm, [TOKEN]).json()
    assert len(body["delete_token_ids"]) == 1
    assert fake_apns.received == []
    assert RemotePushDevice.objects.get(token=TOKEN).expired_time is not None


# --- An app served in either environment (one bundle id, development and store builds) ------


@pytest.fixture
def either_environment(
    settings: Settings, apns_settings: dict[str, str], sandbox_apns: FakeApns, tmp_path: Path
) -> None:
    push_apps(
        settings, apns_settings, sandbox_apns, tmp_path, "org.zulip.Zulip", either_environment=True
    )


def send_in_one_sender(rounds: list[list[Delivery]]) -> list[list[SendResult]]:
    """Each round after the previous one, through the same sender (as in one process)."""

    async def run() -> list[list[SendResult]]:
        sender = ApnsSender()
        try:
            return [
                list(await asyncio.gather(*(sender.send(d) for d in deliveries)))
                for deliveries in rounds
            ]
        finally:
            await sender.close()

    return asyncio.run(run())


@pytest.mark.usefixtures("either_environment")
def test_a_sandbox_token_of_an_either_environment_app_is_delivered_and_remembered(
    fake_apns: FakeApns, sandbox_apns: FakeApns
) -> None:
    fake_apns.script(TOKEN, Answer(400, "BadDeviceToken"))
    first, second = send_in_one_sender(
        [[apns(TOKEN, "org.zulip.Zulip")], [apns(TOKEN, "org.zulip.Zulip")]]
    )
    assert [r.verdict for r in first + second] == [Verdict.DELIVERED, Verdict.DELIVERED]
    # Production said BadDeviceToken once; after that the sandbox is asked first.
    assert [r.status for r in fake_apns.requests_for(TOKEN)] == [400]
    assert [r.status for r in sandbox_apns.requests_for(TOKEN)] == [200, 200]


@pytest.mark.usefixtures("either_environment")
def test_a_token_of_an_either_environment_app_is_dead_only_when_both_environments_say_so(
    fake_apns: FakeApns, sandbox_apns: FakeApns
) -> None:
    fake_apns.script(TOKEN, Answer(400, "BadDeviceToken"))
    sandbox_apns.script(TOKEN, Answer(400, "BadDeviceToken"))
    fake_apns.script(VOIP_TOKEN, Answer(410, "Unregistered"))
    [[both_bad, unregistered]] = send_in_one_sender(
        [[apns(TOKEN, "org.zulip.Zulip"), apns(VOIP_TOKEN, "org.zulip.Zulip")]]
    )
    assert (both_bad.verdict, both_bad.reason) == (Verdict.TOKEN_DEAD, "BadDeviceToken")
    # Unregistered says the token was this environment's: the other is not asked.
    assert (unregistered.verdict, unregistered.reason) == (Verdict.TOKEN_DEAD, "Unregistered")
    assert sandbox_apns.requests_for(VOIP_TOKEN) == []


@pytest.mark.usefixtures("in_process_delivery", "either_environment")
@pytest.mark.django_db(transaction=True)
def test_a_legacy_sandbox_token_of_an_either_environment_app_is_kept(
    zulip_server: ZulipServer, fake_apns: FakeApns, sandbox_apns: FakeApns
) -> None:
    assert register_legacy(zulip_server, TOKEN, "org.zulip.Zulip").status_code == 200
    fake_apns.script(TOKEN, Answer(400, "BadDeviceToken"))
    body = notify_legacy(zulip_server, [TOKEN]).json()
    assert body["deleted_devices"]["apple_devices"] == []
    assert RemotePushDeviceToken.objects.count() == 1
    assert [r.status for r in sandbox_apns.requests_for(TOKEN)] == [200]
