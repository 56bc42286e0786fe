"""Matrix apps pointed at the fake APNs and FCM, written as a Sygnal operator writes them."""

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_django.fixtures import Settings

from matrix import config
from tests.conftest import EndpointResponse, call_endpoint
from tests.fakes.apns import SigningKey
from tests.fakes.fcm import FakeFcm, ServiceAccount

NOTIFY = "/_matrix/push/v1/notify"
APNS_APP = "com.example.app.ios"
SANDBOX_APP = "com.example.app.ios.dev"
VOIP_APP = "com.example.app.ios.voip"
FCM_APP = "com.example.app.android"
GLOB_APPS = "com.example.glob.*"
TOPIC = "com.example.app"

# A Matrix client uploads its APNs token base64; Apple knows it as hex.
APNS_TOKEN_HEX = "c0ffee" * 10 + "abcd"
APNS_PUSHKEY = base64.b64encode(bytes.fromhex(APNS_TOKEN_HEX)).decode()
FCM_PUSHKEY = "fcm-" + "f" * 140


def sygnal_config(
    *, apns_key: SigningKey, service_account_file: str, project_id: str
) -> dict[str, Any]:
    """A whole Sygnal config (only `apps:` is read), relative paths as Sygnal resolves them."""
    apns = {
        "type": "apns",
        "keyfile": "AuthKey.p8",
        "key_id": apns_key.key_id,
        "team_id": apns_key.team_id,
        "topic": TOPIC,
    }
    return {
        "log": {"setup": {"version": 1}},
        "http": {"bind_addresses": ["127.0.0.1"], "port": 5000},
        "apps": {
            APNS_APP: {**apns, "platform": "production"},
            SANDBOX_APP: {**apns, "platform": "sandbox", "push_type": "alert"},
            VOIP_APP: {**apns, "topic": TOPIC + ".voip", "push_type": "voip"},
            GLOB_APPS: apns,
            FCM_APP: {
                "type": "gcm",
                "api_version": "v1",
                "project_id": project_id,
                "service_account_file": service_account_file,
                # As Sygnal's own tests configure it (tests/test_gcm.py, com.example.gcm.apiv1).
                "fcm_options": {
                    "android": {"notification": {"body": "test body"}},
                    "apns": {
                        "payload": {
                            "aps": {"content-available": 1, "mutable-content": 1, "alert": ""}
                        }
                    },
                },
                "channels": [
                    {"id": "messages", "description": "New messages"},
                    "calls",
                ],
                "channel_types": {"m.room.message": "messages", "m.call.invite": "calls"},
            },
        },
    }


@pytest.fixture
def matrix_apps(
    settings: Settings,
    apns_settings: dict[str, str],
    fake_fcm: FakeFcm,
    service_account: ServiceAccount,
    apns_key: SigningKey,
    tmp_path: Path,
) -> Iterator[Path]:
    """MATRIX_APPS_FILE with APNs apps (production, sandbox, VoIP, a glob) and an FCM app in
    a project of its own (not the settings' FCM_CREDENTIALS_FILE, which is left unset)."""
    folder = tmp_path / "sygnal"
    folder.mkdir()
    (folder / "AuthKey.p8").write_text(apns_key.private_pem)
    (folder / "service_account.json").write_text(service_account.file_content(fake_fcm.token_uri))
    path = folder / "sygnal.yaml"
    # JSON is YAML: the file is the dict as a Sygnal config would hold it.
    path.write_text(
        json.dumps(
            sygnal_config(
                apns_key=apns_key,
                service_account_file="service_account.json",
                project_id=service_account.project_id,
            )
        )
    )
    settings.MATRIX_APPS_FILE = str(path)
    settings.FCM_ENDPOINT = fake_fcm.endpoint
    settings.FCM_CREDENTIALS_FILE = ""
    # The settings' own APNs key is not the apps': the apps' deliveries must use theirs.
    settings.APNS_TOKEN_KEY_FILE = ""
    settings.MATRIX_NOTIFY_RATE_LIMIT = (10**9, 60)
    config._load.cache_clear()
    yield path
    config._load.cache_clear()


def device(app_id: str, pushkey: str, **fields: Any) -> dict[str, Any]:
    return {"app_id": app_id, "pushkey": pushkey, "pushkey_ts": 12345678, **fields}


def message(devices: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """Sygnal's own test notification (tests/testutils.py, _make_dummy_notification)."""
    return {
        "notification": {
            "id": "$3957tyerfgewrf384",
            "room_id": "!slw48wfj34rtnrf:example.com",
            "event_id": "$qTOWWTEL48yPm3uT-gdNhFcoHxfKbZuqRVnnWWSkGBs",
            "type": "m.room.message",
            "sender": "@exampleuser:matrix.org",
            "sender_display_name": "Major Tom",
            "room_name": "Mission Control",
            "room_alias": "#exampleroom:matrix.org",
            "prio": "high",
            "content": {
                "msgtype": "m.text",
                "body": "I'm floating in a most peculiar way.",
                "other": 1,
            },
            "counts": {"unread": 2, "missed_calls": 1},
            "devices": devices,
            **fields,
        }
    }


def notify(body: Any, **headers: str) -> EndpointResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return call_endpoint("POST", NOTIFY, raw, **headers)
