"""`POST server/register`, as `manage.py register_server` sends it (spec part 1 section 2.1)."""

import secrets
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from registrations.models import AuditLog, RemoteZulipServer
from tests.conftest import API, ZulipServer, make_server

pytestmark = pytest.mark.django_db


def register(**overrides: Any) -> Any:
    params = {
        "zulip_org_id": str(uuid.uuid4()),
        "zulip_org_key": secrets.token_hex(32),
        "hostname": "chat.zulip.example.org",
        "contact_email": "admin@zulip.example.org",
    }
    params.update(overrides)
    params = {k: v for k, v in params.items() if v is not None}
    return Client().post(
        API + "server/register",
        data=urlencode(params),
        content_type="application/x-www-form-urlencoded",
    )


def assert_error(response: Any, status: int, msg: str, code: str = "BAD_REQUEST") -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert (body["result"], body["msg"], body["code"]) == ("error", msg, code)


def test_a_new_server_is_created_with_its_key_stored_only_as_a_hash() -> None:
    server_uuid, key = str(uuid.uuid4()), secrets.token_hex(32)
    response = register(
        zulip_org_id=server_uuid, zulip_org_key=key, hostname="zulip.example.net:8443"
    )
    assert response.status_code == 200
    assert response.json() == {"result": "success", "msg": "", "created": True}
    row = RemoteZulipServer.objects.get(uuid=server_uuid)
    assert row.hostname == "zulip.example.net:8443"
    assert row.contact_email == "admin@zulip.example.org"
    assert key not in row.api_key_hash
    assert row.api_key_matches(key)
    assert row.last_request_datetime is not None
    assert AuditLog.objects.filter(server=row, event_type="remote_server_created").count() == 1


def test_registering_again_updates_hostname_and_email() -> None:
    server_uuid, key = str(uuid.uuid4()), secrets.token_hex(32)
    register(zulip_org_id=server_uuid, zulip_org_key=key)
    response = register(
        zulip_org_id=server_uuid,
        zulip_org_key=key,
        hostname="new.zulip.example.org",
        contact_email="ops@zulip.example.org",
    )
    assert response.json() == {"result": "success", "msg": "", "created": False}
    row = RemoteZulipServer.objects.get(uuid=server_uuid)
    assert (row.hostname, row.contact_email) == ("new.zulip.example.org", "ops@zulip.example.org")


def test_new_org_key_rotates_the_key() -> None:
    server_uuid, key, new_key = str(uuid.uuid4()), secrets.token_hex(32), secrets.token_hex(32)
    register(zulip_org_id=server_uuid, zulip_org_key=key)
    response = register(zulip_org_id=server_uuid, zulip_org_key=key, new_org_key=new_key)
    assert response.json()["created"] is False
    row = RemoteZulipServer.objects.get(uuid=server_uuid)
    assert row.api_key_matches(new_key)
    assert not row.api_key_matches(key)
    assert AuditLog.objects.filter(server=row, event_type="remote_server_key_rotated").exists()
    # The old key no longer updates the registration.
    assert register(zulip_org_id=server_uuid, zulip_org_key=key).status_code == 400


def test_a_wrong_key_for_a_known_uuid_is_invalid_zulip_server_with_role() -> None:
    server_uuid = str(uuid.uuid4())
    register(zulip_org_id=server_uuid)
    response = register(zulip_org_id=server_uuid, zulip_org_key="x" * 64)
    assert_error(
        response,
        400,
        f"Zulip server auth failure: key does not match role {server_uuid}",
        "INVALID_ZULIP_SERVER",
    )
    assert response.json()["role"] == server_uuid


def test_a_deactivated_server_cannot_register_again() -> None:
    server = make_server(deactivated=True)
    response = register(zulip_org_id=server.uuid, zulip_org_key=server.key)
    assert response.status_code == 401
    assert response.json()["msg"] == (
        "The mobile push notification service registration for your server has been deactivated"
    )


def test_a_new_uuid_with_a_hostname_in_use_is_told_so() -> None:
    make_server(hostname="taken.zulip.example.org")
    response = register(hostname="taken.zulip.example.org")
    assert_error(
        response,
        400,
        "A server with hostname taken.zulip.example.org already exists",
        "HOSTNAME_ALREADY_IN_USE_BOUNCER_ERROR",
    )
    assert response.json()["hostname"] == "taken.zulip.example.org"


@pytest.mark.parametrize(
    ("field", "value", "msg"),
    [
        ("zulip_org_id", "abc", "zulip_org_id is not length 36"),
        ("zulip_org_key", "k" * 63, "zulip_org_key is not length 64"),
        ("new_org_key", "k" * 65, "new_org_key is not length 64"),
        ("zulip_org_id", "18cedb98-5222-5f34-50a9-fc418e1ba972", "Invalid UUID"),
        ("zulip_org_id", "6CDE5F7A-1F7E-4978-9716-49F69EBFC9FE", "Invalid UUID"),
        (
            "hostname",
            "zulip.example.org/path",
            "zulip.example.org/path contains invalid components (e.g., path, query, fragment).",
        ),
        (
            "hostname",
            "zulip.example.org?x=1",
            "zulip.example.org?x=1 contains invalid components (e.g., path, query, fragment).",
        ),
        ("hostname", "not a host", "not a host is not a valid hostname"),
        ("hostname", "h" * 129, "hostname is too long (limit: 128 characters)"),
        ("contact_email", "not-an-email", "Enter a valid email address."),
        ("contact_email", "admin@example.com", "Invalid email address."),
    ],
)
def test_invalid_registration_fields_get_zulips_messages(field: str, value: str, msg: str) -> None:
    assert_error(register(**{field: value}), 400, msg)
    assert not RemoteZulipServer.objects.exists()


@pytest.mark.parametrize("field", ["zulip_org_id", "zulip_org_key", "hostname", "contact_email"])
def test_a_missing_field_is_request_variable_missing(field: str) -> None:
    response = register(**{field: None})
    assert_error(response, 400, f"Missing '{field}' argument", "REQUEST_VARIABLE_MISSING")
    assert response.json()["var_name"] == field


def test_unknown_parameters_are_accepted_and_listed() -> None:
    response = register(agree_to_terms_of_service="true")
    assert response.status_code == 200
    assert response.json()["ignored_parameters_unsupported"] == ["agree_to_terms_of_service"]


def test_get_is_not_allowed_in_the_envelope() -> None:
    response = Client().get(API + "server/register")
    assert response.status_code == 405
    assert response.json()["result"] == "error"


def test_closed_registration_refuses_unknown_servers(settings: Settings) -> None:
    settings.BOUNCER_OPEN_REGISTRATION = False
    response = register()
    assert response.status_code == 403
    assert response.json()["code"] == "REGISTRATION_CLOSED"
    assert not RemoteZulipServer.objects.exists()


def test_closed_registration_admits_a_server_the_operator_added(
    settings: Settings, zulip_server: ZulipServer
) -> None:
    settings.BOUNCER_OPEN_REGISTRATION = False
    response = register(
        zulip_org_id=zulip_server.uuid,
        zulip_org_key=zulip_server.key,
        hostname=zulip_server.row.hostname,
    )
    assert response.json() == {"result": "success", "msg": "", "created": False}


def test_the_dns_check_is_off_by_default(settings: Settings) -> None:
    # With the check on, this domain would be looked up; off, no network is touched.
    assert settings.BOUNCER_CHECK_EMAIL_DNS is False
    assert register(contact_email="admin@no-such-domain.invalid").status_code == 200


def test_the_dns_check_answers_within_its_timeout_and_never_fails_the_request(
    settings: Settings,
) -> None:
    settings.BOUNCER_CHECK_EMAIL_DNS = True
    started = time.monotonic()
    response = register(contact_email="admin@no-such-domain.invalid")
    assert time.monotonic() - started < 10
    # This sandbox has no DNS: the lookup either says the domain does not exist (400) or
    # cannot ask anyone (registration allowed, logged). Never a 500.
    if response.status_code == 400:
        assert response.json()["msg"] == "no-such-domain.invalid does not exist"
    else:
        assert response.status_code == 200
