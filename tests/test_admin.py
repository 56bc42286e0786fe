"""Django admin: every screen renders, search works, secrets never show, actions work."""

import pytest
from django.test import Client

from legacy.models import RemotePushDeviceToken
from registrations import keys
from registrations.models import (
    AuditLog,
    BouncerKeyPair,
    RemotePushDevice,
    RemoteRealm,
    RemoteZulipServer,
)
from tests.conftest import ZulipServer

SECRET_TOKEN = "feedface" * 8


@pytest.fixture
def populated(zulip_server: ZulipServer, realm: RemoteRealm) -> BouncerKeyPair:
    RemotePushDevice.objects.create(
        remote_realm=realm,
        token_id=42,
        token=SECRET_TOKEN,
        token_kind="apns",
        ios_app_id="org.zulip.Zulip",
    )
    RemotePushDeviceToken.objects.create(
        server=zulip_server.row,
        user_id=10,
        kind=1,
        token=SECRET_TOKEN,
        ios_app_id="org.zulip.Zulip",
    )
    return keys.generate_key()


PAGES = [
    "registrations/remotezulipserver",
    "registrations/remoterealm",
    "registrations/remotepushdevice",
    "registrations/bouncerkeypair",
    "registrations/auditlog",
    "legacy/remotepushdevicetoken",
]


@pytest.mark.parametrize("page", PAGES)
def test_each_changelist_and_change_page_renders_without_secrets(
    admin_client: Client, populated: BouncerKeyPair, zulip_server: ZulipServer, page: str
) -> None:
    private = keys.private_key_for(populated.public_key)
    assert private is not None
    secrets = [SECRET_TOKEN, zulip_server.key, zulip_server.row.api_key_hash, bytes(private).hex()]
    listing = admin_client.get(f"/admin/{page}/")
    assert listing.status_code == 200
    html = listing.content.decode()
    assert 'id="result_list"' in html  # the table of rows, present only when rows exist
    for secret in secrets:
        assert secret not in html
    app, model = page.split("/")
    from django.apps import apps

    obj = apps.get_model(app, model).objects.first()
    assert obj is not None
    detail = admin_client.get(f"/admin/{page}/{obj.pk}/change/")
    assert detail.status_code == 200
    for secret in secrets:
        assert secret not in detail.content.decode()


@pytest.mark.parametrize("page", PAGES)
def test_rows_cannot_be_added_by_hand(admin_client: Client, db: None, page: str) -> None:
    assert admin_client.get(f"/admin/{page}/add/").status_code == 403


def test_the_token_is_shown_truncated(admin_client: Client, populated: BouncerKeyPair) -> None:
    html = admin_client.get("/admin/registrations/remotepushdevice/").content.decode()
    assert SECRET_TOKEN[:8] + "…" in html


def test_servers_are_found_by_uuid_and_hostname(
    admin_client: Client, zulip_server: ZulipServer
) -> None:
    for query in (zulip_server.uuid, zulip_server.row.hostname):
        html = admin_client.get(
            "/admin/registrations/remotezulipserver/", {"q": query}
        ).content.decode()
        assert zulip_server.row.hostname in html
    html = admin_client.get(
        "/admin/registrations/remotezulipserver/", {"q": "nothing-like-it"}
    ).content.decode()
    assert zulip_server.row.hostname not in html


def test_deactivate_and_reactivate_actions(admin_client: Client, zulip_server: ZulipServer) -> None:
    url = "/admin/registrations/remotezulipserver/"
    admin_client.post(url, {"action": "deactivate", "_selected_action": [zulip_server.row.pk]})
    zulip_server.row.refresh_from_db()
    assert zulip_server.row.deactivated
    admin_client.post(url, {"action": "reactivate", "_selected_action": [zulip_server.row.pk]})
    zulip_server.row.refresh_from_db()
    assert not zulip_server.row.deactivated
    events = set(
        AuditLog.objects.filter(server=zulip_server.row).values_list("event_type", flat=True)
    )
    assert {"remote_server_deactivated", "remote_server_reactivated"} <= events


def test_retire_action_retires_the_key(admin_client: Client, populated: BouncerKeyPair) -> None:
    admin_client.post(
        "/admin/registrations/bouncerkeypair/",
        {"action": "retire", "_selected_action": [populated.pk]},
    )
    populated.refresh_from_db()
    assert populated.retired_at is not None
    assert keys.private_key_for(populated.public_key) is None


def test_expired_filter_separates_devices(admin_client: Client, populated: BouncerKeyPair) -> None:
    expired = admin_client.get("/admin/registrations/remotepushdevice/", {"expired": "yes"})
    assert SECRET_TOKEN[:8] not in expired.content.decode()
    active = admin_client.get("/admin/registrations/remotepushdevice/", {"expired": "no"})
    assert SECRET_TOKEN[:8] in active.content.decode()


def test_the_delivery_log_lists_attempts_and_filters_by_outcome(
    admin_client: Client, db: None
) -> None:
    import uuid

    from delivery.models import DeliveryAttempt

    DeliveryAttempt.objects.create(
        batch_id=uuid.uuid4(),
        server_id=1,
        device_id=7,
        protocol="e2ee",
        provider="apns",
        app_id="org.zulip.Zulip",
        outcome="token_dead",
        upstream_status=410,
        reason="Unregistered",
    )
    page = admin_client.get("/admin/delivery/deliveryattempt/", {"outcome__exact": "token_dead"})
    assert page.status_code == 200
    row = 'class="field-reason">Unregistered'
    assert row in page.content.decode()
    empty = admin_client.get("/admin/delivery/deliveryattempt/", {"outcome__exact": "delivered"})
    assert row not in empty.content.decode()
    assert admin_client.get("/admin/delivery/deliveryattempt/add/").status_code == 403


def test_servers_are_deactivated_not_deleted(
    admin_client: Client, zulip_server: ZulipServer
) -> None:
    # Deletion would take the server's audit trail with it.
    url = f"/admin/registrations/remotezulipserver/{zulip_server.row.pk}/delete/"
    assert admin_client.get(url).status_code == 403
    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert RemoteZulipServer.objects.filter(pk=zulip_server.row.pk).exists()
