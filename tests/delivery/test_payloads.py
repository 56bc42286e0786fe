"""What APNs and FCM receive, built from a Zulip server's notify request (pure functions)."""

import pytest

from bouncer.errors import BouncerError
from delivery import payloads


def test_removal_keeps_the_newest_200_message_ids_in_ascending_order() -> None:
    ids = ",".join(str(i) for i in range(249, 0, -1))
    truncated = payloads.truncate_removal({"event": "remove", "zulip_message_ids": ids})
    assert truncated["zulip_message_ids"] == ",".join(str(i) for i in range(50, 250))


def test_a_message_payload_is_not_truncated() -> None:
    payload = {"event": "message", "zulip_message_ids": "3,2,1"}
    assert payloads.truncate_removal(payload) is payload


def test_apns_body_moves_custom_to_the_top_level_and_the_rest_into_aps() -> None:
    body = payloads.legacy_apns_body(
        {
            "alert": {"title": "King Hamlet", "subtitle": "", "body": "hi"},
            "sound": "default",
            "badge": 0,
            "custom": {"zulip": {"message_ids": [45], "recipient_type": "private"}},
        }
    )
    assert body == {
        "zulip": {"message_ids": [45], "recipient_type": "private"},
        "aps": {
            "alert": {"title": "King Hamlet", "subtitle": "", "body": "hi"},
            "sound": "default",
            "badge": 0,
        },
    }


def test_apns_removal_truncates_the_ids_under_custom_zulip() -> None:
    ids = ",".join(str(i) for i in range(1, 301))
    body = payloads.legacy_apns_body(
        {"badge": 0, "custom": {"zulip": {"event": "remove", "zulip_message_ids": ids}}}
    )
    assert body["zulip"]["zulip_message_ids"].split(",")[0] == "101"
    assert body["aps"] == {"badge": 0}


def test_fcm_data_values_are_strings_as_pythons_str_makes_them() -> None:
    data = payloads.legacy_fcm_data(
        {"user_id": 10, "event": "message", "flag": True, "ids": [1, 2], "content": "hi"}
    )
    assert data == {
        "user_id": "10",
        "event": "message",
        "flag": "True",
        "ids": "[1, 2]",
        "content": "hi",
    }


@pytest.mark.parametrize(
    ("options", "event", "expected"),
    [
        ({}, "message", "high"),
        ({}, "remove", "normal"),
        ({"priority": "normal"}, "message", "normal"),
        ({"priority": "high"}, "remove", "high"),
    ],
)
def test_fcm_priority_defaults_and_explicit_values(
    options: dict[str, str], event: str, expected: str
) -> None:
    assert payloads.fcm_priority(options, {"event": event}) == expected


def test_an_invalid_fcm_priority_is_refused_with_zulips_message() -> None:
    with pytest.raises(BouncerError) as caught:
        payloads.fcm_priority({"priority": "urgent"}, {"event": "message"})
    assert caught.value.msg == "Invalid GCM option to bouncer: priority 'urgent'"
    assert caught.value.status == 400


def test_an_unknown_fcm_option_is_refused_with_zulips_message() -> None:
    with pytest.raises(BouncerError) as caught:
        payloads.fcm_priority({"priority": "high", "ttl": 5}, {"event": "message"})
    assert caught.value.msg == 'Invalid GCM options to bouncer: {"ttl":5}'


def test_test_notification_payloads_match_zulips() -> None:
    base = {
        "server": "chat.example.org",
        "realm_id": 2,
        "realm_uri": "https://chat.example.org",
        "realm_url": "https://chat.example.org",
        "realm_name": "Example",
        "user_id": 10,
    }
    apns, fcm = payloads.test_notification_payloads(base, now=1754385290)
    assert apns == {
        "zulip": {**base, "event": "test"},
        "aps": {
            "alert": {
                "title": "Test notification",
                "body": "This is a test notification from Example (https://chat.example.org).",
            },
            "sound": "default",
        },
    }
    assert fcm == {
        "server": "chat.example.org",
        "realm_id": "2",
        "realm_uri": "https://chat.example.org",
        "realm_url": "https://chat.example.org",
        "realm_name": "Example",
        "user_id": "10",
        "event": "test",
        "time": "1754385290",
    }
