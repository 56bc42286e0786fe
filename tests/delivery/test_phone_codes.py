"""The codes a phone gets for an E2EE test notification, given the bouncer's answers."""

from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from registrations import sealing
from registrations.models import RemotePushDevice, RemoteRealm
from tests.conftest import API, ZulipServer, basic_auth
from tests.fakes.apns import FakeApns
from tests.zulip_server_side import (
    ADMIN_ACTION_REQUIRED,
    FAILED_TO_CONNECT_BOUNCER,
    NO_ACTIVE_PUSH_DEVICE,
    e2ee_test_notification_result,
)

pytestmark = [
    pytest.mark.usefixtures("in_process_delivery", "upstreams"),
    # The notify endpoints read through their own connections: test data must be committed.
    pytest.mark.django_db(transaction=True),
]
TOKEN = "c0ffee" * 10 + "abcd"
TOKEN_ID = sealing.token_id_b64(sealing.token_id_int(TOKEN))


def notify_body(realm_uuid: str) -> dict[str, Any]:
    return {
        "realm_uuid": realm_uuid,
        "push_requests": [
            {
                "token_id": TOKEN_ID,
                "http_headers": {"apns_priority": 10, "apns_push_type": "alert"},
                "payload": {"push_key_id": 1, "encrypted_data": "abc"},
            }
        ],
    }


def phone_result(response: Any) -> Any:
    return e2ee_test_notification_result(
        status=response.status_code, body=response.json(), requested_token_ids=[TOKEN_ID]
    )


def add_device(realm: RemoteRealm, **fields: Any) -> None:
    RemotePushDevice.objects.create(
        remote_realm=realm,
        token=TOKEN,
        token_kind="apns",
        token_id=sealing.token_id_int(TOKEN),
        ios_app_id="org.zulip.Zulip",
        **fields,
    )


def test_a_delivered_test_notification_is_a_success(
    zulip_server: ZulipServer, realm: RemoteRealm, fake_apns: FakeApns
) -> None:
    add_device(realm)
    response = zulip_server.post_json("push/e2ee/notify", notify_body(str(realm.uuid)))
    assert phone_result(response) is None
    assert fake_apns.delivered == 1


def test_every_device_dead_is_no_active_push_device(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    add_device(realm, expired_time=timezone.now())
    response = zulip_server.post_json("push/e2ee/notify", notify_body(str(realm.uuid)))
    assert phone_result(response) == NO_ACTIVE_PUSH_DEVICE


def test_an_unknown_realm_is_admin_action_required(zulip_server: ZulipServer) -> None:
    response = zulip_server.post_json(
        "push/e2ee/notify", notify_body("9aa61d0b-8ce5-488d-8e9e-fedc346e6836")
    )
    assert phone_result(response) == ADMIN_ACTION_REQUIRED


def test_bad_credentials_reach_the_phone_as_the_bouncers_auth_message(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    # Zulip's bouncer re-wraps credential failures as 401 UNAUTHORIZED, which a Zulip server
    # passes on as a plain error with the message (only INVALID_ZULIP_SERVER would make it
    # ADMIN_ACTION_REQUIRED). We answer exactly as Zulip's bouncer does.
    response = zulip_server.post_json(
        "push/e2ee/notify",
        notify_body(str(realm.uuid)),
        auth=basic_auth(zulip_server.uuid, "x" * 64),
    )
    result = phone_result(response)
    assert result is not None
    assert (result.code, result.msg) == (
        "BAD_REQUEST",
        f"Zulip server auth failure: key does not match role {zulip_server.uuid}",
    )


def test_an_unreachable_bouncer_is_failed_to_connect_bouncer() -> None:
    assert (
        e2ee_test_notification_result(status=None, body=None, requested_token_ids=[TOKEN_ID])
        == FAILED_TO_CONNECT_BOUNCER
    )
    # And the bouncer's own unknown paths stay in the envelope, so no answer is unparseable.
    assert Client().get(API + "push/e2ee/nothing").json()["result"] == "error"
