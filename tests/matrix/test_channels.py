"""Device channels (TI-Messenger): list, read, change, and what a notify naming one reaches."""

import json
from typing import Any
from urllib.parse import quote

import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from matrix.models import DeviceChannel
from tests.fakes.fcm import FakeFcm
from tests.matrix.conftest import FCM_APP, FCM_PUSHKEY, device, message, notify

pytestmark = [
    pytest.mark.usefixtures("in_process_delivery", "matrix_apps"),
    pytest.mark.django_db(transaction=True),
]

BASE = "/_matrix/push/v1/channels"
# Base64 pushkeys hold "/" and "+": clients send them percent-encoded in the path.
SLASHED = "Xp/MzCt8/9DcSNE9cuiaoT5Ac55job3TdLSSmtmYl4A="


def get(path: str, app_id: str = FCM_APP) -> Any:
    return Client().get(path, {"app_id": app_id})


def post(pushkey: str, body: Any, app_id: str = FCM_APP) -> Any:
    return Client().post(
        f"{BASE}/{quote(pushkey, safe='', errors='surrogatepass')}?app_id={app_id}",
        data=json.dumps(body),
        content_type="application/json",
    )


def states(pushkey: str) -> dict[str, str]:
    response = get(f"{BASE}/{quote(pushkey, safe='')}")
    assert response.status_code == 200
    return {c["id"]: c["status"] for c in response.json()["channels"]}


def test_the_available_channels_are_the_apps() -> None:
    response = get(BASE)

    assert response.status_code == 200
    assert response.json() == {
        "channels": [
            {"id": "messages", "description": "New messages"},
            {"id": "calls", "description": ""},
        ]
    }


def test_a_new_device_has_every_channel_not_set() -> None:
    assert states(SLASHED) == {"messages": "not_set", "calls": "not_set"}


def test_a_post_changes_only_the_channels_it_names() -> None:
    assert post(SLASHED, {"channels": [{"id": "messages", "status": "enabled"}]}).status_code == 200
    assert post(SLASHED, {"channels": [{"id": "calls", "status": "disabled"}]}).status_code == 200

    assert states(SLASHED) == {"messages": "enabled", "calls": "disabled"}

    post(SLASHED, {"channels": [{"id": "messages", "status": "disabled"}]})
    assert states(SLASHED) == {"messages": "disabled", "calls": "disabled"}


def test_the_app_id_may_come_in_the_body() -> None:
    response = Client().post(
        f"{BASE}/{quote(SLASHED, safe='')}",
        data=json.dumps({"app_id": FCM_APP, "channels": [{"id": "calls", "status": "enabled"}]}),
        content_type="application/json",
    )
    assert response.status_code == 200
    assert states(SLASHED)["calls"] == "enabled"


@pytest.mark.parametrize(
    "body",
    [
        {"channels": [{"id": "nope", "status": "enabled"}]},
        {"channels": [{"id": "messages", "status": "on"}]},
        {"channels": {"messages": "enabled"}},
        [],
        {"channels": [{"id": "messages", "status": "enabled"}, {"id": 3, "status": "enabled"}]},
    ],
)
def test_an_invalid_change_is_a_400_and_changes_nothing(body: Any) -> None:
    response = post(SLASHED, body)

    assert response.status_code == 400
    assert response.json()["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM")
    assert not DeviceChannel.objects.exists()


def test_an_unknown_app_is_a_404_in_matrixs_shape() -> None:
    for response in (
        get(BASE, app_id="org.unknown"),
        get(f"{BASE}/k", app_id="org.unknown"),
        post("k", {"channels": []}, app_id="org.unknown"),
    ):
        assert response.status_code == 404
        assert response.json()["errcode"] == "M_NOT_FOUND"


def test_a_missing_app_id_or_bad_json_is_a_400() -> None:
    assert Client().get(BASE).json()["errcode"] == "M_MISSING_PARAM"
    response = Client().post(
        f"{BASE}/k?app_id={FCM_APP}", data=b"{", content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_NOT_JSON"


def test_outside_the_allowed_networks_is_403(settings: Settings) -> None:
    settings.MATRIX_NOTIFY_ALLOWED_NETWORKS = ("10.0.0.0/8",)

    response = get(BASE)

    assert response.status_code == 403
    assert response.json()["errcode"] == "M_FORBIDDEN"


def test_a_notify_naming_a_channel_reaches_only_devices_that_enabled_it(
    fake_fcm: FakeFcm,
) -> None:
    enabled, disabled, unset = FCM_PUSHKEY + "e", FCM_PUSHKEY + "d", FCM_PUSHKEY + "u"
    post(enabled, {"channels": [{"id": "calls", "status": "enabled"}]})
    post(disabled, {"channels": [{"id": "calls", "status": "disabled"}]})
    devices = [
        device(FCM_APP, key, data={"channel": "calls"}) for key in (enabled, disabled, unset)
    ]

    response = notify(message(devices, type="m.room.x"))

    assert response.json() == {"rejected": []}
    assert len(fake_fcm.messages_for(enabled)) == 1
    assert fake_fcm.messages_for(disabled) == fake_fcm.messages_for(unset) == []


def test_an_event_type_mapped_to_a_channel_goes_only_where_it_is_enabled(
    fake_fcm: FakeFcm,
) -> None:
    enabled, unset = FCM_PUSHKEY + "e", FCM_PUSHKEY + "u"
    post(enabled, {"channels": [{"id": "messages", "status": "enabled"}]})

    # m.room.message maps to "messages" in the app's channel_types.
    notify(message([device(FCM_APP, enabled), device(FCM_APP, unset)]))

    assert len(fake_fcm.messages_for(enabled)) == 1
    assert fake_fcm.messages_for(unset) == []


def test_a_pushkey_no_row_can_hold_has_no_channel_enabled(fake_fcm: FakeFcm) -> None:
    odd = "k\x00\ud800"
    assert post(odd, {"channels": [{"id": "calls", "status": "enabled"}]}).status_code in (
        400,
        404,
    )

    response = notify(message([device(FCM_APP, odd, data={"channel": "calls"})], type="x"))

    assert response.json() == {"rejected": []}
    assert fake_fcm.messages == []


def test_other_paths_and_methods_get_matrixs_unrecognized() -> None:
    client = Client(enforce_csrf_checks=True)
    for response, status in (
        (client.get("/_matrix/push/v1/channels/"), 404),
        (client.post("/_matrix/push/v1/elsewhere", data=b"{}", content_type="x/y"), 404),
        (client.post(BASE, data=b"{}", content_type="application/json"), 405),
        (client.delete(f"{BASE}/k"), 405),
    ):
        assert response.status_code == status
        assert response.json()["errcode"] == "M_UNRECOGNIZED"
