"""Properties of the Matrix push gateway (`/_matrix/push/v1/notify` on the event loop and the
device-channel endpoints): for any request, a 2xx or a 4xx in Matrix's shape, never a 5xx;
`rejected` holds only pushkeys the request named; a refused request changes no channel; and
afterwards a valid notification is still delivered."""

import base64
import json
from typing import Any
from urllib.parse import quote

import pytest
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st
from pytest_django.fixtures import Settings

from matrix.models import DeviceChannel
from tests.conftest import call_endpoint
from tests.fakes.apns import FakeApns
from tests.matrix.conftest import (  # noqa: F401 - matrix_apps is a fixture
    APNS_APP,
    APNS_PUSHKEY,
    APNS_TOKEN_HEX,
    FCM_APP,
    FCM_PUSHKEY,
    SANDBOX_APP,
    matrix_apps,
)
from tests.properties.strategies import (
    RawJson,
    broken_json,
    deep_json,
    hostile_ints,
    hostile_text,
    json_values,
)

pytestmark = [
    pytest.mark.usefixtures("eager_delivery", "matrix_apps"),
    pytest.mark.django_db(transaction=True),
]

NOTIFY = "/_matrix/push/v1/notify"


@pytest.fixture
def eager_delivery(settings: Settings) -> None:
    """Retries in-process (the examples need no worker); Redis stays for the rate limits."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.NOTIFY_WAIT_SECONDS = 5.0


big_text = st.builds(
    lambda n, c: c * n, st.sampled_from([0, 10, 1100, 5000]), st.sampled_from(["x", "é", "😀"])
)
texts = st.one_of(hostile_text(), big_text)
app_ids = st.one_of(st.sampled_from([APNS_APP, SANDBOX_APP, FCM_APP, "com.example.glob.x"]), texts)
pushkeys = st.one_of(
    st.sampled_from(
        [APNS_PUSHKEY, FCM_PUSHKEY, "spqr", "", "!!", base64.b64encode(b"x" * 300).decode()]
    ),
    hostile_text(),
)
datas = st.one_of(
    st.none(),
    json_values(),
    st.fixed_dictionaries(
        {},
        optional={
            "default_payload": st.one_of(json_values(), st.just({"aps": {"mutable-content": 1}})),
            "channel": st.one_of(st.sampled_from(["messages", "calls", "x"]), json_values()),
            "format": st.sampled_from(["event_id_only", "x"]),
        },
    ),
)
devices = st.one_of(
    st.fixed_dictionaries(
        {"app_id": app_ids, "pushkey": pushkeys},
        optional={
            "pushkey_ts": st.one_of(hostile_ints(), json_values()),
            "data": datas,
            "tweaks": st.one_of(st.just({"sound": "default"}), json_values()),
        },
    ),
    json_values(),
)
values = st.one_of(texts, json_values())
notifications = st.fixed_dictionaries(
    {"devices": st.one_of(st.lists(devices, max_size=4), json_values())},
    optional={
        "event_id": values,
        "room_id": values,
        "type": st.one_of(
            st.sampled_from(
                ["m.room.message", "m.room.encrypted", "m.call.invite", "m.room.member"]
            ),
            values,
        ),
        "sender": values,
        "sender_display_name": values,
        "room_name": values,
        "room_alias": values,
        "membership": st.one_of(st.just("invite"), values),
        "user_is_target": st.one_of(st.booleans(), json_values()),
        "prio": st.one_of(st.sampled_from(["high", "low"]), values),
        "content": st.one_of(
            st.fixed_dictionaries(
                {"msgtype": st.sampled_from(["m.text", "m.emote", "m.image"]), "body": values}
            ),
            json_values(),
        ),
        "counts": st.one_of(
            st.fixed_dictionaries(
                {}, optional={"unread": hostile_ints(), "missed_calls": hostile_ints()}
            ),
            json_values(),
        ),
    },
)
bodies = st.one_of(
    st.builds(lambda n: {"notification": n}, notifications),
    json_values(),
    deep_json(),
    broken_json(),
)


def encode(body: Any) -> bytes:
    if isinstance(body, RawJson):
        return body.encode("utf-8", "surrogatepass")
    return json.dumps(body).encode()


def named_pushkeys(body: Any) -> set[str]:
    notification = body.get("notification") if isinstance(body, dict) else None
    found = notification.get("devices") if isinstance(notification, dict) else None
    if not isinstance(found, list):
        return set()
    return {
        d["pushkey"] for d in found if isinstance(d, dict) and isinstance(d.get("pushkey"), str)
    }


def matrix_shaped(response: Any) -> Any:
    assert response.status_code < 500, response.content[:2000]
    answer = json.loads(response.content)
    assert isinstance(answer, dict)
    if response.status_code >= 400:
        assert isinstance(answer.get("errcode"), str)
        assert answer["errcode"].startswith("M_")
        assert isinstance(answer.get("error"), str)
    else:
        assert response.status_code == 200
    return answer


def test_notify_never_fails_and_rejects_only_what_it_was_sent(fake_apns: FakeApns) -> None:
    @given(body=bodies)
    def examples(body: Any) -> None:
        response = call_endpoint("POST", NOTIFY, encode(body))
        answer = matrix_shaped(response)
        if response.status_code == 200:
            assert set(answer) == {"rejected"}
            assert set(answer["rejected"]) <= named_pushkeys(body)

    examples()
    # Whatever the examples sent, the senders still deliver.
    before = len(fake_apns.requests_for(APNS_TOKEN_HEX))
    valid = {
        "notification": {
            "event_id": "$e",
            "room_id": "!r:example.org",
            "type": "m.room.message",
            "sender": "@a:example.org",
            "content": {"msgtype": "m.text", "body": "hi"},
            "devices": [{"app_id": APNS_APP, "pushkey": APNS_PUSHKEY}],
        }
    }
    assert call_endpoint("POST", NOTIFY, encode(valid)).json() == {"rejected": []}
    assert len(fake_apns.requests_for(APNS_TOKEN_HEX)) == before + 1


channel_bodies = st.one_of(
    st.fixed_dictionaries(
        {
            "channels": st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "id": st.one_of(st.sampled_from(["messages", "calls"]), values),
                            "status": st.one_of(st.sampled_from(["enabled", "disabled"]), values),
                        }
                    ),
                    max_size=3,
                ),
                json_values(),
            )
        },
        optional={"app_id": st.one_of(st.just(FCM_APP), values)},
    ),
    json_values(),
    deep_json(),
    broken_json(),
)


def test_channel_endpoints_never_fail_and_refusals_change_nothing() -> None:
    client = Client()

    @given(
        pushkey=pushkeys,
        app_id=st.one_of(st.just(FCM_APP), hostile_text()),
        body=channel_bodies,
    )
    def examples(pushkey: str, app_id: str, body: Any) -> None:
        path = f"/_matrix/push/v1/channels/{quote(pushkey, safe='', errors='surrogatepass')}"
        query = f"?app_id={quote(app_id, safe='', errors='surrogatepass')}"
        before = list(
            DeviceChannel.objects.order_by("pk").values_list("pushkey", "channel", "enabled")
        )
        posted = client.post(path + query, data=encode(body), content_type="application/json")
        if matrix_shaped(posted) and posted.status_code >= 400:
            after = DeviceChannel.objects.order_by("pk").values_list(
                "pushkey", "channel", "enabled"
            )
            assert list(after) == before
        matrix_shaped(client.get(path + query))
        matrix_shaped(client.get("/_matrix/push/v1/channels" + query))

    examples()
