"""`POST push/e2ee/register` with payloads sealed to the bouncer's real public key (spec 4).

The web server reads a plain urlencoded registration on its event loop (bouncer/endpoints.py,
registrations/devices.register_device_async) and leaves other encodings to Django's view
(register_device): every test that registers through `register` runs against both."""

import base64
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from nacl.public import PrivateKey
from pytest_django.fixtures import Settings

from registrations import keys, sealing
from registrations.models import BouncerKeyPair, RemotePushDevice, RemoteRealm
from tests.conftest import ZulipServer, at_once, call_endpoint, make_server

APNS_TOKEN = "c0ffee" * 10 + "abcd"
FCM_TOKEN = "fcm-token-" + "x" * 140


@pytest.fixture
def bouncer_key(db: None) -> BouncerKeyPair:
    return keys.generate_key()


def registration(token: str = APNS_TOKEN, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "token": token,
        "token_kind": "apns",
        "ios_app_id": "org.zulip.Zulip",
        "timestamp": int(time.time()),
    }
    data.update(overrides)
    return data


def fcm_registration(**overrides: Any) -> dict[str, Any]:
    return registration(FCM_TOKEN, **{"token_kind": "fcm", "ios_app_id": None, **overrides})


def token_id_of(token: str) -> str:
    return sealing.token_id_b64(sealing.token_id_int(token))


pytestmark = pytest.mark.django_db(transaction=True)
REGISTER_PATH = "/api/v1/remotes/push/e2ee/register"
_via = "event loop"


@pytest.fixture(autouse=True, params=["event loop", "django"])
def via(request: pytest.FixtureRequest) -> Iterator[str]:
    global _via  # what `register` posts through, for this test
    _via = request.param
    yield request.param
    _via = "event loop"


def register(
    server: ZulipServer,
    realm: RemoteRealm,
    public_key: str,
    payload: dict[str, Any],
    **fields: Any,
) -> Any:
    form: dict[str, Any] = {
        "realm_uuid": str(realm.uuid),
        "token_id": token_id_of(str(payload.get("token", ""))),
        "encrypted_push_registration": sealing.seal_registration(payload, public_key),
        "bouncer_public_key": public_key,
    }
    form.update(fields)
    body = {k: v for k, v in form.items() if v is not None}
    if _via == "django":
        return server.post_form("push/e2ee/register", body)
    return call_endpoint(
        "POST",
        REGISTER_PATH,
        urlencode(body).encode(),
        auth=server.auth,
        **{"content-type": "application/x-www-form-urlencoded"},
    )


def assert_error(response: Any, status: int, msg: str, code: str) -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert (body["result"], body["msg"], body["code"]) == ("error", msg, code)


def test_an_apns_registration_is_stored_and_answers_its_device_id(
    zulip_server: ZulipServer, realm: RemoteRealm, bouncer_key: BouncerKeyPair
) -> None:
    response = register(zulip_server, realm, bouncer_key.public_key, registration())
    assert response.status_code == 200, response.content
    device = RemotePushDevice.objects.get()
    assert response.json() == {"result": "success", "msg": "", "device_id": device.device_id}
    assert device.remote_realm == realm
    assert (device.token, device.token_kind, device.ios_app_id) == (
        APNS_TOKEN,
        "apns",
        "org.zulip.Zulip",
    )
    assert device.token_id == int.from_bytes(
        base64.b64decode(token_id_of(APNS_TOKEN)), "big", signed=True
    )
    assert device.expired_time is None


def test_a_repeated_registration_is_idempotent_and_an_fcm_one_is_a_second_row(
    zulip_server: ZulipServer, realm: RemoteRealm, bouncer_key: BouncerKeyPair
) -> None:
    first = register(zulip_server, realm, bouncer_key.public_key, registration())
    again = register(zulip_server, realm, bouncer_key.public_key, registration())
    assert first.json()["device_id"] == again.json()["device_id"]
    assert RemotePushDevice.objects.count() == 1
    fcm = register(zulip_server, realm, bouncer_key.public_key, fcm_registration())
    assert fcm.status_code == 200
    assert RemotePushDevice.objects.count() == 2
    assert RemotePushDevice.objects.get(token_kind="fcm").ios_app_id is None


def test_re_registering_an_expired_device_clears_its_expiry(
    zulip_server: ZulipServer, realm: RemoteRealm, bouncer_key: BouncerKeyPair
) -> None:
    register(zulip_server, realm, bouncer_key.public_key, registration())
    RemotePushDevice.objects.update(expired_time="2026-01-01T00:00:00Z")
    register(zulip_server, realm, bouncer_key.public_key, registration())
    assert RemotePushDevice.objects.get().expired_time is None


def test_the_pre_468_form_with_push_account_id_answers_an_integer_device_id(
    zulip_server: ZulipServer, realm: RemoteRealm, bouncer_key: BouncerKeyPair
) -> None:
    response = register(
        zulip_server,
        realm,
        bouncer_key.public_key,
        registration(),
        token_id=None,
        push_account_id="4242",
    )
    assert response.status_code == 200, response.content
    device_id = response.json()["device_id"]
    assert isinstance(device_id, int)
    # The same phone through the FL 468 form is the same row.
    assert (
        register(zulip_server, realm, bouncer_key.public_key, registration()).json()["device_id"]
        == device_id
    )


def test_a_key_from_push_registration_encryption_keys_is_accepted(
    settings: Settings, zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    private = PrivateKey.generate()
    public = base64.b64encode(bytes(private.public_key)).decode()
    settings.PUSH_REGISTRATION_ENCRYPTION_KEYS = {public: base64.b64encode(bytes(private)).decode()}
    response = register(zulip_server, realm, public, registration())
    assert response.status_code == 200, response.content


def test_an_unknown_realm_is_missing_remote_realm(
    zulip_server: ZulipServer, bouncer_key: BouncerKeyPair
) -> None:
    ghost = RemoteRealm(uuid="9aa61d0b-8ce5-488d-8e9e-fedc346e6836")
    response = register(zulip_server, ghost, bouncer_key.public_key, registration())
    assert_error(response, 403, "Organization not registered", "MISSING_REMOTE_REALM")


def test_another_servers_realm_is_a_mismatch(
    zulip_server: ZulipServer, bouncer_key: BouncerKeyPair
) -> None:
    foreign = make_server().add_realm()
    response = register(zulip_server, foreign, bouncer_key.public_key, registration())
    assert_error(
        response,
        403,
        "Your organization is registered to a different Zulip server. "
        "Please contact Zulip support for assistance in resolving this issue.",
        "REMOTE_REALM_SERVER_MISMATCH_ERROR",
    )
    assert not RemotePushDevice.objects.exists()


def test_an_unknown_or_retired_public_key_is_refused(
    zulip_server: ZulipServer, realm: RemoteRealm, bouncer_key: BouncerKeyPair
) -> None:
    other = base64.b64encode(bytes(PrivateKey.generate().public_key)).decode()
    response = register(zulip_server, realm, other, registration())
    assert_error(response, 400, "Invalid bouncer_public_key", "INVALID_BOUNCER_PUBLIC_KEY")
    keys.retire_key(public_key=bouncer_key.public_key)
    retired = register(zulip_server, realm, bouncer_key.public_key, registration())
    assert_error(retired, 400, "Invalid bouncer_public_key", "INVALID_BOUNCER_PUBLIC_KEY")
    assert not RemotePushDevice.objects.exists()


def test_a_two_day_old_registration_is_expired(
    zulip_server: ZulipServer, realm: RemoteRealm, bouncer_key: BouncerKeyPair
) -> None:
    old = registration(timestamp=int(time.time()) - 2 * 24 * 60 * 60)
    response = register(zulip_server, realm, bouncer_key.public_key, old)
    assert_error(response, 400, "Request expired", "REQUEST_EXPIRED")


@pytest.mark.parametrize(
    "payload",
    [
        registration(ios_app_id="* -- +"),
        registration(token_kind="xyz"),
        registration(ios_app_id=None),
        fcm_registration(ios_app_id="org.zulip.Zulip"),
        registration(token=""),
        registration(token="not-hex"),
        registration(timestamp="yesterday"),
        registration(token="a" * 4098),
    ],
    ids=[
        "bad-app-id",
        "bad-kind",
        "apns-without-app",
        "fcm-with-app",
        "empty-token",
        "non-hex-apns",
        "bad-timestamp",
        "too-long-token",
    ],
)
def test_invalid_push_registrations_are_bad_request(
    zulip_server: ZulipServer,
    realm: RemoteRealm,
    bouncer_key: BouncerKeyPair,
    payload: dict[str, Any],
) -> None:
    response = register(zulip_server, realm, bouncer_key.public_key, payload)
    assert_error(response, 400, "Invalid encrypted_push_registration", "BAD_REQUEST")
    assert not RemotePushDevice.objects.exists()


def test_ciphertext_that_is_not_a_sealed_box_is_bad_request(
    zulip_server: ZulipServer, realm: RemoteRealm, bouncer_key: BouncerKeyPair
) -> None:
    for junk in [
        "not base64 !!!",
        base64.b64encode(b"short").decode(),
        base64.b64encode(b"x" * 200).decode(),
    ]:
        response = register(
            zulip_server,
            realm,
            bouncer_key.public_key,
            registration(),
            encrypted_push_registration=junk,
        )
        assert_error(response, 400, "Invalid encrypted_push_registration", "BAD_REQUEST")


def test_a_token_id_that_does_not_match_the_token_is_bad_request(
    zulip_server: ZulipServer, realm: RemoteRealm, bouncer_key: BouncerKeyPair
) -> None:
    response = register(
        zulip_server, realm, bouncer_key.public_key, registration(), token_id=token_id_of("other")
    )
    assert_error(response, 400, "Invalid encrypted_push_registration", "BAD_REQUEST")


def test_a_token_id_that_is_not_base64_is_refused(
    zulip_server: ZulipServer, realm: RemoteRealm, bouncer_key: BouncerKeyPair
) -> None:
    response = register(
        zulip_server, realm, bouncer_key.public_key, registration(), token_id="192057"
    )
    assert_error(response, 400, "`token_id` is not Base64 encoded", "BAD_REQUEST")


def test_missing_and_oversized_fields_are_4xx(
    zulip_server: ZulipServer, realm: RemoteRealm, bouncer_key: BouncerKeyPair
) -> None:
    missing = register(
        zulip_server, realm, bouncer_key.public_key, registration(), bouncer_public_key=None
    )
    assert_error(missing, 400, "Missing 'bouncer_public_key' argument", "REQUEST_VARIABLE_MISSING")
    no_id = register(zulip_server, realm, bouncer_key.public_key, registration(), token_id=None)
    assert_error(no_id, 400, "Missing 'token_id' argument", "REQUEST_VARIABLE_MISSING")
    huge = register(
        zulip_server,
        realm,
        bouncer_key.public_key,
        registration(),
        encrypted_push_registration="A" * 20000,
    )
    assert huge.status_code == 400
    bad_int = register(
        zulip_server,
        realm,
        bouncer_key.public_key,
        registration(),
        token_id=None,
        push_account_id="abc",
    )
    assert_error(bad_int, 400, "push_account_id is not an integer", "BAD_REQUEST")


def test_non_utf8_form_bytes_are_a_4xx(
    zulip_server: ZulipServer, realm: RemoteRealm, bouncer_key: BouncerKeyPair
) -> None:
    response = zulip_server.client.post(
        "/api/v1/remotes/push/e2ee/register",
        data=b"realm_uuid=%ff%fe&token_id=\xff\xfe&bouncer_public_key=x&encrypted_push_registration=y",
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=zulip_server.auth,
    )
    assert 400 <= response.status_code < 500
    assert response.json()["result"] == "error"


def test_unknown_parameters_are_listed(
    zulip_server: ZulipServer, realm: RemoteRealm, bouncer_key: BouncerKeyPair
) -> None:
    response = register(
        zulip_server, realm, bouncer_key.public_key, registration(), server_uuid="x"
    )
    assert response.json()["ignored_parameters_unsupported"] == ["server_uuid"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_identical_registrations_make_one_row_and_no_error() -> None:
    server = make_server()
    realm = server.add_realm()
    public = keys.generate_key().public_key
    payload = registration()
    statuses = at_once(lambda: register(server, realm, public, payload).status_code, times=8)
    assert statuses == [200] * 8
    assert RemotePushDevice.objects.count() == 1


def test_a_wrong_key_encryption_key_is_a_503_and_fails_the_database_check(
    zulip_server: ZulipServer,
    realm: RemoteRealm,
    bouncer_key: BouncerKeyPair,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # As after a restore with the wrong BOUNCER_KEY_ENCRYPTION_KEY.
    settings.BOUNCER_KEY_ENCRYPTION_KEY = base64.b64encode(bytes(32)).decode()
    response = register(zulip_server, realm, bouncer_key.public_key, registration())
    assert_error(
        response, 503, "Push registration service misconfigured, retry later", "SERVICE_UNAVAILABLE"
    )
    assert "cannot be opened with BOUNCER_KEY_ENCRYPTION_KEY" in caplog.text
    assert not RemotePushDevice.objects.exists()
    with pytest.raises(SystemCheckError, match=r"bouncer\.E004"):
        call_command("check", databases=["default"])
    call_command("check")  # other commands (bouncer_keys, to repair it) still run


# The same refusals on both paths, compared request by request.


@pytest.mark.django_db(transaction=True)
def test_on_the_event_loop_a_registration_is_stored_and_errors_are_the_views(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    public_key = keys.generate_key().public_key
    form = {
        "realm_uuid": str(realm.uuid),
        "token_id": token_id_of(APNS_TOKEN),
        "encrypted_push_registration": sealing.seal_registration(registration(), public_key),
        "bouncer_public_key": public_key,
        "extra": "1",
    }
    urlencoded = {"content-type": "application/x-www-form-urlencoded"}
    response = call_endpoint(
        "POST", REGISTER_PATH, urlencode(form).encode(), auth=zulip_server.auth, **urlencoded
    )
    assert response.status_code == 200, response.content
    device = RemotePushDevice.objects.get()
    assert response.json() == {
        "result": "success",
        "msg": "",
        "device_id": device.device_id,
        "ignored_parameters_unsupported": ["extra"],
    }
    # The same refusals as the view's, before anything is stored.
    changes: list[tuple[dict[str, str | None], str | None]] = [
        ({"bouncer_public_key": "x"}, "Invalid bouncer_public_key"),
        ({"token_id": None}, None),
        ({"realm_uuid": "a\x00b"}, None),
    ]
    for change, msg in changes:
        merged: dict[str, str | None] = {**form, **change}
        body = {k: v for k, v in merged.items() if v is not None}
        refused = call_endpoint(
            "POST", REGISTER_PATH, urlencode(body).encode(), auth=zulip_server.auth, **urlencoded
        )
        view = zulip_server.post_form("push/e2ee/register", body)
        assert refused.status_code == view.status_code == 400, refused.content
        assert refused.json() == view.json()
        if msg is not None:
            assert refused.json()["msg"] == msg
    assert RemotePushDevice.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_multipart_registration_is_left_to_django(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    public_key = keys.generate_key().public_key
    boundary = "xYzZY"
    fields = {
        "realm_uuid": str(realm.uuid),
        "token_id": token_id_of(APNS_TOKEN),
        "encrypted_push_registration": sealing.seal_registration(registration(), public_key),
        "bouncer_public_key": public_key,
    }
    body = (
        "".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
            for k, v in fields.items()
        )
        + f"--{boundary}--\r\n"
    )
    response = call_endpoint(
        "POST",
        REGISTER_PATH,
        body.encode(),
        auth=zulip_server.auth,
        **{"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 200, response.content
    assert RemotePushDevice.objects.count() == 1


def test_a_phone_moving_to_e2ee_retires_its_legacy_token_on_either_path(
    zulip_server: ZulipServer, realm: RemoteRealm, bouncer_key: BouncerKeyPair
) -> None:
    from legacy.models import RemotePushDeviceToken

    RemotePushDeviceToken.objects.create(
        server=zulip_server.row,
        token=APNS_TOKEN.upper(),  # Zulip servers have sent either case
        kind=RemotePushDeviceToken.Kind.APNS,
        remote_realm=realm,
        user_id=7,
        ios_app_id="org.zulip.Zulip",
    )
    other = RemotePushDeviceToken.objects.create(
        server=zulip_server.row, token="ab" * 32, kind=RemotePushDeviceToken.Kind.APNS, user_id=7
    )
    response = register(zulip_server, realm, bouncer_key.public_key, registration())
    assert response.status_code == 200, response.content
    assert list(RemotePushDeviceToken.objects.all()) == [other]
    zulip_server.row.refresh_from_db()
    assert zulip_server.row.legacy_tokens_retired == 1
