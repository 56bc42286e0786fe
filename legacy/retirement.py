"""Retiring legacy tokens once the same phone is registered for E2EE (Zulip 12, FL 483).

A Zulip server removes a user's legacy registration when the same token is registered for
E2EE, through the bouncer's `push/unregister`; when that call never arrives, the phone would
get every notification twice. The bouncer sees both registrations, so it closes the gap:

- when an E2EE registration succeeds, right after it (`retire_for_e2ee_device`);
- at legacy notify time, before anything is sent (`retire_shadowed`): this is what makes a
  double notification impossible rather than unlikely;
- over existing data, in bounded batches (`cleanup`: the command and the periodic task),
  which also removes the tokens of servers deactivated long enough ago.

The rule: the same server's legacy rows with the same token (APNs without case, FCM
exactly) in the same realm as an active E2EE device. Rows without a realm count only when
the server has exactly one realm, where there is no doubt which realm they belong to. E2EE
devices are never touched. Every removal is counted (metrics, audit log, the server's
`legacy_tokens_retired`); tokens themselves are never logged.
"""

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import BooleanField, F, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from bouncer.metrics import LEGACY_TOKENS_RETIRED
from legacy.models import RemotePushDeviceToken, token_digest
from registrations.models import AuditLog, RemotePushDevice, RemoteRealm, RemoteZulipServer

logger = logging.getLogger(__name__)

MOVED_TO_E2EE = "moved_to_e2ee"
SERVER_DEACTIVATED = "server_deactivated"
DEFAULT_BATCH_SIZE = 5000


def _record(counts: Counter[int], *, reason: str) -> None:
    """Count retirements per server: metrics, audit log, the server's running total."""
    for server_id, count in counts.items():
        if not count:
            continue
        LEGACY_TOKENS_RETIRED.labels(reason=reason).inc(count)
        RemoteZulipServer.objects.filter(pk=server_id).update(
            legacy_tokens_retired=F("legacy_tokens_retired") + count
        )
        AuditLog.objects.create(
            server_id=server_id,
            event_type=AuditLog.Event.LEGACY_TOKENS_RETIRED,
            extra_data={"reason": reason, "count": count},
        )


def _shadowed_condition() -> RawSQL:
    """Whether a legacy row is replaced by an active E2EE device of the same phone, as one SQL
    condition on the legacy table.

    Written in SQL because it runs on every legacy notify: the same rule through the ORM
    (four correlated Exists) cost ~6 ms of Python to compile per request, three quarters of
    the view (bench/README.md); PostgreSQL answers it in microseconds either way. Each EXISTS
    goes through the E2EE table's (realm, md5(lower(token))) index, then compares exactly.
    """
    legacy = RemotePushDeviceToken._meta.db_table
    devices = RemotePushDevice._meta.db_table
    realms = RemoteRealm._meta.db_table
    same_token = f"""
        md5(lower(d.token)) = md5(lower({legacy}.token))
        AND d.expired_time IS NULL
        AND (({legacy}.kind = %s AND d.token_kind = %s AND lower(d.token) = lower({legacy}.token))
          OR ({legacy}.kind = %s AND d.token_kind = %s AND d.token = {legacy}.token))"""
    kinds = [
        RemotePushDeviceToken.Kind.APNS.value,
        RemotePushDevice.Kind.APNS.value,
        RemotePushDeviceToken.Kind.FCM.value,
        RemotePushDevice.Kind.FCM.value,
    ]
    sql = f"""(
        ({legacy}.remote_realm_id IS NOT NULL AND EXISTS (
            SELECT 1 FROM {devices} d
            WHERE d.remote_realm_id = {legacy}.remote_realm_id AND {same_token}))
        OR
        -- A realm-less row matches only when its server has exactly one realm.
        ({legacy}.remote_realm_id IS NULL
         AND (SELECT count(*) FROM {realms} r WHERE r.server_id = {legacy}.server_id) = 1
         AND EXISTS (
            SELECT 1 FROM {devices} d JOIN {realms} r ON r.id = d.remote_realm_id
            WHERE r.server_id = {legacy}.server_id AND {same_token}))
    )"""  # noqa: S608 - table names come from the models; values are parameters
    return RawSQL(sql, [*kinds, *kinds], output_field=BooleanField())  # noqa: S611 - as above


def shadowed(legacy: QuerySet[RemotePushDeviceToken]) -> QuerySet[RemotePushDeviceToken]:
    """The rows of `legacy` that an active E2EE registration of the same phone replaces."""
    return legacy.alias(shadowed=_shadowed_condition()).filter(shadowed=True)


def same_phone_condition(
    *, server_id: int, realm_id: int, token_kind: str, token: str
) -> tuple[str, list[str | int]]:
    """SQL on the legacy table (unqualified columns): the server's legacy rows for the phone of
    an E2EE device with this token. A realm-less row matches only when its server has exactly
    one realm. Used by the registration itself (does any exist?) and by the delete below.

    Found through the `legacy_token_digest` index (md5(lower(token))), then compared exactly:
    on the server's rows alone, every E2EE registration read all of its server's legacy rows
    (3.3 ms of PostgreSQL for 10,000 of them)."""
    realms = RemoteRealm._meta.db_table
    if token_kind == RemotePushDevice.Kind.APNS:
        same_token = "kind = %s AND lower(token) = %s"
        token_params: list[str | int] = [RemotePushDeviceToken.Kind.APNS.value, token.lower()]
    else:
        same_token = "kind = %s AND token = %s"
        token_params = [RemotePushDeviceToken.Kind.FCM.value, token]
    sql = f"""md5(lower(token)) = %s
          AND server_id = %s
          AND (remote_realm_id = %s
               OR (remote_realm_id IS NULL
                   AND (SELECT count(*) FROM {realms} WHERE server_id = %s) = 1))
          AND {same_token}"""  # noqa: S608 - table names come from the models; values are parameters
    return sql, [token_digest(token), server_id, realm_id, server_id, *token_params]


def retire_for_e2ee_device(
    *, server: RemoteZulipServer, realm: RemoteRealm, device: RemotePushDevice
) -> int:
    """Right after an E2EE registration that found legacy rows for its phone: delete them and
    count it, in one transaction.

    One DELETE (through the ORM, the realm count and the delete cost more Python than the rest
    of the registration's statements together). Not in the registration's own transaction:
    a crash in between leaves a legacy row that notify-time retirement (`retire_shadowed`)
    and the clean-up remove, never a double notification."""
    condition, params = same_phone_condition(
        server_id=server.pk, realm_id=realm.pk, token_kind=device.token_kind, token=device.token
    )
    legacy = RemotePushDeviceToken._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {legacy} WHERE {condition}", params)  # noqa: S608 - as above
        deleted: int = cursor.rowcount
        _record(Counter({server.pk: deleted}), reason=MOVED_TO_E2EE)
    return deleted


def retire_shadowed(*, tokens: list[RemotePushDeviceToken]) -> set[int]:
    """At legacy notify time: remove (and return the ids of) rows replaced by E2EE."""
    if not tokens:
        return set()
    with transaction.atomic():
        # Locked, so that a row another retirement (the clean-up, a registration) deletes
        # meanwhile is neither deleted nor counted twice: FOR UPDATE skips it once it is gone.
        ids = set(
            shadowed(RemotePushDeviceToken.objects.filter(pk__in=[t.pk for t in tokens]))
            .select_for_update()
            .values_list("pk", flat=True)
        )
        if ids:
            RemotePushDeviceToken.objects.filter(pk__in=ids).delete()
            _record(Counter({tokens[0].server_id: len(ids)}), reason=MOVED_TO_E2EE)
    return ids


@dataclass
class CleanupReport:
    moved_to_e2ee: Counter[int] = field(default_factory=Counter)
    server_deactivated: Counter[int] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.moved_to_e2ee.values()) + sum(self.server_deactivated.values())


def _in_batches(
    queryset: QuerySet[RemotePushDeviceToken],
    *,
    batch_size: int,
    dry_run: bool,
    counts: Counter[int],
    reason: str,
    select: Callable[[QuerySet[RemotePushDeviceToken]], QuerySet[RemotePushDeviceToken]],
) -> None:
    """Walk the table by id ranges; each batch is one short transaction."""
    bounds = RemotePushDeviceToken.objects.order_by("id").values_list("id", flat=True)
    first, last = (
        bounds.first(),
        RemotePushDeviceToken.objects.order_by("-id").values_list("id", flat=True).first(),
    )
    if first is None or last is None:
        return
    for start in range(first, last + 1, batch_size):
        window = queryset.filter(id__gte=start, id__lt=start + batch_size)
        with transaction.atomic():
            # Locked, as in retire_shadowed: a row deleted meanwhile is skipped, not counted.
            rows = list(select(window).select_for_update().values_list("id", "server_id"))
            if not rows:
                continue
            batch_counts = Counter(server_id for _, server_id in rows)
            if not dry_run:
                RemotePushDeviceToken.objects.filter(id__in=[i for i, _ in rows]).delete()
                _record(batch_counts, reason=reason)
        counts.update(batch_counts)


def cleanup(
    *, dry_run: bool, batch_size: int = DEFAULT_BATCH_SIZE, retention_days: int
) -> CleanupReport:
    """Apply the retirement rule to existing data; idempotent, safe while the service runs."""
    report = CleanupReport()
    _in_batches(
        RemotePushDeviceToken.objects.all(),
        batch_size=batch_size,
        dry_run=dry_run,
        counts=report.moved_to_e2ee,
        reason=MOVED_TO_E2EE,
        select=shadowed,
    )
    cutoff = timezone.now() - timedelta(days=retention_days)
    _in_batches(
        RemotePushDeviceToken.objects.filter(
            server__deactivated=True, server__deactivated_at__lt=cutoff
        ),
        batch_size=batch_size,
        dry_run=dry_run,
        counts=report.server_deactivated,
        reason=SERVER_DEACTIVATED,
        select=lambda window: window,
    )
    return report
