"""`POST push/e2ee/notify` as a Zulip 12 server sends it, observed at the fake APNs and FCM."""

from typing import Any

import pytest
from django.utils import timezone

from delivery.models import DeliveryAttempt
from registrations import sealing
from registrations.models import RemotePushDevice, RemoteRealm
from tests.conftest import ZulipServer, call_endpoint, make_server
from tests.fakes.apns import Answer, FakeApns
from tests.fakes.fcm import FakeFcm, FcmAnswer

pytestmark = [
    pytest.mark.usefixtures("in_process_delivery", "upstreams"),
    # The notify endpoints read through their own connections: test data must be committed.
    pytest.mark.django_db(transaction=True),
]

APNS_TOKEN = "c0ffee" * 10 + "abcd"
FCM_TOKEN = "fcm-" + "b" * 150
DEFAULT_APS = {"mutable-content": 1, "alert": {"title": "New notification"}}


def device(realm: RemoteRealm, token: str, kind: str, **fields: Any) -> RemotePushDevice:
    return RemotePushDevice.objects.create(
        remote_realm=realm,
        token=token,
        token_kind=kind,
        token_id=sealing.token_id_int(token),
        ios_app_id="org.zulip.Zulip" if kind == "apns" else None,
        **fields,
    )


def tid(token: str) -> str:
    return sealing.token_id_b64(sealing.token_id_int(token))


def apns_item(token: str, **payload: Any) -> dict[str, Any]:
    return {
        "token_id": tid(token),
        "http_headers": {"apns_priority": 10, "apns_push_type": "alert"},
        "payload": {"push_key_id": 10, "encrypted_data": "1/YnYINA9Sxt", **payload},
    }


def fcm_item(token: str) -> dict[str, Any]:
    return {
        "token_id": tid(token),
        "fcm_priority": "high",
        "payload": {"push_key_id": 20, "encrypted_data": "x2Qe"},
    }


def notify(server: ZulipServer, realm: RemoteRealm, items: list[dict[str, Any]]) -> Any:
    return server.post_json(
        "push/e2ee/notify", {"realm_uuid": str(realm.uuid), "push_requests": items}
    )


def test_apns_and_fcm_receive_exactly_what_zulip_sends(
    zulip_server: ZulipServer, realm: RemoteRealm, fake_apns: FakeApns, fake_fcm: FakeFcm
) -> None:
    device(realm, APNS_TOKEN, "apns")
    device(realm, FCM_TOKEN, "fcm")
    response = notify(zulip_server, realm, [apns_item(APNS_TOKEN), fcm_item(FCM_TOKEN)])
    assert response.status_code == 200, response.content
    assert response.json() == {
        "result": "success",
        "msg": "",
        "apple_successfully_sent_count": 1,
        "android_successfully_sent_count": 1,
        "delete_token_ids": [],
        "delete_device_ids": [],
        "realm_push_status": {"can_push": True, "expected_end_timestamp": None},
    }
    [apns] = fake_apns.requests_for(APNS_TOKEN)
    assert apns.headers["apns-topic"] == "org.zulip.Zulip"
    assert apns.headers["apns-priority"] == "10"
    assert apns.headers["apns-push-type"] == "alert"
    assert "apns-expiration" not in apns.headers
    assert apns.body == {"push_key_id": 10, "encrypted_data": "1/YnYINA9Sxt", "aps": DEFAULT_APS}
    assert fake_fcm.messages_for(FCM_TOKEN) == [
        {
            "token": FCM_TOKEN,
            "android": {"priority": "high"},
            "data": {"push_key_id": "20", "encrypted_data": "x2Qe"},
        }
    ]
    attempts = DeliveryAttempt.objects.order_by("provider")
    assert [(a.provider, a.outcome, a.upstream_status) for a in attempts] == [
        ("apns", "delivered", 200),
        ("fcm", "delivered", 200),
    ]


def test_unknown_and_expired_token_ids_are_returned_without_any_upstream_request(
    zulip_server: ZulipServer, realm: RemoteRealm, fake_apns: FakeApns
) -> None:
    from django.utils import timezone

    device(realm, APNS_TOKEN, "apns", expired_time=timezone.now())
    response = notify(zulip_server, realm, [apns_item(APNS_TOKEN), apns_item("ab" * 32)])
    body = response.json()
    assert body["delete_token_ids"] == sorted([tid(APNS_TOKEN), tid("ab" * 32)])
    assert body["apple_successfully_sent_count"] == 0
    assert fake_apns.received == []


@pytest.mark.parametrize("reason", ["Unregistered", "BadDeviceToken", "DeviceTokenNotForTopic"])
def test_a_dead_apns_token_is_expired_and_reported(
    zulip_server: ZulipServer, realm: RemoteRealm, fake_apns: FakeApns, reason: str
) -> None:
    row = device(realm, APNS_TOKEN, "apns")
    fake_apns.script(APNS_TOKEN, Answer(410 if reason == "Unregistered" else 400, reason))
    body = notify(zulip_server, realm, [apns_item(APNS_TOKEN)]).json()
    assert body["delete_token_ids"] == [tid(APNS_TOKEN)]
    assert body["apple_successfully_sent_count"] == 0
    row.refresh_from_db()
    assert row.expired_time is not None
    # The next notify does not send to it again.
    again = notify(zulip_server, realm, [apns_item(APNS_TOKEN)]).json()
    assert again["delete_token_ids"] == [tid(APNS_TOKEN)]
    assert len(fake_apns.requests_for(APNS_TOKEN)) == 1


def test_an_unregistered_fcm_token_is_expired_and_reported(
    zulip_server: ZulipServer, realm: RemoteRealm, fake_fcm: FakeFcm
) -> None:
    row = device(realm, FCM_TOKEN, "fcm")
    fake_fcm.script(FCM_TOKEN, FcmAnswer(error="UNREGISTERED"))
    body = notify(zulip_server, realm, [fcm_item(FCM_TOKEN)]).json()
    assert body["delete_token_ids"] == [tid(FCM_TOKEN)]
    row.refresh_from_db()
    assert row.expired_time is not None


def test_a_configuration_fault_keeps_the_token_and_counts_nothing_as_sent(
    zulip_server: ZulipServer, realm: RemoteRealm, fake_apns: FakeApns
) -> None:
    row = device(realm, APNS_TOKEN, "apns")
    fake_apns.script(APNS_TOKEN, Answer(403, "InvalidProviderToken"))
    body = notify(zulip_server, realm, [apns_item(APNS_TOKEN)]).json()
    assert (body["apple_successfully_sent_count"], body["delete_token_ids"]) == (0, [])
    row.refresh_from_db()
    assert row.expired_time is None
    assert DeliveryAttempt.objects.get().outcome == "config_fault"


def test_an_unknown_realm_is_missing_remote_realm(zulip_server: ZulipServer) -> None:
    response = zulip_server.post_json(
        "push/e2ee/notify",
        {"realm_uuid": "9aa61d0b-8ce5-488d-8e9e-fedc346e6836", "push_requests": []},
    )
    assert response.status_code == 403
    assert response.json()["code"] == "MISSING_REMOTE_REALM"


def test_another_servers_realm_is_a_mismatch(zulip_server: ZulipServer) -> None:
    foreign = make_server().add_realm()
    response = notify(zulip_server, foreign, [])
    assert response.status_code == 403
    assert response.json()["code"] == "REMOTE_REALM_SERVER_MISMATCH_ERROR"


def test_a_token_id_that_is_not_base64_is_a_400(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    response = notify(zulip_server, realm, [{**fcm_item(FCM_TOKEN), "token_id": "not base64!"}])
    assert response.status_code == 400
    assert response.json()["msg"] == "`token_id` is not Base64 encoded"


def test_an_apns_item_for_an_fcm_device_is_a_400_and_nothing_is_sent(
    zulip_server: ZulipServer, realm: RemoteRealm, fake_fcm: FakeFcm, fake_apns: FakeApns
) -> None:
    device(realm, FCM_TOKEN, "fcm")
    device(realm, APNS_TOKEN, "apns")
    response = notify(zulip_server, realm, [apns_item(APNS_TOKEN), apns_item(FCM_TOKEN)])
    assert response.status_code == 400
    assert response.json()["result"] == "error"
    assert fake_apns.received == []
    reverse = notify(zulip_server, realm, [fcm_item(APNS_TOKEN)])
    assert reverse.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        {"push_requests": []},
        {"realm_uuid": "x", "push_requests": "nope"},
        {
            "realm_uuid": "x",
            "push_requests": [
                {"token_id": "AAAAAAAAAAE=", "fcm_priority": "urgent", "payload": {}}
            ],
        },
        {
            "realm_uuid": "x",
            "push_requests": [
                {
                    "token_id": "AAAAAAAAAAE=",
                    "http_headers": {"apns_priority": 7, "apns_push_type": "alert"},
                    "payload": {"push_key_id": 1, "encrypted_data": "x"},
                }
            ],
        },
        [1, 2],
    ],
)
def test_malformed_requests_are_400_in_the_envelope(zulip_server: ZulipServer, body: Any) -> None:
    response = zulip_server.post_json("push/e2ee/notify", body)
    assert response.status_code == 400
    assert response.json()["result"] == "error"


def test_a_body_that_is_not_json_is_a_400(zulip_server: ZulipServer) -> None:
    response = call_endpoint(
        "POST", "/api/v1/remotes/push/e2ee/notify", b"\xff\xfe{", auth=zulip_server.auth
    )
    assert response.status_code == 400
    assert response.json()["msg"] == "Malformed JSON"


def test_a_zulip_11_server_names_devices_by_id_and_keys_by_push_account_id(
    zulip_server: ZulipServer, realm: RemoteRealm, fake_apns: FakeApns, fake_fcm: FakeFcm
) -> None:
    # As Zulip 11.x (FL 413-467) sends it: zerver/lib/push_notifications.py's asdict() of
    # APNsPushRequest / FCMPushRequest, devices by bouncer device id.
    apns = device(realm, APNS_TOKEN, "apns")
    fcm = device(realm, FCM_TOKEN, "fcm")
    gone = device(realm, "ee" * 32, "apns", expired_time=timezone.now())
    items = [
        {
            "device_id": apns.device_id,
            "http_headers": {"apns_priority": 10, "apns_push_type": "alert"},
            "payload": {
                "push_account_id": 4815162342,
                "encrypted_data": "c2VhbGVk",
                "aps": {"mutable-content": 1, "alert": {"title": "New notification"}},
            },
        },
        {
            "device_id": fcm.device_id,
            "fcm_priority": "high",
            "payload": {"push_account_id": 4815162342, "encrypted_data": "c2VhbGVk"},
        },
        {
            "device_id": gone.device_id,
            "http_headers": {"apns_priority": 10, "apns_push_type": "alert"},
            "payload": {"push_account_id": 1, "encrypted_data": "eA=="},
        },
        {
            "device_id": 987654321,
            "fcm_priority": "normal",
            "payload": {"push_account_id": 1, "encrypted_data": "eA=="},
        },
    ]
    answer = notify(zulip_server, realm, items).json()
    assert answer["apple_successfully_sent_count"] == 1
    assert answer["android_successfully_sent_count"] == 1
    assert answer["delete_device_ids"] == sorted([gone.device_id, 987654321])
    [received] = fake_apns.requests_for(APNS_TOKEN)
    assert received.body == {
        "push_account_id": 4815162342,
        "encrypted_data": "c2VhbGVk",
        "aps": {"mutable-content": 1, "alert": {"title": "New notification"}},
    }
    [message] = fake_fcm.messages_for(FCM_TOKEN)
    assert message["data"] == {"push_account_id": "4815162342", "encrypted_data": "c2VhbGVk"}


def test_a_payload_without_a_key_id_is_a_400(zulip_server: ZulipServer, realm: RemoteRealm) -> None:
    device(realm, APNS_TOKEN, "apns")
    item = apns_item(APNS_TOKEN)
    del item["payload"]["push_key_id"]
    response = notify(zulip_server, realm, [item])
    assert response.status_code == 400
    assert "push_key_id" in response.json()["msg"]
