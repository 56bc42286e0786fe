"""Properties of the notify endpoints (push/e2ee/notify, push/notify, push/test_notification),
served on the event loop (bouncer/endpoints.py); the invariant: tests/properties/conftest.py.

Their examples include payloads over every provider's limit (4 KB to 1 MB), and after each
run a valid notification to each provider must still be delivered: no input may leave the
senders unable to send.
"""

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pytest_django.fixtures import Settings

from legacy.models import RemotePushDeviceToken
from registrations import sealing
from registrations.models import RemotePushDevice, RemoteRealm, RemoteZulipServer
from tests.conftest import basic_auth, call_endpoint
from tests.fakes.apns import FakeApns
from tests.fakes.fcm import FakeFcm
from tests.properties.conftest import REALM_UUID, SERVER_KEY, SERVER_UUID, check, snapshot
from tests.properties.strategies import (
    Field,
    Request,
    authorizations,
    hostile_ints,
    hostile_text,
    json_values,
    requests,
    small_ints,
    tokens,
    uuids,
)

pytestmark = [
    pytest.mark.usefixtures("eager_delivery", "upstreams"),
    # The notify endpoints read through their own connections: test data must be committed.
    pytest.mark.django_db(transaction=True),
]

AUTH = authorizations(SERVER_UUID, SERVER_KEY)
APNS = "ab" * 32
FCM = "fcm-" + "c" * 60
USER_ID = 5

# Payload text from empty to far beyond any provider's limit.
SIZES = st.sampled_from([0, 10, 4000, 4097, 5 * 1024, 17 * 1024, 70 * 1024, 1024 * 1024])
big_text = st.builds(lambda n, c: c * n, SIZES, st.sampled_from(["x", "é", "\U0001f600"]))
payload_dicts = st.one_of(
    st.dictionaries(st.sampled_from(["alert", "sound", "badge", "custom"]), json_values()),
    st.builds(lambda t: {"alert": {"title": "x", "body": t}}, big_text),
)


def token_id(token: str) -> str:
    return sealing.token_id_b64(sealing.token_id_int(token))


token_ids = st.one_of(
    st.sampled_from([token_id(APNS), token_id(FCM)]), hostile_text(), st.just("AAAAAAAAAAA=")
)
apns_item = st.fixed_dictionaries(
    {
        "token_id": token_ids,
        "http_headers": st.fixed_dictionaries(
            {
                "apns_priority": st.sampled_from([10, 5, 1, 7]),
                "apns_push_type": st.sampled_from(["alert", "background", "voip", "nope"]),
            }
        ),
        "payload": st.fixed_dictionaries(
            {
                "push_key_id": st.one_of(small_ints(), hostile_ints()),
                "encrypted_data": st.one_of(big_text, hostile_text()),
            },
            optional={"aps": payload_dicts},
        ),
    }
)
fcm_item = st.fixed_dictionaries(
    {
        "token_id": token_ids,
        "fcm_priority": st.sampled_from(["high", "normal", "urgent"]),
        "payload": st.fixed_dictionaries(
            {
                "push_key_id": st.one_of(small_ints(), hostile_ints()),
                "encrypted_data": st.one_of(big_text, hostile_text()),
            }
        ),
    }
)
E2EE_FIELDS = [
    Field("realm_uuid", st.one_of(st.just(REALM_UUID), uuids()), clean=st.just(REALM_UUID)),
    Field(
        "push_requests",
        st.lists(st.one_of(apns_item, fcm_item, json_values()), max_size=4),
        json_text=True,
    ),
]
LEGACY_FIELDS = [
    Field("user_id", st.one_of(small_ints(), hostile_ints()), clean=st.just(USER_ID)),
    Field("user_uuid", uuids()),
    Field("realm_uuid", st.one_of(st.just(REALM_UUID), uuids())),
    Field("apns_payload", payload_dicts),
    Field(
        "gcm_payload",
        st.one_of(json_values(), st.builds(lambda t: {"event": "message", "content": t}, big_text)),
    ),
    Field("gcm_options", st.one_of(st.just({}), st.just({"priority": "high"}), json_values())),
    Field("android_devices", st.lists(st.one_of(st.just(FCM), tokens()), max_size=3)),
    Field("apple_devices", st.lists(st.one_of(st.just(APNS), tokens()), max_size=3)),
]
TEST_FIELDS = [
    Field("token", st.one_of(st.sampled_from([APNS, FCM]), tokens()), clean=st.just(APNS)),
    Field("token_kind", st.one_of(st.sampled_from([1, 2]), hostile_ints()), clean=st.just(1)),
    Field("user_id", st.one_of(small_ints(), hostile_ints()), clean=st.just(USER_ID)),
    Field("base_payload", st.one_of(json_values(), payload_dicts)),
]


@pytest.fixture
def eager_delivery(settings: Settings) -> None:
    """Retries in-process (the examples need no worker); Redis stays for the rate limits."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.NOTIFY_WAIT_SECONDS = 5.0


@pytest.fixture
def devices(known_server: RemoteZulipServer) -> None:
    realm = RemoteRealm.objects.get(uuid=REALM_UUID)
    for token, kind in ((APNS, "apns"), (FCM, "fcm")):
        RemotePushDevice.objects.create(
            remote_realm=realm,
            token=token,
            token_kind=kind,
            token_id=sealing.token_id_int(token),
            ios_app_id="org.zulip.Zulip" if kind == "apns" else None,
        )
    for token, legacy_kind in ((APNS, 1), (FCM, 2)):
        RemotePushDeviceToken.objects.create(
            server=known_server,
            user_id=USER_ID,
            token=token,
            kind=legacy_kind,
            ios_app_id="org.zulip.Zulip" if legacy_kind == 1 else None,
        )


def send(endpoint: str, request: Request, auth: str | None) -> Any:
    headers = {"content-type": request.content_type} if request.content_type else {}
    return call_endpoint(
        request.method, "/api/v1/remotes/" + endpoint, request.body, auth=auth, **headers
    )


def still_delivers(fake_apns: FakeApns, fake_fcm: FakeFcm) -> None:
    """After whatever the examples sent, a valid notification reaches each provider."""
    # Dead-token answers never come from the fakes here, but an example may have been
    # answered otherwise: the devices are made current again first.
    RemotePushDevice.objects.update(expired_time=None)
    before = (fake_apns.delivered, fake_fcm.delivered)
    body = json.dumps(
        {
            "realm_uuid": REALM_UUID,
            "push_requests": [
                {
                    "token_id": token_id(APNS),
                    "http_headers": {"apns_priority": 10, "apns_push_type": "alert"},
                    "payload": {"push_key_id": 1, "encrypted_data": "abc"},
                },
                {
                    "token_id": token_id(FCM),
                    "fcm_priority": "high",
                    "payload": {"push_key_id": 1, "encrypted_data": "abc"},
                },
            ],
        }
    ).encode()
    auth = basic_auth(SERVER_UUID, SERVER_KEY)
    answer = call_endpoint("POST", "/api/v1/remotes/push/e2ee/notify", body, auth=auth).json()
    assert answer["apple_successfully_sent_count"] == 1, answer
    assert answer["android_successfully_sent_count"] == 1, answer
    assert (fake_apns.delivered, fake_fcm.delivered) == (before[0] + 1, before[1] + 1)


def run_examples(endpoint: str, fields: list[Field]) -> Callable[[], None]:
    @given(request=requests(fields, json_ok=True), auth=AUTH)
    def examples(request: Request, auth: str | None) -> None:
        before = snapshot()
        check(endpoint, send(endpoint, request, auth), before)

    return examples


@pytest.mark.usefixtures("devices")
@pytest.mark.parametrize(
    ("endpoint", "fields"),
    [
        ("push/e2ee/notify", E2EE_FIELDS),
        ("push/notify", LEGACY_FIELDS),
        ("push/test_notification", TEST_FIELDS),
    ],
)
def test_notify_endpoints(
    endpoint: str,
    fields: list[Field],
    fake_apns: FakeApns,
    fake_fcm: FakeFcm,
) -> None:
    run_examples(endpoint, fields)()
    still_delivers(fake_apns, fake_fcm)
