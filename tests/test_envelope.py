"""The error envelope and authentication shared by every endpoint."""

import pytest
from django.test import Client

from tests.conftest import API, ZulipServer, basic_auth


@pytest.mark.django_db
def test_unknown_api_path_answers_404_in_zulips_envelope() -> None:
    response = Client().get(API + "no/such/endpoint")
    assert response.status_code == 404
    body = response.json()
    assert body["result"] == "error"
    assert body["code"] == "NOT_FOUND"
    assert isinstance(body["msg"], str)


def test_missing_authorization_header_is_a_401_with_basic_challenge(
    zulip_server: ZulipServer,
) -> None:
    response = Client().post(API + "push/register", {"token": "x"})
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Basic realm="zulip"'
    assert response.json() == {
        "result": "error",
        "msg": "Missing authorization header for basic auth",
        "code": "UNAUTHORIZED",
    }


def test_unknown_server_uuid_is_told_to_run_register_server(zulip_server: ZulipServer) -> None:
    role = "6cde5f7a-1f7e-4978-9716-49f69ebfc9fe"
    response = zulip_server.post_form(
        "push/unregister/all", {"user_id": "1"}, auth=basic_auth(role, "k" * 64)
    )
    assert response.status_code == 401
    assert response.json()["msg"] == (
        f"Zulip server auth failure: {role} is not registered -- "
        "did you run `manage.py register_server`?"
    )
