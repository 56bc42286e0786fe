"""Properties of the server endpoints: register, transfer, verify_challenge, deactivate,
analytics and analytics/status (the invariant: tests/properties/conftest.py)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registrations.analytics import COUNT_STAT_PROPERTIES, SYNCED_AUDIT_LOG_EVENT_TYPES
from registrations.models import RemoteZulipServer
from tests.conftest import make_server
from tests.properties.conftest import (
    SERVER_HOSTNAME,
    SERVER_KEY,
    SERVER_UUID,
    check,
    reactivate,
    send,
    snapshot,
)
from tests.properties.strategies import (
    Field,
    Request,
    api_keys,
    authorizations,
    emails,
    hostile_ints,
    hostile_text,
    hostile_values,
    hostnames,
    plain_hostnames,
    requests,
    small_ints,
    uuids,
)

pytestmark = pytest.mark.django_db


AUTH = authorizations(SERVER_UUID, SERVER_KEY)

REGISTER = requests(
    [
        Field(
            "zulip_org_id",
            st.one_of(uuids(), st.just(SERVER_UUID), uuids().map(str.upper)),
            clean=uuids(),
        ),
        Field("zulip_org_key", st.one_of(api_keys(), st.just(SERVER_KEY))),
        Field(
            "hostname", st.one_of(hostnames(), st.just(SERVER_HOSTNAME)), clean=plain_hostnames()
        ),
        Field("contact_email", emails(), clean=st.just("admin@zulip.example.net")),
        Field("new_org_key", api_keys()),
    ]
)


@given(request=REGISTER)
def test_server_register(known_server: RemoteZulipServer, request: Request) -> None:
    before = snapshot()
    check("server/register", send("server/register", request), before)


TRANSFER = requests([Field("hostname", st.one_of(hostnames(), st.just(SERVER_HOSTNAME)))])


@given(request=TRANSFER)
def test_server_register_transfer(known_server: RemoteZulipServer, request: Request) -> None:
    before = snapshot()
    check("server/register/transfer", send("server/register/transfer", request), before)


# Registered on a loopback address, which the fetch refuses (the suite has no network).
LOOPBACK_HOSTNAME = "127.0.0.1:9"
VERIFY = requests(
    [
        Field("hostname", st.one_of(hostnames(), st.just(LOOPBACK_HOSTNAME))),
        Field("access_token", st.text("abcXYZ019_-", min_size=1, max_size=40)),
    ]
)


@pytest.fixture
def loopback_server(db: None) -> None:
    make_server(hostname=LOOPBACK_HOSTNAME)


@given(request=VERIFY)
def test_server_register_verify_challenge(loopback_server: None, request: Request) -> None:
    before = snapshot()
    endpoint = "server/register/verify_challenge"
    check(endpoint, send(endpoint, request), before)


@given(request=requests([], json_ok=True), auth=AUTH)
def test_server_deactivate(
    known_server: RemoteZulipServer, request: Request, auth: str | None
) -> None:
    before = snapshot()
    check("server/deactivate", send("server/deactivate", request, auth=auth), before)
    reactivate(known_server)


def count_rows(*, with_realm: bool) -> st.SearchStrategy[list[dict[str, object]]]:
    row = st.fixed_dictionaries(
        {
            "id": st.one_of(small_ints(), hostile_ints()),
            "property": st.one_of(st.sampled_from(sorted(COUNT_STAT_PROPERTIES)), hostile_text()),
            "end_time": st.one_of(st.floats(0, 2e9), st.floats()),
            "value": st.one_of(small_ints(), hostile_ints()),
            "subgroup": st.one_of(st.none(), st.just("false"), hostile_text()),
            **({"realm": st.one_of(small_ints(), hostile_ints())} if with_realm else {}),
        },
        optional={"extra": hostile_values()},
    )
    return st.lists(st.one_of(row, hostile_values()), max_size=3)


def audit_rows() -> st.SearchStrategy[list[object]]:
    row = st.fixed_dictionaries(
        {
            "id": st.one_of(small_ints(), hostile_ints()),
            "realm": small_ints(),
            "event_time": st.one_of(st.floats(0, 2e9), st.floats()),
            "backfilled": st.booleans(),
            "extra_data": st.one_of(st.just("{}"), hostile_values()),
            "event_type": st.one_of(
                st.sampled_from(sorted(SYNCED_AUDIT_LOG_EVENT_TYPES)), hostile_ints()
            ),
        }
    )
    return st.lists(st.one_of(row, hostile_values()), max_size=3)


def realm_rows() -> st.SearchStrategy[list[object]]:
    row = st.fixed_dictionaries(
        {
            "id": st.one_of(small_ints(), hostile_ints()),
            "uuid": st.one_of(uuids(), uuids().map(str.upper), hostile_text(36)),
            "host": st.one_of(hostnames(), hostile_text()),
            "url": st.one_of(st.just("https://chat.example.org"), hostile_text()),
            "name": st.one_of(st.just("Example"), hostile_text()),
            "org_type": st.one_of(st.sampled_from([0, 10, 20]), hostile_ints()),
            "date_created": st.one_of(st.floats(0, 2e9), st.floats(), st.none()),
            "deactivated": st.booleans(),
            "is_system_bot_realm": st.booleans(),
            "authentication_methods": st.one_of(
                st.just({"Email": True}), st.dictionaries(hostile_text(10), st.booleans())
            ),
        },
        optional={"uuid_owner_secret": hostile_text()},
    )
    return st.lists(st.one_of(row, hostile_values()), max_size=3)


CLEAN_REALMS = st.lists(
    st.fixed_dictionaries(
        {
            "id": small_ints(),
            "uuid": uuids(),
            "host": plain_hostnames(),
            "name": st.text(max_size=20),
            "org_type": st.sampled_from([0, 10, 20]),
            "date_created": st.floats(0, 2e9),
        }
    ),
    max_size=3,
    unique_by=lambda row: row["uuid"],
)
ANALYTICS_FIELDS = [
    Field("realm_counts", count_rows(with_realm=True), json_text=True, clean=st.just([])),
    Field("installation_counts", count_rows(with_realm=False), json_text=True, clean=st.just([])),
    Field("realmauditlog_rows", audit_rows(), json_text=True, clean=st.just([])),
    Field("realms", realm_rows(), json_text=True, clean=CLEAN_REALMS),
    Field("version", st.one_of(st.just("12.0"), hostile_text()), json_text=True),
    Field("merge_base", st.one_of(st.just("12.0"), hostile_text()), json_text=True),
    Field(
        "api_feature_level",
        st.one_of(small_ints(), hostile_ints()),
        json_text=True,
        clean=small_ints(),
    ),
]


@given(request=requests(ANALYTICS_FIELDS), auth=AUTH)
def test_server_analytics(
    known_server: RemoteZulipServer, request: Request, auth: str | None
) -> None:
    before = snapshot()
    check("server/analytics", send("server/analytics", request, auth=auth), before)


@given(request=requests([], method="GET"), auth=AUTH)
def test_server_analytics_status(
    known_server: RemoteZulipServer, request: Request, auth: str | None
) -> None:
    before = snapshot()
    endpoint = "server/analytics/status"
    check(endpoint, send(endpoint, request, auth=auth), before)
