"""Legacy tokens retire once the phone is registered for E2EE (issue: the clean-up app)."""

import threading
import time
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.utils import timezone

from legacy import retirement
from legacy.models import RemotePushDeviceToken
from registrations import keys, sealing
from registrations.models import AuditLog, RemotePushDevice, RemoteRealm, RemoteZulipServer
from tests.conftest import ZulipServer, add_e2ee_devices, e2ee_register, make_server

APNS = "c0ffee" * 10 + "abcd"
FCM = "fcm-token-" + "f" * 100
USER_UUID = "1e8f2d5a-7bd1-4bb1-9a33-0a4f8e3c2a11"


def legacy(
    server: ZulipServer, token: str, kind: int, realm: RemoteRealm | None, **f: Any
) -> RemotePushDeviceToken:
    return RemotePushDeviceToken.objects.create(
        server=server.row,
        token=token,
        kind=kind,
        remote_realm=realm,
        user_uuid=USER_UUID,
        ios_app_id="org.zulip.Zulip" if kind == 1 else None,
        **f,
    )


def e2ee_row(realm: RemoteRealm, token: str, kind: str = "apns") -> RemotePushDevice:
    return RemotePushDevice.objects.create(
        remote_realm=realm,
        token=token,
        token_kind=kind,
        token_id=sealing.token_id_int(token),
        ios_app_id="org.zulip.Zulip" if kind == "apns" else None,
    )


def test_an_e2ee_registration_retires_the_same_token_whatever_its_case(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    legacy(zulip_server, APNS.upper(), 1, realm)
    legacy(zulip_server, FCM, 2, realm)
    assert e2ee_register(zulip_server, realm, APNS).status_code == 200
    assert list(RemotePushDeviceToken.objects.values_list("token", flat=True)) == [FCM]
    assert e2ee_register(zulip_server, realm, FCM, "fcm").status_code == 200
    assert not RemotePushDeviceToken.objects.exists()
    assert RemotePushDevice.objects.count() == 2
    zulip_server.row.refresh_from_db()
    assert zulip_server.row.legacy_tokens_retired == 2
    logged = AuditLog.objects.filter(event_type="legacy_tokens_retired")
    assert sum(e.extra_data["count"] for e in logged) == 2
    assert all(APNS.lower() not in str(e.extra_data).lower() for e in logged)


def test_fcm_tokens_differing_in_case_are_different_tokens(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    legacy(zulip_server, FCM.upper(), 2, realm)
    e2ee_register(zulip_server, realm, FCM, "fcm")
    assert RemotePushDeviceToken.objects.count() == 1


def test_another_realms_and_another_servers_tokens_are_left_alone(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    other_realm = zulip_server.add_realm()
    other_server = make_server()
    legacy(zulip_server, APNS, 1, other_realm)
    legacy(other_server, APNS, 1, other_server.add_realm())
    e2ee_register(zulip_server, realm, APNS)
    assert RemotePushDeviceToken.objects.count() == 2


def test_realm_less_rows_are_retired_only_when_the_server_has_one_realm(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    legacy(zulip_server, APNS, 1, None)
    e2ee_register(zulip_server, realm, APNS)
    assert not RemotePushDeviceToken.objects.exists()
    two_realms = make_server()
    first = two_realms.add_realm()
    two_realms.add_realm()
    legacy(two_realms, APNS, 1, None)
    e2ee_register(two_realms, first, APNS)
    assert RemotePushDeviceToken.objects.filter(server=two_realms.row).count() == 1


def test_the_command_dry_run_changes_nothing_and_the_real_run_is_idempotent(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    legacy(zulip_server, APNS, 1, realm)
    legacy(zulip_server, FCM, 2, realm)
    e2ee_row(realm, APNS)
    out = StringIO()
    call_command("cleanup_legacy_registrations", "--dry-run", stdout=out)
    assert "would remove 1 legacy token(s) (moved to E2EE)" in out.getvalue()
    assert RemotePushDeviceToken.objects.count() == 2
    assert APNS not in out.getvalue()
    out = StringIO()
    call_command("cleanup_legacy_registrations", "--batch-size", "1", stdout=out)
    assert f"{zulip_server.row.hostname}: removed 1 legacy token(s)" in out.getvalue()
    assert list(RemotePushDeviceToken.objects.values_list("token", flat=True)) == [FCM]
    assert RemotePushDevice.objects.count() == 1  # E2EE devices are never touched
    out = StringIO()
    call_command("cleanup_legacy_registrations", stdout=out)
    assert "Total: removed 0" in out.getvalue()


def test_an_expired_e2ee_device_does_not_retire_anything(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    legacy(zulip_server, APNS, 1, realm)
    e2ee_row(realm, APNS).__class__.objects.update(expired_time=timezone.now())
    call_command("cleanup_legacy_registrations", stdout=StringIO())
    assert RemotePushDeviceToken.objects.count() == 1


def test_tokens_of_long_deactivated_servers_are_removed(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    gone = make_server()
    legacy(gone, APNS, 1, None)
    legacy(zulip_server, APNS, 1, realm)
    RemoteZulipServer.objects.filter(pk=gone.row.pk).update(
        deactivated=True, deactivated_at=timezone.now() - timedelta(days=31)
    )
    recent = make_server(deactivated=True, deactivated_at=timezone.now() - timedelta(days=2))
    legacy(recent, APNS, 1, None)
    report = retirement.cleanup(dry_run=False, retention_days=30)
    assert dict(report.server_deactivated) == {gone.row.pk: 1}
    assert set(RemotePushDeviceToken.objects.values_list("server", flat=True)) == {
        zulip_server.row.pk,
        recent.row.pk,
    }


@pytest.mark.django_db(transaction=True)
def test_concurrent_registration_and_cleanup_lose_and_duplicate_nothing() -> None:
    server = make_server()
    realm = server.add_realm()
    keys.generate_key()
    tokens = [f"{i:064x}" for i in range(30)]
    for t in tokens:
        legacy(server, t, 1, realm)
    errors: list[BaseException] = []

    def register_all() -> None:
        try:
            for t in tokens:
                assert e2ee_register(server, realm, t).status_code == 200
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            errors.append(e)
        finally:
            connection.close()

    def clean_repeatedly() -> None:
        try:
            for _ in range(5):
                retirement.cleanup(dry_run=False, batch_size=7, retention_days=30)
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            errors.append(e)
        finally:
            connection.close()

    threads = [threading.Thread(target=register_all), threading.Thread(target=clean_repeatedly)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert not RemotePushDeviceToken.objects.exists()
    assert RemotePushDevice.objects.count() == 30
    server.row.refresh_from_db()
    assert server.row.legacy_tokens_retired == 30


@pytest.mark.django_db
def test_the_batch_command_on_100000_rows(capsys: pytest.CaptureFixture[str]) -> None:
    server = make_server()
    realm = server.add_realm()
    tokens = [f"{i:064x}" for i in range(100_000)]
    RemotePushDeviceToken.objects.bulk_create(
        (
            RemotePushDeviceToken(
                server=server.row,
                token=t,
                kind=1,
                remote_realm=realm,
                user_id=i,
                ios_app_id="org.zulip.Zulip",
            )
            for i, t in enumerate(tokens)
        ),
        batch_size=5000,
    )
    # One phone in ten has moved to E2EE.
    add_e2ee_devices(realm, tokens[::10])
    started = time.monotonic()
    report = retirement.cleanup(dry_run=False, batch_size=5000, retention_days=30)
    elapsed = time.monotonic() - started
    assert dict(report.moved_to_e2ee) == {server.row.pk: 10_000}
    assert RemotePushDeviceToken.objects.count() == 90_000
    with capsys.disabled():
        print(f"\n[figure] cleanup of 100,000 legacy rows (10,000 retired): {elapsed:.2f} s")


@pytest.mark.django_db(transaction=True)
def test_a_row_another_retirement_deletes_meanwhile_is_not_counted_twice() -> None:
    """The clean-up finds a shadowed row while another retirement (a registration's, in its
    own transaction) is deleting it: only the deleter counts it."""
    server = make_server()
    realm = server.add_realm()
    row = legacy(server, APNS, 1, realm)
    e2ee_row(realm, APNS)

    other = connections.create_connection("default")
    other.set_autocommit(False)
    with other.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {RemotePushDeviceToken._meta.db_table} WHERE id = %s",  # noqa: S608
            [row.pk],
        )
        cursor.execute("SELECT pg_backend_pid()")
        [(deleter_pid,)] = cursor.fetchall()

    reports: list[retirement.CleanupReport] = []

    def clean() -> None:
        try:
            reports.append(retirement.cleanup(dry_run=False, retention_days=30))
        finally:
            connection.close()

    cleaner = threading.Thread(target=clean)
    cleaner.start()
    try:
        # The clean-up reaches the row the other transaction holds, and waits for it.
        deadline = time.monotonic() + 10
        waiting = False
        while not waiting and time.monotonic() < deadline:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND pid <> %s",
                    [deleter_pid],
                )
                [(count,)] = cursor.fetchall()
            waiting = count > 0
            time.sleep(0.02)
        assert waiting, "the clean-up never reached the locked row"
    finally:
        other.commit()
        other.close()
        cleaner.join(timeout=30)

    assert [dict(report.moved_to_e2ee) for report in reports] == [{}]
    server.row.refresh_from_db()
    assert server.row.legacy_tokens_retired == 0
    assert not AuditLog.objects.filter(event_type=AuditLog.Event.LEGACY_TOKENS_RETIRED).exists()


def rows_read(plan: dict[str, Any], table: str) -> int:
    """Rows a plan's scans of `table` read: those returned plus those filtered out."""
    read = 0
    if plan.get("Relation Name") == table:
        read += plan["Actual Rows"] * plan["Actual Loops"]
        read += plan.get("Rows Removed by Filter", 0) + plan.get("Rows Removed by Index Recheck", 0)
    return read + sum(rows_read(child, table) for child in plan.get("Plans", []))


@pytest.mark.django_db
def test_a_registration_finds_its_phones_legacy_rows_by_index_not_by_reading_the_server() -> None:
    """Every E2EE registration asks whether its phone has legacy rows: a server with many
    legacy users must not make each registration read all of them."""
    server = make_server()
    realm = server.add_realm()
    RemotePushDeviceToken.objects.bulk_create(
        RemotePushDeviceToken(
            server=server.row,
            token=f"{i:064x}",
            kind=1 + i % 2,  # APNs and FCM
            remote_realm=realm,
            user_id=i,
            ios_app_id="org.zulip.Zulip" if i % 2 == 0 else None,
        )
        for i in range(5000)
    )
    legacy_table = RemotePushDeviceToken._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {legacy_table}")
    # APNs tokens compare without case; FCM tokens exactly (an upper-case one is another).
    for kind, token, found in [
        ("apns", f"{0xABC:064X}", 1),
        ("fcm", f"{0xABD:064x}", 1),
        ("fcm", f"{0xABD:064X}", 0),
    ]:
        condition, params = retirement.same_phone_condition(
            server_id=server.row.pk, realm_id=realm.pk, token_kind=kind, token=token
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT 1 FROM {legacy_table} WHERE {condition}",  # noqa: S608
                params,
            )
            [(explained,)] = cursor.fetchall()
        plan = explained[0]["Plan"]
        assert plan["Actual Rows"] == found, (kind, token)
        assert rows_read(plan, legacy_table) <= 1, explained
