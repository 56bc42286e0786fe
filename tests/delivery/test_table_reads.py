"""No request reads its server's device tables row by row.

Every look-up on the request paths must go through an index: a Zulip server may hold
hundreds of thousands of legacy tokens, and a request that filters them one by one costs
PostgreSQL milliseconds per thousand rows (bench/README.md, change 11: an E2EE registration
fell to 13/s with 250,000). Measured here as the rows PostgreSQL read from the two device
tables during each request (`pg_stat_xact_user_tables`: this transaction's counters), while
the same server and realm hold thousands of other users' rows.
"""

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from legacy.models import RemotePushDeviceToken
from registrations.models import RemotePushDevice, RemoteRealm
from tests.conftest import ZulipServer, add_e2ee_devices, e2ee_notify, e2ee_register

pytestmark = [
    pytest.mark.usefixtures("in_process_delivery", "upstreams"),
    # The notify endpoints read through their own connections: test data must be committed.
    pytest.mark.django_db(transaction=True),
]

OTHERS = 3000
# A request reads its own rows (a user's tokens, a notify's devices) and little else.
MOST_ROWS_READ = 10

USER_UUID = "5b3f3c8e-1f0a-4f47-9a43-8d1c6d2b7e10"
APNS = "ab12" * 16
FCM = "fcm-" + "c" * 140


@pytest.fixture
def crowded(zulip_server: ZulipServer, realm: RemoteRealm) -> None:
    """The server's realm holds OTHERS other users' legacy tokens (both kinds, with and
    without a realm) and OTHERS E2EE devices, and the statistics know it."""
    RemotePushDeviceToken.objects.bulk_create(
        RemotePushDeviceToken(
            server=zulip_server.row,
            remote_realm=realm if i % 3 else None,
            user_id=100_000 + i,
            kind=1 + i % 2,
            token=f"{i:064x}" if i % 2 == 0 else f"fcm-{i:0140x}",
            ios_app_id="org.zulip.Zulip" if i % 2 == 0 else None,
        )
        for i in range(OTHERS)
    )
    add_e2ee_devices(realm, (f"{i:064X}" for i in range(OTHERS)))
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {RemotePushDeviceToken._meta.db_table}")
        cursor.execute(f"ANALYZE {RemotePushDevice._meta.db_table}")


def rows_read(request: Callable[[], Any]) -> int:
    """Rows of the two device tables PostgreSQL read while `request` ran (it must succeed)."""
    tables = [RemotePushDeviceToken._meta.db_table, RemotePushDevice._meta.db_table]

    def so_far() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0)"
                " FROM pg_stat_xact_user_tables WHERE relname = ANY(%s)",
                [tables],
            )
            [(count,)] = cursor.fetchall()
        return int(count)

    before = so_far()
    response = request()
    assert response.status_code == 200, response.content
    return so_far() - before


def legacy_form(**fields: Any) -> dict[str, Any]:
    return {"user_id": 10, "user_uuid": USER_UUID, **fields}


@pytest.mark.usefixtures("crowded")
def test_every_request_reads_only_its_own_rows(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    server = zulip_server
    reads: dict[str, int] = {}
    reads["legacy register"] = rows_read(
        lambda: server.post_form(
            "push/register",
            legacy_form(
                token=APNS,
                token_kind=1,
                ios_app_id="org.zulip.Zulip",
                realm_uuid=str(realm.uuid),
            ),
        )
    )
    server.post_form("push/register", legacy_form(token=FCM, token_kind=2))
    reads["legacy notify"] = rows_read(
        lambda: server.post_json(
            "push/notify",
            {
                "user_uuid": USER_UUID,
                "user_id": 10,
                "realm_uuid": str(realm.uuid),
                "apns_payload": {"alert": {"title": "hi"}},
                "gcm_payload": {"event": "message"},
                "gcm_options": {"priority": "high"},
                "apple_devices": [APNS],
                "android_devices": [FCM],
            },
        )
    )
    reads["legacy unregister"] = rows_read(
        lambda: server.post_form(
            "push/unregister", legacy_form(token=FCM, token_kind=2, realm_uuid=str(realm.uuid))
        )
    )
    reads["E2EE register, a new phone"] = rows_read(lambda: e2ee_register(server, realm, "fe" * 32))
    # The phone of the legacy APNs token registered above moves to E2EE: its row is retired.
    reads["E2EE register, a phone moving from legacy"] = rows_read(
        lambda: e2ee_register(server, realm, APNS.upper())
    )
    assert not RemotePushDeviceToken.objects.filter(user_uuid=USER_UUID).exists()
    reads["E2EE notify"] = rows_read(lambda: e2ee_notify(server, realm, ["fe" * 32, f"{7:064X}"]))
    reads["legacy unregister all"] = rows_read(
        lambda: server.post_form(
            "push/unregister/all", {"user_uuid": str(uuid.uuid4()), "user_id": 100_002}
        )
    )
    assert all(count <= MOST_ROWS_READ for count in reads.values()), reads
