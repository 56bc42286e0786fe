"""Django admin: every screen renders, search works, secrets never show, nothing can be
edited or deleted by hand, and the few actions are confirmed and audited with their actor."""

import re
import uuid
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from delivery.models import DeliveryAttempt
from legacy.models import RemotePushDeviceToken
from registrations import keys, services
from registrations.models import (
    AuditLog,
    BouncerKeyPair,
    RemotePushDevice,
    RemoteRealm,
    RemoteZulipServer,
)
from tests.conftest import ZulipServer, make_server

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


@pytest.mark.parametrize("page", [*PAGES, "delivery/deliveryattempt"])
def test_rows_cannot_be_changed_or_deleted_by_hand(
    admin_client: Client, populated: BouncerKeyPair, zulip_server: ZulipServer, page: str
) -> None:
    from django.apps import apps

    log_attempt(server_id=zulip_server.row.pk)
    app, model = page.split("/")
    obj = apps.get_model(app, model).objects.first()
    assert obj is not None
    detail = admin_client.get(f"/admin/{page}/{obj.pk}/change/").content.decode()
    assert 'name="_save"' not in detail  # a view, not a form
    assert admin_client.get(f"/admin/{page}/{obj.pk}/delete/").status_code == 403
    assert admin_client.post(f"/admin/{page}/{obj.pk}/delete/", {"post": "yes"}).status_code == 403
    assert 'value="delete_selected"' not in admin_client.get(f"/admin/{page}/").content.decode()
    assert apps.get_model(app, model).objects.filter(pk=obj.pk).exists()


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


def test_deactivate_and_reactivate_ask_for_confirmation_and_name_the_admin(
    admin_client: Client, zulip_server: ZulipServer
) -> None:
    url = "/admin/registrations/remotezulipserver/"
    selected = {"_selected_action": [zulip_server.row.pk]}
    confirm = admin_client.post(url, {"action": "deactivate", **selected})
    # First a page that names the server; nothing has changed yet.
    assert confirm.status_code == 200
    assert zulip_server.row.hostname in confirm.content.decode()
    assert "Yes, deactivate 1 server(s)" in confirm.content.decode()
    zulip_server.row.refresh_from_db()
    assert not zulip_server.row.deactivated

    admin_client.post(url, {"action": "deactivate", "confirmed": "yes", **selected})
    zulip_server.row.refresh_from_db()
    assert zulip_server.row.deactivated
    admin_client.post(url, {"action": "reactivate", **selected})
    zulip_server.row.refresh_from_db()
    assert zulip_server.row.deactivated  # not without confirmation
    admin_client.post(url, {"action": "reactivate", "confirmed": "yes", **selected})
    zulip_server.row.refresh_from_db()
    assert not zulip_server.row.deactivated
    events = dict(
        AuditLog.objects.filter(server=zulip_server.row).values_list("event_type", "actor")
    )
    assert events["remote_server_deactivated"] == "admin admin"
    assert events["remote_server_reactivated"] == "admin admin"


def test_the_server_list_says_active_or_since_when_deactivated(
    admin_client: Client, zulip_server: ZulipServer
) -> None:
    gone = make_server(hostname="gone.example.org")
    services.deactivate_server(server=gone.row)
    html = admin_client.get("/admin/registrations/remotezulipserver/").content.decode()
    assert 'class="field-status">active<' in html
    assert re.search(r'class="field-status">deactivated \d{4}-\d\d-\d\d \d\d:\d\d UTC<', html)
    assert "icon-no" not in html


def test_retire_action_retires_the_key(admin_client: Client, populated: BouncerKeyPair) -> None:
    keys.generate_key()  # its successor: the last active key is not retired from here
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


def log_attempt(
    *, server_id: int, outcome: str = "token_dead", **fields: object
) -> DeliveryAttempt:
    values: dict[str, object] = {
        "batch_id": uuid.uuid4(),
        "server_id": server_id,
        "device_id": 7,
        "protocol": "e2ee",
        "provider": "apns",
        "app_id": "org.zulip.Zulip",
        "outcome": outcome,
        "upstream_status": 410,
        "reason": "Unregistered",
        **fields,
    }
    return DeliveryAttempt.objects.create(**values)


def test_the_delivery_log_names_servers_by_hostname_and_filters_by_server(
    admin_client: Client, zulip_server: ZulipServer, other_zulip_server: ZulipServer
) -> None:
    log_attempt(server_id=zulip_server.row.pk, reason="FromTheFirst")
    log_attempt(server_id=other_zulip_server.row.pk, reason="FromTheOther")
    url = "/admin/delivery/deliveryattempt/"
    html = admin_client.get(url).content.decode()
    server_page = f"/admin/registrations/remotezulipserver/{zulip_server.row.pk}/change/"
    assert f'<a href="{server_page}">{zulip_server.row.hostname}</a>' in html
    assert other_zulip_server.row.hostname in html
    assert '<a href="/admin/registrations/remotepushdevice/7/change/">e2ee 7</a>' in html
    only = admin_client.get(url, {"server": zulip_server.row.pk}).content.decode()
    assert 'class="field-reason">FromTheFirst' in only
    assert 'class="field-reason">FromTheOther' not in only


def test_a_servers_page_links_to_its_records_with_counts(
    admin_client: Client, populated: BouncerKeyPair, zulip_server: ZulipServer
) -> None:
    pk = zulip_server.row.pk
    log_attempt(server_id=pk, outcome="config_fault", reason="BadCertificate")
    log_attempt(server_id=pk, outcome="delivered", reason="")
    log_attempt(
        server_id=pk, outcome="gave_up", reason="Old", created=timezone.now() - timedelta(days=2)
    )
    services.deactivate_server(server=zulip_server.row)
    html = admin_client.get(f"/admin/registrations/remotezulipserver/{pk}/change/").content.decode()
    for text in (
        f'href="/admin/registrations/remoterealm/?server={pk}">1 realm<',
        f'href="/admin/registrations/remotepushdevice/?server={pk}">1 E2EE device<',
        f'href="/admin/legacy/remotepushdevicetoken/?server={pk}">1 legacy token<',
        ">1 failed delivery in the last day<",
        f'href="/admin/registrations/auditlog/?server={pk}">1 audit log entry<',
    ):
        assert text in html, text
    # Each link shows what it counts.
    failures = re.search(r'href="(/admin/delivery/deliveryattempt/\?[^"]+)"', html)
    assert failures is not None
    listed = admin_client.get(failures.group(1).replace("&amp;", "&")).content.decode()
    assert 'class="field-reason">BadCertificate' in listed
    assert 'class="field-reason">Old' not in listed
    for linked in ("remotepushdevice", "remoterealm"):
        page = admin_client.get(f"/admin/registrations/{linked}/", {"server": pk})
        assert 'id="result_list"' in page.content.decode()
        other = admin_client.get(f"/admin/registrations/{linked}/", {"server": pk + 1000})
        assert 'id="result_list"' not in other.content.decode()


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


def test_key_pairs_cannot_be_deleted_and_the_last_active_one_is_not_retired_from_the_admin(
    admin_client: Client, populated: BouncerKeyPair
) -> None:
    url = "/admin/registrations/bouncerkeypair/"
    answer = admin_client.post(
        url, {"action": "retire", "_selected_action": [populated.pk]}, follow=True
    )
    assert "would leave no active key" in answer.content.decode()
    populated.refresh_from_db()
    assert populated.is_active
    assert admin_client.get(f"{url}{populated.pk}/delete/").status_code == 403


def test_bouncer_keys_retire_keeps_the_last_active_key_unless_forced(db: None) -> None:
    pair = keys.generate_key()
    with pytest.raises(CommandError, match="last active key"):
        call_command("bouncer_keys", "retire", pair.public_key)
    pair.refresh_from_db()
    assert pair.is_active
    call_command("bouncer_keys", "retire", "--force", pair.public_key)
    pair.refresh_from_db()
    assert not pair.is_active
    entry = AuditLog.objects.get(event_type="bouncer_key_retired")
    assert entry.actor == "command bouncer_keys retire --force"


def test_bouncer_keys_unretire_accepts_the_key_again_and_is_audited(db: None) -> None:
    old, new = keys.generate_key(), keys.generate_key()
    call_command("bouncer_keys", "retire", old.public_key)  # another key stays active
    assert keys.private_key_for(old.public_key) is None
    call_command("bouncer_keys", "unretire", old.public_key)
    assert keys.private_key_for(old.public_key) is not None
    call_command("bouncer_keys", "unretire", old.public_key)  # a repeat changes nothing
    entries = AuditLog.objects.filter(event_type="bouncer_key_unretired")
    assert [(e.actor, e.extra_data) for e in entries] == [
        ("command bouncer_keys unretire", {"public_key": old.public_key})
    ]
    assert new.public_key != old.public_key
    with pytest.raises(CommandError, match="No key pair"):
        call_command("bouncer_keys", "unretire", "A" * 43 + "=")


def test_the_audit_log_names_a_server_acting_through_the_api(db: None) -> None:
    zulip = make_server()
    Client().post(
        "/api/v1/remotes/server/register",
        {
            "zulip_org_id": zulip.uuid,
            "zulip_org_key": zulip.key,
            "hostname": "renamed.example.org",
            "contact_email": "admin@example.org",
        },
    )
    entry = AuditLog.objects.filter(server=zulip.row).latest("event_time")
    assert entry.actor == "server renamed.example.org (API)"


def test_the_audit_log_shows_who_and_links_the_server(
    admin_client: Client, zulip_server: ZulipServer
) -> None:
    call_command("reactivate_remote_server", zulip_server.uuid)  # already active: no entry
    services.deactivate_server(server=zulip_server.row)
    html = admin_client.get("/admin/registrations/auditlog/").content.decode()
    assert f"server {zulip_server.row.hostname} (API)" in html
    server_page = f"/admin/registrations/remotezulipserver/{zulip_server.row.pk}/change/"
    assert f'href="{server_page}"' in html


def test_the_overview_counts_deliveries_failures_silent_servers_keys_and_credentials(
    admin_client: Client, populated: BouncerKeyPair, zulip_server: ZulipServer
) -> None:
    pk = zulip_server.row.pk
    for _ in range(3):
        log_attempt(server_id=pk, outcome="delivered", reason="")
    log_attempt(server_id=pk, outcome="config_fault", reason="InvalidProviderToken")
    log_attempt(server_id=pk, outcome="gave_up", reason="ServiceUnavailable")
    log_attempt(
        server_id=pk, outcome="retry", reason="Older", created=timezone.now() - timedelta(hours=5)
    )
    silent = make_server(hostname="quiet.example.org")
    RemoteZulipServer.objects.filter(pk=silent.row.pk).update(
        last_request_datetime=timezone.now() - timedelta(days=3)
    )
    assert 'href="/admin/overview/"' in admin_client.get("/admin/").content.decode()
    html = admin_client.get("/admin/overview/").content.decode()

    def cell(window: str, outcome: str) -> str:
        found = re.search(
            rf'data-window="{window}" data-outcome="{outcome}">(\d+)<', html, flags=re.S
        )
        assert found is not None, (window, outcome)
        return found.group(1)

    assert 'data-provider="apns" data-app="org.zulip.Zulip"' in html
    assert (cell("hour", "delivered"), cell("day", "delivered")) == ("3", "3")
    assert (cell("hour", "retry"), cell("day", "retry")) == ("0", "1")
    assert cell("hour", "config_fault") == "1"
    assert cell("day", "gave_up") == "1"
    assert "InvalidProviderToken" in html
    assert "quiet.example.org" in html
    assert populated.public_key in html
    assert 'data-provider="fcm" data-app="default"' in html
    assert SECRET_TOKEN not in html


def test_the_overview_is_for_staff_only(client: Client, db: None) -> None:
    answer = client.get("/admin/overview/")
    assert answer.status_code == 302
    assert answer["Location"].startswith("/admin/login/")
