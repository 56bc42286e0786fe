"""Hostile input to the registration endpoints gets a clear 4xx, never a 500, and changes nothing.

Each case here was answered 500 by a black-box fuzzer; tests/properties/ generalises them.
"""

import json
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import pytest
from django.test import Client

from registrations import keys, sealing
from registrations.models import AuditLog, RemotePushDevice, RemoteRealm, RemoteZulipServer
from tests.conftest import API, ZulipServer, make_server
from tests.registrations.test_analytics import realm_row, upload

pytestmark = pytest.mark.django_db

DEEP = "[" * 10_000 + "]" * 10_000


def assert_refused(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body: dict[str, Any] = response.json()
    assert body["result"] == "error"
    assert isinstance(body["msg"], str)
    assert isinstance(body["code"], str)
    return body


def post_form(path: str, data: dict[str, str], **extra: Any) -> Any:
    return Client().post(
        API + path, data=urlencode(data), content_type="application/x-www-form-urlencoded", **extra
    )


def register_form(**fields: str) -> dict[str, str]:
    data = {
        "zulip_org_id": str(uuid.uuid4()),
        "zulip_org_key": "k" * 64,
        "hostname": "zulip.example.net",
        "contact_email": "admin@zulip.example.net",
    }
    data.update(fields)
    return data


# --- JSON nested 10,000 deep ----------------------------------------------------------------


def test_a_deeply_nested_json_body_is_a_400(zulip_server: ZulipServer) -> None:
    response = zulip_server.client.post(
        API + "server/deactivate",
        data=DEEP,
        content_type="application/json",
        HTTP_AUTHORIZATION=zulip_server.auth,
    )
    assert_refused(response)
    assert not RemoteZulipServer.objects.get(pk=zulip_server.row.pk).deactivated


def test_a_deeply_nested_json_form_field_is_a_400(zulip_server: ZulipServer) -> None:
    response = zulip_server.post_form(
        "server/analytics", {"realm_counts": DEEP, "installation_counts": "[]"}
    )
    assert_refused(response)


def test_json_nested_just_too_deep_for_validation_is_a_400(zulip_server: ZulipServer) -> None:
    # Parses fine (below the interpreter's recursion limit) but is deeper than any parameter.
    nested: Any = {}
    for _ in range(500):
        nested = {"a": nested}
    realm = realm_row()
    realm["authentication_methods"] = nested
    assert_refused(upload(zulip_server, realms=[realm]))
    assert not RemoteRealm.objects.exists()


# --- Lone surrogates ----------------------------------------------------------------------


def test_a_lone_surrogate_in_an_unknown_parameter_name_deactivates_nothing(
    zulip_server: ZulipServer,
) -> None:
    response = zulip_server.client.post(
        API + "server/deactivate",
        data='{"\\ud800": 1}',
        content_type="application/json",
        HTTP_AUTHORIZATION=zulip_server.auth,
    )
    assert_refused(response)
    assert not RemoteZulipServer.objects.get(pk=zulip_server.row.pk).deactivated
    assert not AuditLog.objects.filter(event_type="remote_server_deactivated").exists()


def test_a_lone_surrogate_in_a_json_text_value_is_a_400(zulip_server: ZulipServer) -> None:
    assert_refused(upload(zulip_server, version="12.0\ud800"))
    assert RemoteZulipServer.objects.get(pk=zulip_server.row.pk).last_version is None


# --- Multipart and charsets -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--"),
        ("multipart/form-data; boundary=", b"junk"),
        ("multipart/form-data; boundary=\x00", b"junk"),
        ("multipart/form-data; boundary=b", b"--b\r\nnot a header\r\n\r\nv\r\n"),
        ("application/x-www-form-urlencoded; charset=utf-16", "hostname=a".encode("utf-16")),
        ("application/x-www-form-urlencoded; charset=latin-1", b"hostname=caf\xe9"),
        ("application/x-www-form-urlencoded; charset=no-such-charset", b"hostname=a"),
    ],
)
def test_malformed_form_bodies_are_a_400(content_type: str, body: bytes) -> None:
    # generic() sends the bytes as they are (post() would re-encode them to the charset).
    response = Client().generic(
        "POST", API + "server/register/transfer", data=body, content_type=content_type
    )
    assert response.status_code in (400, 415), response.content
    assert_refused(response, response.status_code)


# --- Hostnames ------------------------------------------------------------------------------


@pytest.mark.parametrize("hostname", ["[]", '["h"]', "[null]", "[1]", "[", "]", "[::1", "a]"])
@pytest.mark.parametrize(
    "endpoint", ["server/register", "server/register/transfer", "server/register/verify_challenge"]
)
def test_bracketed_hostnames_are_a_400(endpoint: str, hostname: str) -> None:
    data = register_form(hostname=hostname) if endpoint == "server/register" else {}
    data.update(hostname=hostname, access_token="token")
    assert_refused(post_form(endpoint, data))
    assert not RemoteZulipServer.objects.exists()


# --- NUL characters -----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["hostname", "contact_email", "zulip_org_id", "zulip_org_key"])
def test_a_nul_in_a_registration_field_is_a_400(field: str) -> None:
    data = register_form()
    data[field] = data[field][:-1] + "\x00"
    assert_refused(post_form("server/register", data))
    assert not RemoteZulipServer.objects.exists()


def test_a_nul_in_version_or_merge_base_is_a_400(zulip_server: ZulipServer) -> None:
    assert_refused(upload(zulip_server, version="12\x00"))
    assert_refused(upload(zulip_server, merge_base="12\x00"))


def test_a_nul_in_a_realm_name_is_a_400(zulip_server: ZulipServer) -> None:
    assert_refused(upload(zulip_server, realms=[{**realm_row(), "name": "a\x00b"}]))
    assert not RemoteRealm.objects.exists()


def test_a_nul_in_the_bouncer_public_key_is_a_400(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    response = zulip_server.post_form(
        "push/e2ee/register",
        {
            "realm_uuid": str(realm.uuid),
            "token_id": "AAAAAAAAAAA=",
            "encrypted_push_registration": "abc",
            "bouncer_public_key": "key\x00",
        },
    )
    assert_refused(response)


# --- Integers out of the columns' range -----------------------------------------------------


@pytest.mark.parametrize("level", [2**31, 2**63, 2**64 + 1, -1])
def test_an_api_feature_level_out_of_range_is_a_400(zulip_server: ZulipServer, level: int) -> None:
    assert_refused(upload(zulip_server, api_feature_level=level))
    assert RemoteZulipServer.objects.get(pk=zulip_server.row.pk).last_api_feature_level == 483


@pytest.mark.parametrize(
    ("field", "value"),
    [("id", 2**63), ("id", -(2**63) - 1), ("org_type", 2**15), ("org_type", -1), ("id", 2**80)],
)
def test_realm_integers_out_of_range_are_a_400(
    zulip_server: ZulipServer, field: str, value: int
) -> None:
    assert_refused(upload(zulip_server, realms=[{**realm_row(), field: value}]))
    assert not RemoteRealm.objects.exists()


@pytest.mark.parametrize("row_id", [2**63, 2**64 + 3, -1])
def test_analytics_row_ids_out_of_range_are_a_400(zulip_server: ZulipServer, row_id: int) -> None:
    count = {
        "id": row_id,
        "property": "messages_sent:is_bot:hour",
        "subgroup": "false",
        "end_time": 1754385290.0,
        "value": 1,
        "realm": 2,
    }
    assert_refused(upload(zulip_server, realm_counts=[count]))
    assert RemoteZulipServer.objects.get(pk=zulip_server.row.pk).last_realm_count_id == 0


def test_a_huge_integer_in_a_form_field_is_a_400(zulip_server: ZulipServer) -> None:
    assert_refused(
        zulip_server.post_form(
            "server/analytics",
            {"realm_counts": "[]", "installation_counts": "[]", "api_feature_level": "9" * 5000},
        )
    )


# --- Times --------------------------------------------------------------------------------


@pytest.mark.parametrize("created", [1e300, -1e300, float("nan"), float("inf")])
def test_realm_creation_times_out_of_range_are_a_400(
    zulip_server: ZulipServer, created: float
) -> None:
    realm = {**realm_row(), "date_created": created}
    # json.dumps writes NaN and Infinity, which Python's json reads back; Zulip never sends them.
    assert_refused(upload(zulip_server, realms=[realm]))
    assert not RemoteRealm.objects.exists()


@pytest.mark.parametrize("end_time", [float("nan"), 1e300, float("-inf")])
def test_analytics_end_times_out_of_range_are_a_400(
    zulip_server: ZulipServer, end_time: float
) -> None:
    count = {
        "id": 1,
        "property": "messages_sent:is_bot:hour",
        "subgroup": None,
        "end_time": end_time,
        "value": 1,
    }
    assert_refused(upload(zulip_server, installation_counts=[count]))


def test_a_registration_timestamp_of_400_digits_is_refused(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    public = (keys.active_key() or keys.generate_key()).public_key
    token = "ab" * 32
    sealed = sealing.seal_registration(
        {"token": token, "token_kind": "apns", "timestamp": 10**400, "ios_app_id": "org.z.Z"},
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


# --- Realm UUIDs ----------------------------------------------------------------------------


def test_an_upper_case_realm_uuid_updates_the_same_realm(zulip_server: ZulipServer) -> None:
    row = realm_row()
    assert upload(zulip_server, realms=[row]).status_code == 200
    again = upload(zulip_server, realms=[{**row, "uuid": row["uuid"].upper(), "name": "New"}])
    assert again.status_code == 200, again.content
    assert list(again.json()["realms"]) == [row["uuid"]]
    assert RemoteRealm.objects.get().name == "New"


def test_one_realm_twice_in_an_upload_in_both_cases_is_one_realm(zulip_server: ZulipServer) -> None:
    row = realm_row()
    response = upload(zulip_server, realms=[row, {**row, "uuid": row["uuid"].upper()}])
    assert response.status_code in (200, 400), response.content
    assert RemoteRealm.objects.count() <= 1


# --- Zulip's stricter analytics rules ------------------------------------------------------


def test_an_analytics_row_with_an_unknown_property_is_refused(zulip_server: ZulipServer) -> None:
    count = {
        "id": 1,
        "property": "no_such_stat::day",
        "subgroup": None,
        "end_time": 1.0,
        "value": 1,
    }
    body = assert_refused(upload(zulip_server, installation_counts=[count]))
    assert body["msg"] == "Invalid property no_such_stat::day"
    assert RemoteZulipServer.objects.get(pk=zulip_server.row.pk).last_installation_count_id == 0


def test_an_analytics_row_of_a_bouncer_only_property_is_refused(zulip_server: ZulipServer) -> None:
    count = {
        "id": 1,
        "property": "mobile_pushes_forwarded::day",
        "subgroup": None,
        "end_time": 1.0,
        "value": 1,
        "realm": 2,
    }
    assert_refused(upload(zulip_server, realm_counts=[count]))


def test_an_audit_log_row_with_an_unknown_event_type_is_refused(zulip_server: ZulipServer) -> None:
    row = {
        "id": 1,
        "realm": 2,
        "event_time": 1.0,
        "backfilled": False,
        "extra_data": "{}",
        "event_type": 9999,
    }
    body = assert_refused(upload(zulip_server, realmauditlog_rows=[row]))
    assert body["msg"] == "Invalid event type."


def test_too_many_realms_in_one_upload_are_refused(zulip_server: ZulipServer) -> None:
    from registrations.analytics import MAX_REALMS_PER_UPLOAD

    realms = [realm_row(realm_id=i) for i in range(MAX_REALMS_PER_UPLOAD + 1)]
    body = assert_refused(upload(zulip_server, realms=realms))
    assert str(MAX_REALMS_PER_UPLOAD) in body["msg"]
    assert not RemoteRealm.objects.exists()


# --- Hostnames among active servers ---------------------------------------------------------


def test_a_deactivated_servers_hostname_may_be_registered_again(db: None) -> None:
    old = make_server(hostname="zulip.example.net", deactivated=True)
    response = post_form("server/register", register_form(hostname="zulip.example.net"))
    assert response.status_code == 200, response.content
    assert RemoteZulipServer.objects.filter(hostname="zulip.example.net").count() == 2
    assert RemoteZulipServer.objects.get(pk=old.row.pk).deactivated


def test_a_server_may_not_rename_itself_onto_another_active_servers_hostname(
    zulip_server: ZulipServer, other_zulip_server: ZulipServer
) -> None:
    response = post_form(
        "server/register",
        register_form(
            zulip_org_id=zulip_server.uuid,
            zulip_org_key=zulip_server.key,
            hostname=other_zulip_server.row.hostname,
        ),
    )
    body = assert_refused(response)
    assert body["code"] == "HOSTNAME_ALREADY_IN_USE_BOUNCER_ERROR"
    assert RemoteZulipServer.objects.get(pk=zulip_server.row.pk).hostname == (
        zulip_server.row.hostname
    )


def test_the_database_refuses_two_active_servers_with_one_hostname(db: None) -> None:
    from django.db import IntegrityError, transaction

    make_server(hostname="zulip.example.net")
    make_server(hostname="zulip.example.net", deactivated=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        make_server(hostname="zulip.example.net")


def test_form_body_sizes_are_not_echoed_as_500s(zulip_server: ZulipServer) -> None:
    # A JSON body sent to a form endpoint is simply a form without parameters.
    response = zulip_server.client.post(
        API + "push/e2ee/register",
        data=json.dumps({"realm_uuid": "x"}),
        content_type="application/json",
        HTTP_AUTHORIZATION=zulip_server.auth,
    )
    assert_refused(response)


def test_a_registration_timestamp_in_the_future_is_not_an_overflow(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    public = (keys.active_key() or keys.generate_key()).public_key
    token = "cd" * 32
    sealed = sealing.seal_registration(
        {"token": token, "token_kind": "apns", "timestamp": int(time.time()), "ios_app_id": "a.b"},
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
    assert response.status_code == 200, response.content


# --- Unread request bodies ------------------------------------------------------------------


def exchange(port: int, body_size: int) -> bytes:
    """A 401-bound POST with a body of `body_size` bytes, then a second request pipelined on
    the same connection; everything the server answers until it closes or goes quiet."""
    import socket

    body = b"a=" + b"x" * (body_size - 2)
    second = b"POST /api/v1/remotes/push/register HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    second += b"Content-Length: 0\r\n\r\n"
    head = (
        "POST /api/v1/remotes/push/register HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    received = b""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(2)
        try:
            sock.sendall(head + body + second)
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:  # reset by the server while we still send, or quiet: both fine here
            pass
    return received


def test_an_answer_leaving_a_large_body_unread_closes_the_connection(tmp_path: Any) -> None:
    import os

    from tests.services import WebServer

    web = WebServer(env=dict(os.environ), log_path=tmp_path / "web.log").start()
    try:
        large = exchange(web.port, 1_000_000)
        assert large.startswith(b"HTTP/1.1 401"), large[:300]
        assert b"connection: close" in large.lower()
        assert large.count(b"HTTP/1.1 ") == 1
        # A small unread body is drained by the server; the connection stays usable.
        small = exchange(web.port, 1000)
        assert small.count(b"HTTP/1.1 401") == 2, small[:600]
        assert b"connection: close" not in small.lower()
    finally:
        web.stop()


def test_under_a_wsgi_server_no_hop_by_hop_header_is_set(zulip_server: ZulipServer) -> None:
    # wsgiref (make run's runserver) answers 500 to an application's Connection header.
    response = zulip_server.client.post(
        API + "push/register",
        data=json.dumps({"token": "x" * 200_000}),
        content_type="application/json",
        HTTP_AUTHORIZATION=zulip_server.auth,
    )
    assert response.status_code == 400
    assert "Connection" not in response


def test_the_admin_reactivates_no_server_onto_a_taken_hostname(
    admin_client: Client, zulip_server: ZulipServer
) -> None:
    url = "/admin/registrations/remotezulipserver/"
    selected = {"_selected_action": [zulip_server.row.pk], "confirmed": "yes"}
    admin_client.post(url, {"action": "deactivate", **selected})
    make_server(hostname=zulip_server.row.hostname)
    response = admin_client.post(url, {"action": "reactivate", **selected}, follow=True)
    assert "already exists" in response.content.decode()
    assert RemoteZulipServer.objects.get(pk=zulip_server.row.pk).deactivated
