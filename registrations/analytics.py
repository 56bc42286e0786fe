"""What an analytics upload may hold: its rows, as Zulip's zilencer validates them.

The bouncer stores only the realms and the highest row ids, but it refuses what Zulip's own
bouncer refuses (an unknown count property, an audit-log event type that is not synced), so
that a server that works against one works against the other. Every number is bounded by the
column it reaches (or by a sane range for times), so that nothing overflows after validation.
"""

import math
import uuid
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from bouncer.params import INT64_MAX

# The most realms one upload may name. A Zulip server sends all of its realms each time; the
# largest self-hosted installations have a few hundred. Past this the upload is refused (400)
# rather than turned into thousands of row writes in one transaction.
MAX_REALMS_PER_UPLOAD = 1000

# Timestamps (seconds since the epoch) up to the end of year 9999, the last a datetime holds.
MAX_TIMESTAMP = 253_402_300_799.0
# PostgreSQL smallint: RemoteRealm.org_type is a PositiveSmallIntegerField.
SMALLINT_MAX = 2**15 - 1

# analytics.lib.counts.COUNT_STATS of Zulip 11-12, less the properties only the bouncer itself
# records (BOUNCER_ONLY_REMOTE_COUNT_STAT_PROPERTIES), which a server may not send.
COUNT_STAT_PROPERTIES = frozenset(
    {
        "messages_sent:is_bot:hour",
        "messages_sent:message_type:day",
        "messages_sent:client:day",
        "messages_in_stream:is_bot:day",
        "ai_credit_usage::day",
        "active_users_audit:is_bot:day",
        "upload_quota_used_bytes::day",
        "messages_read::hour",
        "messages_read_interactions::hour",
        "1day_actives::day",
        "7day_actives::day",
        "15day_actives::day",
        "minutes_active::day",
        "realm_active_humans::day",
    }
)
# LOGGING_COUNT_STAT_PROPERTIES_NOT_SENT_TO_BOUNCER: stats current servers no longer send, which
# Zulip tolerates from older ones.
TOLERATED_COUNT_STAT_PROPERTIES = frozenset(
    {
        "invites_sent::day",
        "mobile_pushes_sent::day",
        "active_users_log:is_bot:day",
        "active_users:is_bot:day",
    }
)
# RealmAuditLog.SYNCED_BILLING_EVENTS: user created, activated, deactivated, reactivated, role
# changed; realm deactivated, reactivated, imported.
SYNCED_AUDIT_LOG_EVENT_TYPES = frozenset({101, 102, 103, 104, 105, 201, 202, 229})


def _timestamp(value: float) -> float:
    if not math.isfinite(value) or not 0 <= value <= MAX_TIMESTAMP:
        raise ValueError("Invalid timestamp")
    return value


def _count_property(value: str) -> str:
    if value not in COUNT_STAT_PROPERTIES and value not in TOLERATED_COUNT_STAT_PROPERTIES:
        raise ValueError(f"Invalid property {value}")
    return value


def _realm_uuid(value: str) -> str:
    # Canonical lower case: the realm is looked up, keyed and stored by this string, and an
    # upper-case copy of a known uuid must find the same realm, not insert a duplicate.
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError("Invalid realm uuid") from None


def _event_type(value: int) -> int:
    if value not in SYNCED_AUDIT_LOG_EVENT_TYPES:
        raise ValueError("Invalid event type.")
    return value


RowId = Annotated[int, Field(ge=0, le=INT64_MAX)]
Timestamp = Annotated[float, AfterValidator(_timestamp)]
Text = Annotated[str, Field(max_length=1000)]


class CountRow(BaseModel):
    """A RealmCount or InstallationCount row (Zulip's RealmCountDataForAnalytics)."""

    model_config = ConfigDict(extra="ignore")
    id: RowId
    property: Annotated[str, Field(max_length=64), AfterValidator(_count_property)]
    end_time: Timestamp
    value: Annotated[int, Field(ge=-INT64_MAX, le=INT64_MAX)]
    subgroup: Text | None = None
    realm: RowId | None = None


class AuditLogRow(BaseModel):
    """A RealmAuditLog row (Zulip's RealmAuditLogDataForAnalytics)."""

    model_config = ConfigDict(extra="ignore")
    id: RowId
    event_type: Annotated[int, AfterValidator(_event_type)]
    event_time: Timestamp
    realm: RowId | None = None
    backfilled: bool = False


class RealmRow(BaseModel):
    """A realm of the server (Zulip's RealmDataForAnalytics): how realms come to exist."""

    model_config = ConfigDict(extra="ignore")
    id: RowId
    uuid: Annotated[str, Field(pattern=r"^[0-9a-fA-F-]{36}$"), AfterValidator(_realm_uuid)]
    host: Text = ""
    url: Annotated[str, Field(max_length=2000)] = ""
    name: Text = ""
    org_type: Annotated[int, Field(ge=0, le=SMALLINT_MAX)] = 0
    date_created: Timestamp | None = None
    deactivated: bool = False
    is_system_bot_realm: bool = False
    authentication_methods: dict[str, bool] = Field(default_factory=dict)
