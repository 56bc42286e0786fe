"""`POST /_matrix/push/v1/notify` as a homeserver sends it, observed at the fake APNs and FCM."""

import base64
import json
import secrets
import time
from pathlib import Path

import pytest
from pytest_django.fixtures import Settings

from delivery.models import DeliveryAttempt
from tests.conftest import call_endpoint, wait_until
from tests.fakes.apns import Answer, FakeApns
from tests.fakes.fcm import FakeFcm, FcmAnswer, ServiceAccount
from tests.matrix.conftest import (
    APNS_APP,
    APNS_PUSHKEY,
    APNS_TOKEN_HEX,
    FCM_APP,
    FCM_PUSHKEY,
    SANDBOX_APP,
    TOPIC,
    VOIP_APP,
    device,
    message,
    notify,
)

pytestmark = [
    pytest.mark.usefixtures("in_process_delivery", "matrix_apps"),
    pytest.mark.django_db(transaction=True),
]


def test_a_message_reaches_apns_as_sygnal_sends_it(fake_apns: FakeApns) -> None:
    response = notify(message([device(APNS_APP, APNS_PUSHKEY)]))

    assert response.status_code == 200
    assert response.json() == {"rejected": []}
    [received] = fake_apns.requests_for(APNS_TOKEN_HEX)
    # Sygnal's own expectation for this notification (tests/test_apns.py, test_expected).
    assert received.body == {
        "room_id": "!slw48wfj34rtnrf:example.com",
        "event_id": "$qTOWWTEL48yPm3uT-gdNhFcoHxfKbZuqRVnnWWSkGBs",
        "aps": {
            "alert": {
                "loc-key": "MSG_FROM_USER_IN_ROOM_WITH_CONTENT",
                "loc-args": [
                    "Major Tom",
                    "Mission Control",
                    "I'm floating in a most peculiar way.",
                ],
            },
            "badge": 3,
        },
    }
    assert received.headers["apns-topic"] == TOPIC
    assert received.headers["apns-priority"] == "10"
    # No push_type configured: no header, as Sygnal sends it.
    assert "apns-push-type" not in received.headers
    assert "apns-expiration" not in received.headers


def test_low_priority_is_apns_priority_5_and_the_push_type_is_the_apps(
    fake_apns: FakeApns,
) -> None:
    response = notify(message([device(SANDBOX_APP, APNS_PUSHKEY)], prio="low"))

    assert response.json() == {"rejected": []}
    [received] = fake_apns.requests_for(APNS_TOKEN_HEX)
    assert received.headers["apns-priority"] == "5"
    assert received.headers["apns-push-type"] == "alert"


def test_a_voip_app_sends_to_its_voip_topic_at_once(fake_apns: FakeApns) -> None:
    notify(message([device(VOIP_APP, APNS_PUSHKEY)], type="m.call.invite", content={}, prio="low"))

    [received] = fake_apns.requests_for(APNS_TOKEN_HEX)
    assert received.headers["apns-topic"] == TOPIC + ".voip"
    assert received.headers["apns-push-type"] == "voip"
    assert received.headers["apns-priority"] == "10"
    assert received.body["aps"]["alert"] == {
        "loc-key": "VOICE_CALL_FROM_USER",
        "loc-args": ["Major Tom"],
    }


def test_event_id_only_sends_only_the_ids_and_counts(fake_apns: FakeApns) -> None:
    body = {
        "notification": {
            "room_id": "!slw48wfj34rtnrf:example.com",
            "event_id": "$qTOWWTEL48yPm3uT-gdNhFcoHxfKbZuqRVnnWWSkGBs",
            "counts": {"unread": 2},
            "devices": [
                device(
                    APNS_APP,
                    APNS_PUSHKEY,
                    data={"default_payload": {"aps": {"mutable-content": 1}}},
                )
            ],
        }
    }
    assert notify(body).json() == {"rejected": []}

    [received] = fake_apns.requests_for(APNS_TOKEN_HEX)
    assert received.body == {
        "aps": {"mutable-content": 1},
        "room_id": "!slw48wfj34rtnrf:example.com",
        "event_id": "$qTOWWTEL48yPm3uT-gdNhFcoHxfKbZuqRVnnWWSkGBs",
        "unread_count": 2,
    }


def test_a_dead_token_is_rejected_and_a_live_one_is_not(fake_apns: FakeApns) -> None:
    dead_hex = "dead" * 16
    dead_pushkey = base64.b64encode(bytes.fromhex(dead_hex)).decode()
    fake_apns.script(dead_hex, Answer(410, "Unregistered"))

    response = notify(message([device(APNS_APP, dead_pushkey), device(APNS_APP, APNS_PUSHKEY)]))

    assert response.json() == {"rejected": [dead_pushkey]}
    outcomes = set(DeliveryAttempt.objects.values_list("protocol", "app_id", "outcome"))
    assert wait_until(
        lambda: (
            set(DeliveryAttempt.objects.values_list("protocol", "app_id", "outcome"))
            == {
                ("matrix", f"matrix:{APNS_APP}", "token_dead"),
                ("matrix", f"matrix:{APNS_APP}", "delivered"),
            }
        ),
        timeout=5,
    ), outcomes


def test_a_transient_failure_is_retried_and_not_rejected(fake_apns: FakeApns) -> None:
    fake_apns.script(APNS_TOKEN_HEX, Answer(503, "ServiceUnavailable"))

    response = notify(message([device(APNS_APP, APNS_PUSHKEY)]))

    assert response.json() == {"rejected": []}
    # The retry runs in-process (no broker) after its backoff: Apple sees the notification twice.
    assert wait_until(lambda: len(fake_apns.requests_for(APNS_TOKEN_HEX)) == 2, timeout=10)


def test_a_configuration_fault_keeps_the_pushkey(fake_apns: FakeApns) -> None:
    fake_apns.script(APNS_TOKEN_HEX, Answer(403, "InvalidProviderToken"))

    assert notify(message([device(APNS_APP, APNS_PUSHKEY)])).json() == {"rejected": []}


def test_unknown_app_ids_and_unusable_pushkeys_are_rejected(fake_apns: FakeApns) -> None:
    not_base64 = "!!!"
    response = notify(
        message(
            [
                device("org.unknown.app", "k1"),
                device(APNS_APP, not_base64),
                device(APNS_APP, APNS_PUSHKEY, data={"default_payload": None}),
            ]
        )
    )

    assert response.json() == {"rejected": ["k1", not_base64, APNS_PUSHKEY]}
    assert fake_apns.received == []


def test_an_app_id_matching_a_glob_uses_that_app(fake_apns: FakeApns) -> None:
    assert notify(message([device("com.example.glob.beta", APNS_PUSHKEY)])).json() == {
        "rejected": []
    }
    [received] = fake_apns.requests_for(APNS_TOKEN_HEX)
    assert received.headers["apns-topic"] == TOPIC


def test_fcm_gets_sygnals_v1_message_from_the_apps_own_project(fake_fcm: FakeFcm) -> None:
    response = notify(
        message([device(FCM_APP, FCM_PUSHKEY, data={"channel": None})], type="m.room.x")
    )

    assert response.json() == {"rejected": []}
    [sent] = fake_fcm.messages_for(FCM_PUSHKEY)
    # Sygnal's own expectation (tests/test_gcm.py, test_expected_api_v1).
    assert sent["data"] == {
        "event_id": "$qTOWWTEL48yPm3uT-gdNhFcoHxfKbZuqRVnnWWSkGBs",
        "type": "m.room.x",
        "sender": "@exampleuser:matrix.org",
        "room_name": "Mission Control",
        "room_alias": "#exampleroom:matrix.org",
        "sender_display_name": "Major Tom",
        "content_msgtype": "m.text",
        "content_body": "I'm floating in a most peculiar way.",
        "room_id": "!slw48wfj34rtnrf:example.com",
        "prio": "high",
        "unread": "2",
        "missed_calls": "1",
    }
    assert sent["android"] == {"notification": {"body": "test body"}, "priority": "high"}
    assert sent["apns"] == {
        "payload": {"aps": {"content-available": 1, "mutable-content": 1, "alert": ""}}
    }
    assert sent["token"] == FCM_PUSHKEY


def test_fcm_low_priority_is_normal(fake_fcm: FakeFcm) -> None:
    notify(message([device(FCM_APP, FCM_PUSHKEY)], type="m.room.x", prio="low"))

    [sent] = fake_fcm.messages_for(FCM_PUSHKEY)
    assert sent["android"]["priority"] == "normal"
    assert sent["data"]["prio"] == "normal"


def test_the_apps_fcm_project_is_used_whatever_the_settings_project(
    settings: Settings, fake_fcm: FakeFcm, tmp_path: Path
) -> None:
    # Zulip's own FCM project: one the fake does not know (its OAuth refuses the account).
    other = tmp_path / "zulip-project.json"
    other.write_text(ServiceAccount.generate("zulip-project").file_content(fake_fcm.token_uri))
    settings.FCM_CREDENTIALS_FILE = str(other)

    response = notify(message([device(FCM_APP, FCM_PUSHKEY)], type="m.room.x"))

    assert response.json() == {"rejected": []}
    assert len(fake_fcm.messages_for(FCM_PUSHKEY)) == 1


def test_an_unanswered_delivery_is_answered_within_the_wait_and_kept(
    settings: Settings, fake_apns: FakeApns
) -> None:
    settings.NOTIFY_WAIT_SECONDS = 0.5
    fake_apns.script(APNS_TOKEN_HEX, Answer(hang=True))

    response = notify(message([device(APNS_APP, APNS_PUSHKEY)]))

    # Not answered in time: a timeout, retried in the background, never a rejection.
    assert response.json() == {"rejected": []}
    assert wait_until(lambda: len(fake_apns.requests_for(APNS_TOKEN_HEX)) == 2, timeout=10)


def test_an_unregistered_fcm_token_is_rejected(fake_fcm: FakeFcm) -> None:
    fake_fcm.script(FCM_PUSHKEY, FcmAnswer(error="UNREGISTERED"))

    response = notify(message([device(FCM_APP, FCM_PUSHKEY)], type="m.room.x"))

    assert response.json() == {"rejected": [FCM_PUSHKEY]}


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        (b"{not json", "M_NOT_JSON"),
        ({"notification": []}, "M_BAD_JSON"),
        ({"notification": {"devices": []}}, "M_BAD_JSON"),
        ({"notification": {"devices": [{"app_id": 1, "pushkey": "k"}]}}, "M_BAD_JSON"),
        (
            {"notification": {"devices": [device(APNS_APP, "k")], "counts": {"unread": "2"}}},
            "M_BAD_JSON",
        ),
        ({"notification": {"devices": [device(APNS_APP, "k")], "room_name": 7}}, "M_BAD_JSON"),
    ],
)
def test_a_malformed_notification_is_a_400_in_matrixs_shape(
    body: object, errcode: str, fake_apns: FakeApns
) -> None:
    response = notify(body if isinstance(body, bytes) else json.dumps(body).encode())

    assert response.status_code == 400
    assert response.json()["errcode"] == errcode
    assert isinstance(response.json()["error"], str)
    assert fake_apns.received == []


def test_ten_thousand_devices_are_refused_with_a_4xx(fake_apns: FakeApns) -> None:
    devices = [device(APNS_APP, f"k{i}") for i in range(10_000)]

    response = notify(message(devices))

    assert 400 <= response.status_code < 500
    assert response.json()["errcode"] in ("M_TOO_LARGE", "M_BAD_JSON")
    assert fake_apns.received == []


def test_too_many_devices_in_a_small_body_are_refused_too() -> None:
    response = notify(message([{"app_id": "a", "pushkey": str(i)} for i in range(1001)]))

    assert response.status_code == 400
    assert response.json()["errcode"] == "M_BAD_JSON"


def test_only_post_is_served() -> None:
    response = call_endpoint("GET", "/_matrix/push/v1/notify", b"")
    assert response.status_code == 405
    assert response.json()["errcode"] == "M_UNRECOGNIZED"


def test_outside_the_allowed_networks_is_403(settings: Settings, fake_apns: FakeApns) -> None:
    settings.MATRIX_NOTIFY_ALLOWED_NETWORKS = ("10.0.0.0/8", "fd00::/8")

    response = notify(message([device(APNS_APP, APNS_PUSHKEY)]))

    assert response.status_code == 403
    assert response.json()["errcode"] == "M_FORBIDDEN"
    assert fake_apns.received == []


def test_inside_the_allowed_networks_is_served(settings: Settings, fake_apns: FakeApns) -> None:
    settings.MATRIX_NOTIFY_ALLOWED_NETWORKS = ("10.0.0.0/8", "127.0.0.0/8")

    assert notify(message([device(APNS_APP, APNS_PUSHKEY)])).status_code == 200


def test_behind_the_proxy_the_forwarded_address_counts(settings: Settings) -> None:
    settings.MATRIX_NOTIFY_ALLOWED_NETWORKS = ("10.0.0.0/8",)
    settings.BOUNCER_BEHIND_PROXY = True

    inside = notify(message([device("x", "k")]), **{"X-Forwarded-For": "203.0.113.9, 10.1.2.3"})
    outside = notify(message([device("x", "k")]), **{"X-Forwarded-For": "10.1.2.3, 203.0.113.9"})

    assert inside.status_code == 200
    assert outside.status_code == 403


def test_a_homeserver_over_its_rate_limit_gets_429(settings: Settings) -> None:
    settings.MATRIX_NOTIFY_RATE_LIMIT = (2, 60)
    settings.BOUNCER_BEHIND_PROXY = True
    # An address of this test's own: the window is shared with nothing else.
    address = f"2001:db8::{secrets.token_hex(2)}"

    answers = [
        notify(message([device("x", "k")]), **{"X-Forwarded-For": address}) for _ in range(3)
    ]

    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[-1].json()["errcode"] == "M_LIMIT_EXCEEDED"
    assert answers[-1].json()["retry_after_ms"] > 0
    assert answers[-1].has_header("Retry-After")


def test_a_request_that_waited_too_long_at_the_proxy_is_a_quick_503(
    settings: Settings, fake_apns: FakeApns
) -> None:
    settings.BOUNCER_MAX_QUEUE_SECONDS = 5.0
    stamp = f"t={time.time() - 60:.3f}"

    response = notify(message([device(APNS_APP, APNS_PUSHKEY)]), **{"X-Request-Start": stamp})

    assert response.status_code == 503
    assert response.json()["errcode"] == "M_UNKNOWN"
    assert response.has_header("Retry-After")
    assert fake_apns.received == []
