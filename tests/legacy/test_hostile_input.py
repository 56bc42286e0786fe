"""Hostile input to the legacy token endpoints: a clear 4xx, never a 500, and no row changed."""

from typing import Any

import pytest

from legacy.models import RemotePushDeviceToken
from registrations import keys, sealing
from registrations.models import RemotePushDevice, RemoteRealm
from tests.conftest import ZulipServer, call_endpoint

pytestmark = pytest.mark.django_db

APNS = "ab" * 32


def assert_refused(response: Any) -> dict[str, Any]:
    assert response.status_code == 400, response.content
    body: dict[str, Any] = response.json()
    assert body["result"] == "error"
    assert isinstance(body["code"], str)
    return body


def register(server: ZulipServer, **fields: str) -> Any:
    data = {"token": APNS, "token_kind": "1", "user_id": "5", "ios_app_id": "org.zulip.Zulip"}
    if fields.get("token_kind") == "2":
        del data["ios_app_id"]
    data.update(fields)
    return server.post_form("push/register", data)


@pytest.mark.parametrize(
    "token",
    [
        f"{APNS[:10]} {APNS[10:]}",
        APNS + "\n",
        APNS + "\r",
        "\t" + APNS,
        f"{APNS[:8]}\r\n{APNS[8:]}",
    ],
)
def test_apns_tokens_with_whitespace_are_refused(zulip_server: ZulipServer, token: str) -> None:
    assert_refused(register(zulip_server, token=token))
    assert not RemotePushDeviceToken.objects.exists()


@pytest.mark.parametrize("token", ["fcm token", "fcm\ntoken", "fcm\rtoken", "fcm\x7ftoken", " x"])
def test_fcm_tokens_with_whitespace_or_controls_are_refused(
    zulip_server: ZulipServer, token: str
) -> None:
    assert_refused(register(zulip_server, token=token, token_kind="2"))
    assert not RemotePushDeviceToken.objects.exists()


def test_a_nul_in_a_token_is_a_400(zulip_server: ZulipServer) -> None:
    assert_refused(register(zulip_server, token=APNS + "\x00"))
    assert_refused(register(zulip_server, token="fcm\x00", token_kind="2"))
    assert not RemotePushDeviceToken.objects.exists()


@pytest.mark.parametrize("user_id", [str(2**63), str(2**64 + 1), "-1", "9" * 5000])
def test_user_ids_out_of_range_are_a_400(zulip_server: ZulipServer, user_id: str) -> None:
    assert_refused(register(zulip_server, user_id=user_id))
    assert_refused(zulip_server.post_form("push/unregister/all", {"user_id": user_id}))


@pytest.mark.parametrize("kind", [str(2**15), str(2**63), "-1"])
def test_token_kinds_out_of_range_are_a_400(zulip_server: ZulipServer, kind: str) -> None:
    assert_refused(register(zulip_server, token_kind=kind))


def test_legacy_tokens_per_user_are_capped(zulip_server: ZulipServer) -> None:
    from legacy.services import MAX_TOKENS_PER_USER

    RemotePushDeviceToken.objects.bulk_create(
        RemotePushDeviceToken(server=zulip_server.row, user_id=5, kind=2, token=f"fcm{i}")
        for i in range(MAX_TOKENS_PER_USER)
    )
    body = assert_refused(register(zulip_server, token="one-more", token_kind="2"))
    assert str(MAX_TOKENS_PER_USER) in body["msg"]
    # Registering a token the user already has is still fine at the cap.
    again = register(zulip_server, token="fcm0", token_kind="2")
    assert again.status_code == 200, again.content
    # Another user is not affected.
    other = register(zulip_server, token="fcm0", token_kind="2", user_id="6")
    assert other.status_code == 200, other.content
    assert RemotePushDeviceToken.objects.count() == MAX_TOKENS_PER_USER + 1


@pytest.mark.parametrize("token", [f"{APNS[:10]} {APNS[10:]}", APNS + "\n", "fcm\r\ntoken"])
def test_e2ee_registrations_of_tokens_with_whitespace_are_refused(
    zulip_server: ZulipServer, realm: RemoteRealm, token: str
) -> None:
    import time

    kind = "fcm" if token.startswith("fcm") else "apns"
    public = (keys.active_key() or keys.generate_key()).public_key
    sealed = sealing.seal_registration(
        {
            "token": token,
            "token_kind": kind,
            "timestamp": int(time.time()),
            "ios_app_id": "org.zulip.Zulip" if kind == "apns" else None,
        },
        public,
    )
    response = zulip_server.post_form(
        "push/e2ee/register",
        {
            "realm_uuid": str(realm.uuid),
            "token_id": sealing.token_id_b64(sealing.token_id_int(token)),
            "encrypted_push_registration": sealed,
            "bouncer_public_key": public,
        },
    )
    assert_refused(response)
    assert not RemotePushDevice.objects.exists()


# The notify endpoints read through their own connections: test data must be committed.
@pytest.mark.django_db(transaction=True)
def test_a_lone_surrogate_in_a_legacy_apns_payload_is_a_400(zulip_server: ZulipServer) -> None:
    response = call_endpoint(
        "POST",
        "/api/v1/remotes/push/notify",
        b'{"user_id": 5, "apns_payload": {"alert": "\\ud800"}, "apple_devices": []}',
        auth=zulip_server.auth,
    )
    assert_refused(response)


@pytest.mark.django_db(transaction=True)
def test_the_test_notification_payload_refuses_unknown_keys(
    zulip_server: ZulipServer,
) -> None:
    response = zulip_server.post_json(
        "push/test_notification",
        {
            "token": APNS,
            "token_kind": 1,
            "user_id": 5,
            "base_payload": {"server": "x", "realm_id": 1},
            "no_such_key": 1,
        },
    )
    body = assert_refused(response)
    assert "no_such_key" in body["msg"]


def test_an_ios_app_id_with_a_trailing_newline_is_refused(zulip_server: ZulipServer) -> None:
    assert_refused(register(zulip_server, ios_app_id="org.zulip.Zulip\n"))
    assert not RemotePushDeviceToken.objects.exists()
