"""Analytics upload and status: how realms come to exist (spec part 1 section 8)."""

import json
import uuid
from typing import Any

from registrations.models import RemoteRealm
from tests.conftest import ZulipServer, make_server


def realm_row(realm_id: int = 2, realm_uuid: str | None = None) -> dict[str, Any]:
    # The shape Zulip 12's send_server_data_to_push_bouncer sends (RealmDataForAnalytics).
    return {
        "id": realm_id,
        "host": "chat.example.org",
        "url": "https://chat.example.org",
        "name": "Example",
        "org_type": 0,
        "date_created": 1754385290.123,
        "deactivated": False,
        "is_system_bot_realm": False,
        "authentication_methods": {"Email": True, "Google": False},
        "uuid": realm_uuid or str(uuid.uuid4()),
        "uuid_owner_secret": "zuliprealm_secret",
    }


def upload(server: ZulipServer, **fields: Any) -> Any:
    data = {
        "realm_counts": [],
        "installation_counts": [],
        "realmauditlog_rows": [],
        "realms": [realm_row()],
        "version": "12.0",
        "merge_base": "12.0",
        "api_feature_level": 483,
    }
    data.update(fields)
    # Every field is JSON text in the form, as orjson.dumps(...).decode() makes it.
    return server.post_form("server/analytics", {k: json.dumps(v) for k, v in data.items()})


def test_status_starts_at_zero(zulip_server: ZulipServer) -> None:
    response = zulip_server.get("server/analytics/status")
    assert response.json() == {
        "result": "success",
        "msg": "",
        "last_realm_count_id": 0,
        "last_installation_count_id": 0,
        "last_realmauditlog_id": 0,
    }


def test_upload_creates_realms_and_answers_their_push_status(zulip_server: ZulipServer) -> None:
    row = realm_row(realm_id=7)
    response = upload(zulip_server, realms=[row])
    assert response.status_code == 200, response.content
    assert response.json() == {
        "result": "success",
        "msg": "",
        "realms": {row["uuid"]: {"can_push": True, "expected_end_timestamp": None}},
    }
    realm = RemoteRealm.objects.get(uuid=row["uuid"])
    assert realm.server_id == zulip_server.row.pk
    assert (realm.remote_id, realm.host, realm.name) == (7, "chat.example.org", "Example")
    assert realm.authentication_methods == {"Email": True, "Google": False}
    assert realm.date_created is not None
    assert realm.date_created.year == 2025
    zulip_server.row.refresh_from_db()
    assert zulip_server.row.last_version == "12.0"
    assert zulip_server.row.last_api_feature_level == 483


def test_upload_again_updates_the_realm_without_duplicating_it(zulip_server: ZulipServer) -> None:
    row = realm_row()
    upload(zulip_server, realms=[row])
    upload(zulip_server, realms=[{**row, "name": "Renamed", "deactivated": True}])
    realm = RemoteRealm.objects.get(uuid=row["uuid"])
    assert (realm.name, realm.deactivated) == ("Renamed", True)
    assert RemoteRealm.objects.filter(server=zulip_server.row).count() == 1


def test_status_returns_the_last_ids_received(zulip_server: ZulipServer) -> None:
    count = {
        "id": 0,
        "property": "active_users_audit:is_bot:day",
        "subgroup": "false",
        "end_time": 1754385290.0,
        "value": 5,
    }
    upload(
        zulip_server,
        realm_counts=[{**count, "id": 11, "realm": 2}, {**count, "id": 12, "realm": 2}],
        installation_counts=[{**count, "id": 5}],
        realmauditlog_rows=[
            {
                "id": 40,
                "realm": 2,
                "event_time": 1754385290.0,
                "backfilled": False,
                "extra_data": "{}",
                "event_type": 101,
            }
        ],
    )
    body = zulip_server.get("server/analytics/status").json()
    assert (
        body["last_realm_count_id"],
        body["last_installation_count_id"],
        body["last_realmauditlog_id"],
    ) == (12, 5, 40)
    # Rows not beyond what was stored are refused, as Zulip does.
    response = upload(zulip_server, realm_counts=[{**count, "id": 12, "realm": 2}])
    assert response.status_code == 400
    assert response.json()["msg"] == "Data is out of order."


def test_a_realm_of_another_server_is_a_duplicate_registration(zulip_server: ZulipServer) -> None:
    row = realm_row()
    other = make_server()
    upload(other, realms=[row])
    response = upload(zulip_server, realms=[row])
    assert response.status_code == 400
    assert response.json()["msg"] == "Duplicate registration detected."
    assert RemoteRealm.objects.get(uuid=row["uuid"]).server_id == other.row.pk


def test_malformed_analytics_fields_are_4xx_not_500(zulip_server: ZulipServer) -> None:
    for fields in (
        {"realms": "not a list"},
        {"realms": [{"id": "x"}]},
        {"realm_counts": [{"no_id": 1}]},
        {"api_feature_level": "high"},
    ):
        response = upload(zulip_server, **fields)
        assert response.status_code == 400, (fields, response.content)
        assert response.json()["result"] == "error"
    raw = zulip_server.post_form(
        "server/analytics", {"realm_counts": "{not json", "installation_counts": "[]"}
    )
    assert raw.status_code == 400


def test_the_register_server_flow_of_a_zulip_server(db: None) -> None:
    """register, then GET analytics/status, then POST analytics, as manage.py register_server."""
    from urllib.parse import urlencode

    from django.test import Client

    from tests.conftest import API, basic_auth

    server_uuid, key = str(uuid.uuid4()), "a" * 64
    client = Client()
    registered = client.post(
        API + "server/register",
        data=urlencode(
            {
                "zulip_org_id": server_uuid,
                "zulip_org_key": key,
                "hostname": "zulip.example.net",
                "contact_email": "a@zulip.example.net",
            }
        ),
        content_type="application/x-www-form-urlencoded",
    )
    assert registered.json()["created"] is True
    auth = basic_auth(server_uuid, key)
    status = client.get(API + "server/analytics/status", HTTP_AUTHORIZATION=auth)
    assert status.status_code == 200
    row = realm_row()
    posted = client.post(
        API + "server/analytics",
        data=urlencode(
            {
                "realm_counts": "[]",
                "installation_counts": "[]",
                "realms": json.dumps([row]),
                "version": json.dumps("11.4"),
                "api_feature_level": "420",
            }
        ),
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=auth,
    )
    assert posted.status_code == 200
    assert RemoteRealm.objects.filter(uuid=row["uuid"], server__uuid=server_uuid).exists()
