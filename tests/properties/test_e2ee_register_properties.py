"""Properties of push/e2ee/register: sealed registrations, well-formed and hostile (the
invariant: tests/properties/conftest.py)."""

import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.public import PrivateKey
from pytest_django.fixtures import Settings

from registrations import sealing
from registrations.models import RemoteZulipServer
from tests.properties.conftest import REALM_UUID, SERVER_KEY, SERVER_UUID, check, send, snapshot
from tests.properties.strategies import (
    Field,
    Request,
    authorizations,
    hostile_ints,
    hostile_text,
    hostile_values,
    requests,
    small_ints,
    tokens,
    uuids,
)

pytestmark = pytest.mark.django_db

AUTH = authorizations(SERVER_UUID, SERVER_KEY)

# One bouncer key pair for the module, given to the bouncer as a Zulip-format key
# (PUSH_REGISTRATION_ENCRYPTION_KEYS), so that registrations are sealed once per example
# without a key row per example.
_PRIVATE = PrivateKey.generate()
PUBLIC = sealing.public_key_of(_PRIVATE)


@pytest.fixture(autouse=True)
def bouncer_key(settings: Settings) -> None:
    settings.PUSH_REGISTRATION_ENCRYPTION_KEYS = {PUBLIC: sealing.b64encode(bytes(_PRIVATE))}


def registrations() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "token": tokens(),
            "token_kind": st.one_of(st.sampled_from(["apns", "fcm"]), hostile_values()),
            "timestamp": st.one_of(st.just(int(time.time())), hostile_ints()),
            "ios_app_id": st.one_of(
                st.sampled_from(["org.zulip.Zulip", None]), hostile_text(), hostile_values()
            ),
        },
        optional={"extra": hostile_values()},
    )


def clean_registrations() -> st.SearchStrategy[dict[str, Any]]:
    apns = st.fixed_dictionaries(
        {
            "token": st.binary(min_size=32, max_size=32).map(bytes.hex),
            "token_kind": st.just("apns"),
            "timestamp": st.just(int(time.time())),
            "ios_app_id": st.just("org.zulip.Zulip"),
        }
    )
    fcm = st.fixed_dictionaries(
        {
            "token": st.text("abcdefABCDEF0123456789:_-", min_size=20, max_size=160),
            "token_kind": st.just("fcm"),
            "timestamp": st.just(int(time.time())),
            "ios_app_id": st.none(),
        }
    )
    return st.one_of(apns, fcm)


@st.composite
def register_requests(draw: st.DrawFn) -> Request:
    registration = draw(st.one_of(registrations(), clean_registrations()))
    token = registration["token"]
    sealed = sealing.seal_registration(registration, PUBLIC)
    token_id = sealing.token_id_b64(sealing.token_id_int(token))
    fields = [
        Field(
            "realm_uuid",
            st.one_of(st.just(REALM_UUID), uuids(), hostile_text()),
            clean=st.just(REALM_UUID),
        ),
        Field(
            "bouncer_public_key",
            st.one_of(st.just(PUBLIC), hostile_text(44)),
            clean=st.just(PUBLIC),
        ),
        Field(
            "encrypted_push_registration",
            st.one_of(st.just(sealed), hostile_text()),
            clean=st.just(sealed),
        ),
        Field("token_id", st.one_of(st.just(token_id), hostile_text(12)), clean=st.just(token_id)),
        Field("push_account_id", st.one_of(small_ints(), hostile_ints()), json_text=True),
    ]
    return draw(requests(fields))


@given(request=register_requests(), auth=AUTH)
def test_push_e2ee_register(
    known_server: RemoteZulipServer, request: Request, auth: str | None
) -> None:
    before = snapshot()
    check("push/e2ee/register", send("push/e2ee/register", request, auth=auth), before)
