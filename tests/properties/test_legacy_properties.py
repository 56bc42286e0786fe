"""Properties of the legacy token endpoints: push/register, push/unregister and
push/unregister/all (the invariant: tests/properties/conftest.py)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legacy.models import RemotePushDeviceToken
from registrations.models import RemoteZulipServer
from tests.properties.conftest import REALM_UUID, SERVER_KEY, SERVER_UUID, check, send, snapshot
from tests.properties.strategies import (
    Field,
    Request,
    authorizations,
    hostile_ints,
    hostile_text,
    requests,
    small_ints,
    tokens,
    uuids,
)

pytestmark = pytest.mark.django_db

AUTH = authorizations(SERVER_UUID, SERVER_KEY)

USER_FIELDS = [
    Field("user_id", st.one_of(small_ints(), hostile_ints()), json_text=True, clean=small_ints()),
    Field("user_uuid", uuids()),
    Field("realm_uuid", st.one_of(st.just(REALM_UUID), uuids(), uuids().map(str.upper))),
]
TOKEN_FIELDS = [
    *USER_FIELDS,
    Field("token", tokens(), clean=st.binary(min_size=32, max_size=32).map(bytes.hex)),
    Field(
        "token_kind",
        st.one_of(st.sampled_from([1, 2]), hostile_ints()),
        json_text=True,
        clean=st.just(1),
    ),
]
REGISTER_FIELDS = [
    *TOKEN_FIELDS,
    Field(
        "ios_app_id",
        st.one_of(st.sampled_from(["org.zulip.Zulip", "a.b-c"]), hostile_text()),
        clean=st.just("org.zulip.Zulip"),
    ),
]


@given(request=requests(REGISTER_FIELDS), auth=AUTH)
def test_push_register(known_server: RemoteZulipServer, request: Request, auth: str | None) -> None:
    before = snapshot()
    check("push/register", send("push/register", request, auth=auth), before)


# The clean unregistrations name a token the server has (put back after each example).
KNOWN_TOKEN = "ab" * 32
KNOWN_USER_ID = 5
UNREGISTER_FIELDS = [
    Field(f.name, f.valid, f.json_text, clean=st.just(KNOWN_TOKEN)) if f.name == "token" else f
    for f in TOKEN_FIELDS
    if f.name not in ("user_id", "user_uuid", "realm_uuid")
] + [
    Field(
        "user_id",
        st.one_of(small_ints(), hostile_ints()),
        json_text=True,
        clean=st.just(KNOWN_USER_ID),
    ),
    Field("user_uuid", uuids()),
    Field("realm_uuid", st.one_of(uuids(), hostile_text()), clean=st.just(REALM_UUID)),
]


def known_token(server: RemoteZulipServer) -> None:
    RemotePushDeviceToken.objects.get_or_create(
        server=server, user_id=KNOWN_USER_ID, kind=1, token=KNOWN_TOKEN
    )


@given(request=requests(UNREGISTER_FIELDS), auth=AUTH)
def test_push_unregister(
    known_server: RemoteZulipServer, request: Request, auth: str | None
) -> None:
    known_token(known_server)
    before = snapshot()
    check("push/unregister", send("push/unregister", request, auth=auth), before)


@given(request=requests(USER_FIELDS), auth=AUTH)
def test_push_unregister_all(
    known_server: RemoteZulipServer, request: Request, auth: str | None
) -> None:
    before = snapshot()
    check("push/unregister/all", send("push/unregister/all", request, auth=auth), before)
