"""Payloads as Sygnal builds them (its own tests' expectations), without the network."""

import json
from typing import Any

import pytest

from delivery.limits import APNS_MAX_BYTES
from delivery.types import compact_json
from matrix import payloads
from matrix.notification import Device, InvalidNotification, Notification, parse_body
from tests.matrix.conftest import message

DEFAULT_PAYLOAD = {
    "aps": {"mutable-content": 1, "alert": {"loc-key": "SINGLE_UNREAD", "loc-args": []}}
}


def one(body: dict[str, Any], **device: Any) -> tuple[Notification, Device]:
    """The notification, sent to one device (Sygnal's DEVICE_EXAMPLE, with `device`'s keys)."""
    body["notification"]["devices"] = [{"app_id": "a", "pushkey": "spqr", **device}]
    n = parse_body(body)
    return n, n.devices[0]


def apns(body: dict[str, Any], **device: Any) -> Any:
    n, d = one(body, **device)
    return payloads.apns_payload(n, d)


def test_a_full_notification_merges_the_default_payload() -> None:
    # Sygnal: test_expected_full_with_default_payload.
    assert apns(message([]), data={"default_payload": DEFAULT_PAYLOAD}) == {
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
            "mutable-content": 1,
        },
    }


def test_event_id_only_with_the_default_payload() -> None:
    # Sygnal: test_expected_event_id_only_with_default_payload.
    body = {
        "notification": {
            "room_id": "!slw48wfj34rtnrf:example.com",
            "event_id": "$qTOWWTEL48yPm3uT-gdNhFcoHxfKbZuqRVnnWWSkGBs",
            "counts": {"unread": 2},
        }
    }
    assert apns(body, data={"default_payload": DEFAULT_PAYLOAD}) == {
        "room_id": "!slw48wfj34rtnrf:example.com",
        "event_id": "$qTOWWTEL48yPm3uT-gdNhFcoHxfKbZuqRVnnWWSkGBs",
        "unread_count": 2,
        "aps": {"alert": {"loc-key": "SINGLE_UNREAD", "loc-args": []}, "mutable-content": 1},
    }


def test_a_badge_only_notification_is_only_the_badge() -> None:
    # Sygnal: test_expected_badge_only_with_default_payload.
    body = {"notification": {"id": "", "type": None, "sender": "", "counts": {"unread": 2}}}
    assert apns(body, data={"default_payload": DEFAULT_PAYLOAD}) == {"aps": {"badge": 2}}


def test_nothing_to_say_is_nothing_sent() -> None:
    body = {"notification": {"type": "m.room.member", "membership": "join"}}
    assert apns(body) is None


def test_without_badge_counts_there_is_no_badge() -> None:
    n, d = one(message([]))
    payload = payloads.apns_payload(n, d, send_badge_counts=False)
    assert payload is not None
    assert "badge" not in payload["aps"]


@pytest.mark.parametrize(
    ("fields", "loc_key", "loc_args"),
    [
        (
            {"content": {"msgtype": "m.emote", "body": "waves"}},
            "ACTION_FROM_USER_IN_ROOM",
            ["Mission Control", "Major Tom", "waves"],
        ),
        (
            {"content": {"msgtype": "m.image", "body": "pic.png"}},
            "IMAGE_FROM_USER_IN_ROOM",
            ["Major Tom", "pic.png", "Mission Control"],
        ),
        (
            {"room_name": None, "room_alias": None},
            "MSG_FROM_USER_WITH_CONTENT",
            ["Major Tom", "I'm floating in a most peculiar way."],
        ),
        (
            {"room_name": None, "content": {}},
            "MSG_FROM_USER_IN_ROOM",
            ["Major Tom", "#exampleroom:matrix.org"],
        ),
        (
            {"type": "m.call.invite", "content": {"offer": {"sdp": "v=0\nm=video 9"}}},
            "VIDEO_CALL_FROM_USER",
            ["Major Tom"],
        ),
        (
            {"type": "m.room.member", "membership": "invite", "user_is_target": True},
            "USER_INVITE_TO_NAMED_ROOM",
            ["Major Tom", "Mission Control"],
        ),
        (
            {"type": "org.example.custom", "sender_display_name": None},
            "MSG_FROM_USER",
            ["@exampleuser:matrix.org"],
        ),
    ],
)
def test_the_alert_follows_sygnals_localisation_keys(
    fields: dict[str, Any], loc_key: str, loc_args: list[str]
) -> None:
    payload = apns(message([], **fields))
    assert payload["aps"]["alert"] == {"loc-key": loc_key, "loc-args": loc_args}


def test_a_long_message_is_cut_to_fit_apples_limit() -> None:
    payload = apns(message([], content={"msgtype": "m.text", "body": "é" * 5000}))

    assert len(compact_json(payload).encode()) <= APNS_MAX_BYTES
    body = payload["aps"]["alert"]["loc-args"][2]
    assert set(body) == {"é"}
    # What fits is kept: the cut is close to the limit, not far below it.
    assert len(compact_json(payload).encode()) > APNS_MAX_BYTES - 16


def test_a_default_payload_that_is_not_an_object_is_refused() -> None:
    n, d = one(message([]), data={"default_payload": None})
    with pytest.raises(payloads.BadDefaultPayload):
        payloads.apns_payload(n, d)
    with pytest.raises(payloads.BadDefaultPayload):
        payloads.fcm_data(n, d)


def test_base64_pushkeys_go_to_apple_as_hex() -> None:
    # Sygnal's example pushkey "spqr" is the token b29aab.
    assert payloads.apns_token("spqr", convert_to_hex=True) == "b29aab"
    assert payloads.apns_token("abcd01", convert_to_hex=False) == "abcd01"
    assert payloads.apns_token("!!!x", convert_to_hex=True) is None


def test_fcm_fields_are_cut_to_1024_bytes_on_whole_characters() -> None:
    # Sygnal: a 3-byte character across the cut is left out whole, then "…".
    value = "x" * 1020 + "⚑" + "y" * 100
    assert payloads.truncate_str(value) == "x" * 1020 + "…"
    assert payloads.truncate_str("short") == "short"


def test_fcm_data_values_are_strings_and_zero_counts_are_left_out() -> None:
    n, d = one(
        message([], counts={"unread": 0, "missed_calls": 4}),
        data={"default_payload": {"n": 1, "s": "t", "o": {"k": [1]}}},
    )
    data = payloads.fcm_data(n, d)

    assert data is not None
    assert all(isinstance(v, str) for v in data.values())
    assert (data["n"], data["s"], json.loads(data["o"])) == ("1", "t", {"k": [1]})
    assert "unread" not in data
    assert data["missed_calls"] == "4"


def test_a_badge_only_fcm_notification_without_counts_sends_nothing() -> None:
    n, d = one({"notification": {"counts": {}}})
    assert payloads.fcm_data(n, d) is None


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"notification": None},
        {"notification": {"devices": "x"}},
        {"notification": {"devices": [{"app_id": "a", "pushkey": "k", "pushkey_ts": "1"}]}},
        {"notification": {"devices": [{"app_id": "a", "pushkey": "k", "tweaks": []}]}},
        {
            "notification": {
                "devices": [{"app_id": "a", "pushkey": "k"}],
                "counts": {"unread": True},
            }
        },
        {"notification": {"devices": [{"app_id": "a", "pushkey": "k"}], "content": "text"}},
        {"notification": {"devices": [{"app_id": "a", "pushkey": "k"}], "user_is_target": "yes"}},
    ],
)
def test_malformed_notifications_are_invalid(body: Any) -> None:
    with pytest.raises(InvalidNotification):
        parse_body(body)
