"""Legacy token endpoints: register, unregister, unregister/all (spec part 1 section 3)."""

import uuid
from typing import Any

import pytest

from legacy.models import RemotePushDeviceToken
from registrations.models import RemoteRealm
from tests.conftest import ZulipServer, at_once, make_server

APNS = "c0ffee" * 10 + "abcd"
USER_UUID = "1e8f2d5a-7bd1-4bb1-9a33-0a4f8e3c2a11"


def register(server: ZulipServer, **fields: Any) -> Any:
    # What a current Zulip server sends (server_uuid is ignored by the bouncer).
    form = {
        "server_uuid": server.uuid,
        "user_uuid": USER_UUID,
        "user_id": "10",
        "token": APNS,
        "token_kind": "1",
        "ios_app_id": "org.zulip.Zulip",
    }
    form.update(fields)
    return server.post_form("push/register", {k: v for k, v in form.items() if v is not None})


def assert_error(response: Any, msg: str, status: int = 400, code: str = "BAD_REQUEST") -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert (body["msg"], body["code"]) == (msg, code)


def test_register_stores_a_uuid_only_row_when_both_identities_are_sent(
    zulip_server: ZulipServer,
) -> None:
    response = register(zulip_server)
    assert response.status_code == 200
    assert response.json() == {
        "result": "success",
        "msg": "",
        "ignored_parameters_unsupported": ["server_uuid"],
    }
    row = RemotePushDeviceToken.objects.get()
    assert (row.user_id, str(row.user_uuid), row.kind, row.token) == (None, USER_UUID, 1, APNS)
    assert row.ios_app_id == "org.zulip.Zulip"


def test_an_id_only_row_is_replaced_by_a_uuid_row_when_both_are_sent(
    zulip_server: ZulipServer,
) -> None:
    register(zulip_server, user_uuid=None)
    assert RemotePushDeviceToken.objects.get().user_id == 10
    register(zulip_server)
    row = RemotePushDeviceToken.objects.get()
    assert (row.user_id, str(row.user_uuid)) == (None, USER_UUID)


def test_register_is_idempotent_and_apns_tokens_ignore_case(zulip_server: ZulipServer) -> None:
    register(zulip_server)
    register(zulip_server)
    register(zulip_server, token=APNS.upper())
    assert RemotePushDeviceToken.objects.count() == 1
    register(zulip_server, token="fcm-token", token_kind="2", ios_app_id=None)
    register(zulip_server, token="FCM-TOKEN", token_kind="2", ios_app_id=None)
    assert RemotePushDeviceToken.objects.filter(kind=2).count() == 2


@pytest.mark.parametrize(
    ("fields", "msg"),
    [
        ({"token_kind": "17"}, "Invalid token type"),
        ({"token": "x" * 5000}, "Empty or invalid length token"),
        ({"token": ""}, "Empty or invalid length token"),
        ({"token": "not-hex"}, "Invalid APNS token"),
        ({"ios_app_id": None}, "Missing ios_app_id"),
        ({"ios_app_id": "* -- +"}, "ios_app_id has invalid format"),
        ({"user_id": None, "user_uuid": None}, "Missing user_id or user_uuid"),
        ({"token_kind": "two"}, "token_kind is not an integer"),
        ({"user_uuid": "not-a-uuid"}, "Invalid user_uuid"),
        ({"token": None}, "Missing 'token' argument"),
    ],
)
def test_invalid_registrations_get_zulips_messages(
    zulip_server: ZulipServer, fields: dict[str, Any], msg: str
) -> None:
    response = register(zulip_server, **fields)
    code = "REQUEST_VARIABLE_MISSING" if msg.startswith("Missing '") else "BAD_REQUEST"
    assert_error(response, msg, code=code)
    assert not RemotePushDeviceToken.objects.exists()


def test_maximum_length_tokens_register_without_error(zulip_server: ZulipServer) -> None:
    assert register(zulip_server, token="ab" * 2048).status_code == 200
    fcm = "".join(f"{i:04x}" for i in range(1024))  # 4096 characters that barely compress
    assert register(zulip_server, token=fcm, token_kind="2", ios_app_id=None).status_code == 200
    assert RemotePushDeviceToken.objects.count() == 2


def test_a_known_realm_is_linked(zulip_server: ZulipServer, realm: RemoteRealm) -> None:
    register(zulip_server, realm_uuid=str(realm.uuid))
    assert RemotePushDeviceToken.objects.get().remote_realm == realm
    realm.refresh_from_db()
    assert realm.last_request_datetime is not None


def test_an_unknown_realm_is_tolerated(zulip_server: ZulipServer) -> None:
    response = register(zulip_server, realm_uuid=str(uuid.uuid4()))
    assert response.status_code == 200
    assert RemotePushDeviceToken.objects.get().remote_realm is None


def test_another_servers_realm_is_refused_and_nothing_stored(zulip_server: ZulipServer) -> None:
    foreign = make_server().add_realm()
    response = register(zulip_server, realm_uuid=str(foreign.uuid))
    assert_error(
        response,
        "Your organization is registered to a different Zulip server. "
        "Please contact Zulip support for assistance in resolving this issue.",
        status=403,
        code="REMOTE_REALM_SERVER_MISMATCH_ERROR",
    )
    assert not RemotePushDeviceToken.objects.exists()


def test_unregister_removes_the_token_whatever_its_case(zulip_server: ZulipServer) -> None:
    register(zulip_server)
    response = zulip_server.post_form(
        "push/unregister",
        {"token": APNS.upper(), "token_kind": "1", "user_uuid": USER_UUID, "user_id": "10"},
    )
    assert response.status_code == 200
    assert not RemotePushDeviceToken.objects.exists()


def test_unregister_of_an_unknown_token_is_token_does_not_exist(zulip_server: ZulipServer) -> None:
    response = zulip_server.post_form(
        "push/unregister", {"token": APNS, "token_kind": "1", "user_id": "10"}
    )
    assert_error(response, "Token does not exist")


def test_unregister_without_identity_is_a_400_not_a_500(zulip_server: ZulipServer) -> None:
    response = zulip_server.post_form("push/unregister", {"token": APNS, "token_kind": "1"})
    assert_error(response, "Missing user_id or user_uuid")
    missing = zulip_server.post_form("push/unregister", {"token_kind": "1", "user_id": "1"})
    assert_error(missing, "Missing 'token' argument", code="REQUEST_VARIABLE_MISSING")


def test_unregister_leaves_other_users_and_servers_alone(zulip_server: ZulipServer) -> None:
    other_server = make_server()
    register(zulip_server)
    register(other_server)
    register(zulip_server, user_uuid=str(uuid.uuid4()), user_id="11")
    zulip_server.post_form(
        "push/unregister", {"token": APNS, "token_kind": "1", "user_uuid": USER_UUID}
    )
    assert RemotePushDeviceToken.objects.count() == 2
    assert RemotePushDeviceToken.objects.filter(server=other_server.row).count() == 1


def test_unregister_all_removes_every_token_of_the_user(zulip_server: ZulipServer) -> None:
    register(zulip_server)
    register(zulip_server, token="fcm-a", token_kind="2", ios_app_id=None)
    register(zulip_server, user_uuid=str(uuid.uuid4()), user_id="11")
    response = zulip_server.post_form(
        "push/unregister/all", {"user_uuid": USER_UUID, "user_id": "10"}
    )
    assert response.status_code == 200
    assert RemotePushDeviceToken.objects.count() == 1
    # Nothing left to remove is still a success.
    again = zulip_server.post_form("push/unregister/all", {"user_uuid": USER_UUID})
    assert again.status_code == 200


@pytest.mark.django_db(transaction=True)
def test_concurrent_identical_registrations_make_one_row() -> None:
    server = make_server()
    statuses = at_once(lambda: register(server).status_code, times=8)
    assert statuses == [200] * 8
    assert RemotePushDeviceToken.objects.count() == 1
