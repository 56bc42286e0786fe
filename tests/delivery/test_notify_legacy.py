"""`POST push/notify` and `push/test_notification` (legacy), as Zulip servers send them."""

import time
import uuid
from typing import Any

import pytest

from legacy.models import RemotePushDeviceToken
from registrations.models import RemoteRealm
from tests.conftest import ZulipServer, make_server
from tests.fakes.apns import Answer, FakeApns
from tests.fakes.fcm import FakeFcm, FcmAnswer

pytestmark = [
    pytest.mark.usefixtures("in_process_delivery", "upstreams"),
    # The notify endpoints read through their own connections: test data must be committed.
    pytest.mark.django_db(transaction=True),
]

USER_UUID = "1e8f2d5a-7bd1-4bb1-9a33-0a4f8e3c2a11"
APNS_TOKEN = "c0ffee" * 10 + "abcd"
FCM_TOKEN = "fcm-token-a"

APNS_PAYLOAD = {
    "alert": {"title": "King Hamlet", "subtitle": "", "body": "hi"},
    "sound": "default",
    "badge": 0,
    "custom": {
        "zulip": {"message_ids": [45], "recipient_type": "private", "sender_id": 8, "user_id": 10}
    },
}
GCM_PAYLOAD = {
    "user_id": 10,
    "event": "message",
    "zulip_message_id": 45,
    "time": 1754385290,
    "content": "hi",
}


def token(server: ZulipServer, value: str, kind: int, **fields: Any) -> RemotePushDeviceToken:
    defaults: dict[str, Any] = {
        "user_uuid": USER_UUID,
        "ios_app_id": "org.zulip.Zulip" if kind == 1 else None,
    }
    defaults.update(fields)
    return RemotePushDeviceToken.objects.create(
        server=server.row, token=value, kind=kind, **defaults
    )


def notify(server: ZulipServer, **fields: Any) -> Any:
    body: dict[str, Any] = {
        "user_uuid": USER_UUID,
        "user_id": 10,
        "apns_payload": APNS_PAYLOAD,
        "gcm_payload": GCM_PAYLOAD,
        "gcm_options": {"priority": "high"},
        "android_devices": [FCM_TOKEN],
        "apple_devices": [APNS_TOKEN],
    }
    body.update(fields)
    return server.post_json("push/notify", body)


def test_a_message_reaches_both_providers_in_zulips_shapes(
    zulip_server: ZulipServer, realm: RemoteRealm, fake_apns: FakeApns, fake_fcm: FakeFcm
) -> None:
    token(zulip_server, APNS_TOKEN, 1)
    token(zulip_server, FCM_TOKEN, 2)
    response = notify(zulip_server, realm_uuid=str(realm.uuid))
    assert response.status_code == 200, response.content
    assert response.json() == {
        "result": "success",
        "msg": "",
        "total_android_devices": 1,
        "total_apple_devices": 1,
        "deleted_devices": {"android_devices": [], "apple_devices": []},
        "realm": {"can_push": True, "expected_end_timestamp": None},
    }
    [apns] = fake_apns.requests_for(APNS_TOKEN)
    assert apns.body == {
        "zulip": APNS_PAYLOAD["custom"]["zulip"],  # type: ignore[index]
        "aps": {
            "alert": {"title": "King Hamlet", "subtitle": "", "body": "hi"},
            "sound": "default",
            "badge": 0,
        },
    }
    assert apns.headers["apns-topic"] == "org.zulip.Zulip"
    assert abs(int(apns.headers["apns-expiration"]) - (time.time() + 86400)) < 5
    assert "apns-priority" not in apns.headers
    assert "apns-push-type" not in apns.headers
    assert fake_fcm.messages_for(FCM_TOKEN) == [
        {
            "token": FCM_TOKEN,
            "android": {"priority": "high"},
            "data": {
                "user_id": "10",
                "event": "message",
                "zulip_message_id": "45",
                "time": "1754385290",
                "content": "hi",
            },
        }
    ]
    # The realm is linked to the tokens that lacked it.
    assert set(RemotePushDeviceToken.objects.values_list("remote_realm", flat=True)) == {realm.pk}


def test_realm_is_null_without_a_realm_uuid(zulip_server: ZulipServer) -> None:
    assert notify(zulip_server).json()["realm"] is None


def test_an_id_row_duplicated_by_a_uuid_row_is_deduplicated(
    zulip_server: ZulipServer, fake_apns: FakeApns
) -> None:
    token(zulip_server, APNS_TOKEN, 1)
    token(zulip_server, APNS_TOKEN, 1, user_uuid=None, user_id=10)
    body = notify(zulip_server, android_devices=[]).json()
    assert body["total_apple_devices"] == 1
    assert len(fake_apns.requests_for(APNS_TOKEN)) == 1
    assert RemotePushDeviceToken.objects.count() == 1
    assert RemotePushDeviceToken.objects.get().user_id is None


def test_removal_sends_only_the_newest_200_ids(
    zulip_server: ZulipServer, fake_fcm: FakeFcm
) -> None:
    token(zulip_server, FCM_TOKEN, 2)
    ids = ",".join(str(i) for i in range(1, 250))
    notify(
        zulip_server,
        gcm_payload={"event": "remove", "zulip_message_ids": ids},
        gcm_options={},
        apple_devices=[],
    )
    [message] = fake_fcm.messages_for(FCM_TOKEN)
    assert message["data"]["zulip_message_ids"] == ",".join(str(i) for i in range(50, 250))
    assert message["android"]["priority"] == "normal"


def test_invalid_fcm_options_are_a_400_before_anything_is_sent(
    zulip_server: ZulipServer, fake_apns: FakeApns
) -> None:
    token(zulip_server, APNS_TOKEN, 1)
    token(zulip_server, FCM_TOKEN, 2)
    response = notify(zulip_server, gcm_options={"priority": "urgent"})
    assert response.status_code == 400
    assert response.json()["msg"] == "Invalid GCM option to bouncer: priority 'urgent'"
    assert fake_apns.received == []


def test_a_dead_apns_token_is_deleted_for_every_server_and_reported_in_the_callers_spelling(
    zulip_server: ZulipServer, fake_apns: FakeApns
) -> None:
    other = make_server()
    token(zulip_server, APNS_TOKEN, 1)
    token(other, APNS_TOKEN.upper(), 1)
    fake_apns.script(APNS_TOKEN, Answer(410, "Unregistered", timestamp=int(time.time())))
    body = notify(zulip_server, android_devices=[], apple_devices=[APNS_TOKEN.upper()]).json()
    assert body["deleted_devices"] == {"android_devices": [], "apple_devices": [APNS_TOKEN.upper()]}
    assert body["total_apple_devices"] == 1
    assert not RemotePushDeviceToken.objects.exists()


def test_an_unregistered_fcm_token_is_deleted_and_reported(
    zulip_server: ZulipServer, fake_fcm: FakeFcm
) -> None:
    token(zulip_server, FCM_TOKEN, 2)
    fake_fcm.script(FCM_TOKEN, FcmAnswer(error="UNREGISTERED"))
    body = notify(zulip_server, apple_devices=[]).json()
    assert body["deleted_devices"]["android_devices"] == [FCM_TOKEN]
    assert not RemotePushDeviceToken.objects.exists()


def test_tokens_the_bouncer_no_longer_has_are_listed_and_case_duplicates_reported(
    zulip_server: ZulipServer,
) -> None:
    token(zulip_server, APNS_TOKEN, 1)
    body = notify(
        zulip_server,
        android_devices=["gone-fcm"],
        apple_devices=[APNS_TOKEN, APNS_TOKEN.upper(), "deadbeef"],
    ).json()
    assert body["deleted_devices"] == {
        "android_devices": ["gone-fcm"],
        "apple_devices": sorted([APNS_TOKEN.upper(), "deadbeef"]),
    }


def test_an_invalid_fcm_token_is_kept(zulip_server: ZulipServer, fake_fcm: FakeFcm) -> None:
    token(zulip_server, FCM_TOKEN, 2)
    fake_fcm.script(FCM_TOKEN, FcmAnswer(error="INVALID_ARGUMENT"))
    body = notify(zulip_server, apple_devices=[]).json()
    assert body["deleted_devices"]["android_devices"] == []
    assert RemotePushDeviceToken.objects.count() == 1


def test_missing_identity_and_malformed_bodies_are_400(zulip_server: ZulipServer) -> None:
    response = notify(zulip_server, user_id=None, user_uuid=None)
    assert response.status_code == 400
    assert response.json()["msg"] == "Missing user_id or user_uuid"
    bad_fields: list[dict[str, Any]] = [
        {"android_devices": "x"},
        {"user_id": "ten"},
        {"gcm_payload": []},
    ]
    for bad in bad_fields:
        assert notify(zulip_server, **bad).status_code == 400


def test_a_foreign_realm_is_refused(zulip_server: ZulipServer) -> None:
    foreign = make_server().add_realm()
    response = notify(zulip_server, realm_uuid=str(foreign.uuid))
    assert response.status_code == 403
    assert response.json()["code"] == "REMOTE_REALM_SERVER_MISMATCH_ERROR"


def test_an_unknown_realm_answers_realm_null(zulip_server: ZulipServer) -> None:
    assert notify(zulip_server, realm_uuid=str(uuid.uuid4())).json()["realm"] is None


BASE_PAYLOAD = {
    "server": "chat.example.org",
    "realm_id": 2,
    "realm_uri": "https://chat.example.org",
    "realm_url": "https://chat.example.org",
    "realm_name": "Example",
    "user_id": 10,
}


def test_a_test_notification_reaches_the_device(
    zulip_server: ZulipServer, fake_apns: FakeApns
) -> None:
    token(zulip_server, APNS_TOKEN, 1)
    response = zulip_server.post_json(
        "push/test_notification",
        {
            "token": APNS_TOKEN.upper(),
            "token_kind": 1,
            "user_id": 10,
            "user_uuid": USER_UUID,
            "realm_uuid": None,
            "base_payload": BASE_PAYLOAD,
        },
    )
    assert response.json() == {"result": "success", "msg": ""}
    [received] = fake_apns.requests_for(APNS_TOKEN)
    assert received.body["aps"]["alert"] == {
        "title": "Test notification",
        "body": "This is a test notification from Example (https://chat.example.org).",
    }
    assert received.body["zulip"]["event"] == "test"


def test_a_test_notification_for_an_unknown_device_is_refused(zulip_server: ZulipServer) -> None:
    response = zulip_server.post_json(
        "push/test_notification",
        {
            "token": "abcd",
            "token_kind": 2,
            "user_id": 10,
            "user_uuid": USER_UUID,
            "base_payload": BASE_PAYLOAD,
        },
    )
    assert response.status_code == 400
    assert response.json() == {
        "result": "error",
        "msg": "Device not recognized by the push bouncer",
        "code": "INVALID_REMOTE_PUSH_DEVICE_TOKEN",
    }
