"""Payloads over a provider's limit are refused unsent, and never disturb other sends.

A payload too large for one HTTP/2 frame used to make the APNs client take its connection
for dead and keep it, busy for good: after a handful, no APNs notification of the process
went out. Now the limit is checked before anything is sent, and an h2 error about one stream
ends that stream only.
"""

import logging
from typing import Any

import pytest

from delivery.models import DeliveryAttempt
from legacy.models import RemotePushDeviceToken
from registrations.models import RemotePushDevice, RemoteRealm
from tests.conftest import ZulipServer
from tests.delivery.test_notify_e2ee import APNS_TOKEN, FCM_TOKEN, apns_item, device, fcm_item
from tests.delivery.test_notify_e2ee import notify as e2ee_notify
from tests.delivery.test_notify_legacy import USER_UUID
from tests.delivery.test_notify_legacy import token as legacy_token
from tests.fakes.apns import Answer, FakeApns
from tests.fakes.fcm import FakeFcm

pytestmark = [
    pytest.mark.usefixtures("in_process_delivery", "upstreams"),
    pytest.mark.django_db(transaction=True),
]

SIZES = [5 * 1024, 17 * 1024, 70 * 1024, 1024 * 1024]
LEGACY_APNS = "ab" * 32
LEGACY_FCM = "legacy-fcm-token"


def legacy_notify(server: ZulipServer, *, apns_text: str, fcm_text: str) -> Any:
    return server.post_json(
        "push/notify",
        {
            "user_uuid": USER_UUID,
            "user_id": 10,
            "apns_payload": {"alert": {"title": "x", "body": apns_text}},
            "gcm_payload": {"event": "message", "content": fcm_text},
            "gcm_options": {},
            "android_devices": [LEGACY_FCM],
            "apple_devices": [LEGACY_APNS],
        },
    )


@pytest.fixture
def devices(zulip_server: ZulipServer, realm: RemoteRealm) -> None:
    device(realm, APNS_TOKEN, "apns")
    device(realm, FCM_TOKEN, "fcm")
    legacy_token(zulip_server, LEGACY_APNS, 1)
    legacy_token(zulip_server, LEGACY_FCM, 2)


@pytest.mark.usefixtures("devices")
def test_oversize_payloads_of_every_size_never_stop_valid_notifications(
    zulip_server: ZulipServer, realm: RemoteRealm, fake_apns: FakeApns, fake_fcm: FakeFcm
) -> None:
    for size in SIZES:
        for _ in range(5):
            big = "x" * size
            legacy = legacy_notify(zulip_server, apns_text=big, fcm_text=big)
            assert legacy.status_code == 200, legacy.json()
            e2ee = e2ee_notify(
                zulip_server,
                realm,
                [
                    apns_item(APNS_TOKEN, aps={"alert": {"body": big}}),
                    # FCM's E2EE ciphertext is capped at 8,192 characters by the protocol.
                    {
                        **fcm_item(FCM_TOKEN),
                        "payload": {"push_key_id": 1, "encrypted_data": big[:8000]},
                    },
                ],
            )
            assert e2ee.status_code == 200, e2ee.json()
            assert e2ee.json()["apple_successfully_sent_count"] == 0
            assert e2ee.json()["android_successfully_sent_count"] == 0
    # Nothing oversize ever left the bouncer.
    assert fake_apns.received == []
    assert fake_fcm.messages == []
    # 40 requests' worth of oversize payloads later, both providers deliver as usual.
    for _ in range(5):
        answer = e2ee_notify(zulip_server, realm, [apns_item(APNS_TOKEN), fcm_item(FCM_TOKEN)])
        assert answer.json()["apple_successfully_sent_count"] == 1
        assert answer.json()["android_successfully_sent_count"] == 1
        legacy = legacy_notify(zulip_server, apns_text="hi", fcm_text="hi")
        assert legacy.json()["deleted_devices"] == {"android_devices": [], "apple_devices": []}
    assert fake_apns.delivered == 10
    assert fake_fcm.delivered == 10


@pytest.mark.usefixtures("devices")
def test_an_oversize_payload_is_rejected_unsent_and_the_other_provider_is_sent_as_usual(
    zulip_server: ZulipServer, fake_apns: FakeApns, fake_fcm: FakeFcm, caplog: Any
) -> None:
    with caplog.at_level(logging.WARNING, logger="delivery"):
        answer = legacy_notify(zulip_server, apns_text="x" * 5000, fcm_text="hi")
    assert answer.status_code == 200
    body = answer.json()
    assert (body["total_apple_devices"], body["total_android_devices"]) == (1, 1)
    assert body["deleted_devices"] == {"android_devices": [], "apple_devices": []}
    assert fake_apns.received == []
    assert fake_fcm.delivered == 1
    assert sorted(DeliveryAttempt.objects.values_list("provider", "outcome", "reason")) == [
        ("apns", "rejected", "PayloadTooLarge"),
        ("fcm", "delivered", ""),
    ]
    # Kept: the token is fine, the message was not.
    assert RemotePushDeviceToken.objects.filter(token=LEGACY_APNS).exists()
    [line] = [r.getMessage() for r in caplog.records if "payload too large" in r.getMessage()]
    assert f"Server {zulip_server.row.pk}" in line
    assert "limit 4096 bytes" in line


def test_a_payload_exactly_at_apples_limit_is_sent_and_one_byte_more_is_not(
    zulip_server: ZulipServer, realm: RemoteRealm, fake_apns: FakeApns
) -> None:
    device(realm, APNS_TOKEN, "apns")
    base = len(
        '{"push_key_id":10,"encrypted_data":"",'
        '"aps":{"mutable-content":1,"alert":{"title":"New notification"}}}'
    )
    for extra, delivered in [(0, 1), (1, 0)]:
        item = apns_item(APNS_TOKEN, encrypted_data="e" * (4096 - base + extra))
        answer = e2ee_notify(zulip_server, realm, [item]).json()
        assert answer["apple_successfully_sent_count"] == delivered
    assert [r.status for r in fake_apns.received] == [200]  # Apple never answered 413


def test_a_reset_stream_and_a_dropped_connection_leave_the_next_requests_delivered(
    zulip_server: ZulipServer, realm: RemoteRealm, fake_apns: FakeApns
) -> None:
    reset, dropped, fine = "aa" * 32, "bb" * 32, "cc" * 32
    for value in (reset, dropped, fine):
        device(realm, value, "apns")
    # Each is sent once more on another connection when its stream or connection fails.
    fake_apns.script(reset, Answer(reset=True), Answer(reset=True))
    fake_apns.script(dropped, Answer(drop=True), Answer(drop=True))
    for value in (reset, dropped):
        answer = e2ee_notify(zulip_server, realm, [apns_item(value)]).json()
        assert answer["apple_successfully_sent_count"] == 0
        assert answer["delete_token_ids"] == []  # a transient failure, retried later
    for _ in range(5):
        answer = e2ee_notify(zulip_server, realm, [apns_item(fine)]).json()
        assert answer["apple_successfully_sent_count"] == 1
    assert RemotePushDevice.objects.filter(expired_time__isnull=True).count() == 3
