"""Legacy tokens of phones that moved to E2EE, seen from legacy notify (FL 483's loop)."""

from typing import Any

import pytest

from registrations.models import RemoteRealm
from tests.conftest import ZulipServer, e2ee_register
from tests.legacy.test_retirement import APNS, USER_UUID, e2ee_row, legacy

# The notify endpoints read through their own connections: test data must be committed.
pytestmark = pytest.mark.django_db(transaction=True)


def test_the_loop_closes_through_deleted_devices_even_without_an_unregister(
    zulip_server: ZulipServer, realm: RemoteRealm, in_process_delivery: None, settings: Any
) -> None:
    settings.APNS_TOKEN_KEY_FILE = ""  # nothing is sent anyway: the token is gone
    # The server registered the phone's token in the legacy way...
    zulip_server.post_form(
        "push/register",
        {
            "user_uuid": USER_UUID,
            "user_id": "10",
            "realm_uuid": str(realm.uuid),
            "token": APNS,
            "token_kind": "1",
            "ios_app_id": "org.zulip.Zulip",
        },
    )
    # ...then for E2EE; its own push/unregister call never arrives.
    e2ee_register(zulip_server, realm, APNS)
    body = zulip_server.post_json(
        "push/notify",
        {
            "user_uuid": USER_UUID,
            "user_id": 10,
            "realm_uuid": str(realm.uuid),
            "apns_payload": {"alert": "hi"},
            "gcm_payload": {},
            "gcm_options": {},
            "android_devices": [],
            "apple_devices": [APNS],
        },
    ).json()
    assert body["deleted_devices"] == {"android_devices": [], "apple_devices": [APNS]}
    assert body["total_apple_devices"] == 0


def test_legacy_notify_never_sends_to_a_token_with_an_active_e2ee_registration(
    zulip_server: ZulipServer,
    realm: RemoteRealm,
    in_process_delivery: None,
    upstreams: Any,
    fake_apns: Any,
) -> None:
    # Before any clean-up ran: both rows exist (e.g. data from before this bouncer).
    legacy(zulip_server, APNS, 1, realm)
    e2ee_row(realm, APNS)
    body = zulip_server.post_json(
        "push/notify",
        {
            "user_uuid": USER_UUID,
            "realm_uuid": str(realm.uuid),
            "apns_payload": {"alert": "x"},
            "apple_devices": [APNS],
        },
    ).json()
    assert fake_apns.received == []
    assert body["deleted_devices"]["apple_devices"] == [APNS]
