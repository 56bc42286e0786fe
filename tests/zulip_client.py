"""A Zulip server talking to a running bouncer over real HTTP (manage.py serve), as Zulip does:
forms for registration and analytics, JSON for notify, HTTP Basic with uuid:key."""

import json
import secrets
import time
import uuid

import httpx

from registrations import sealing


def analytics_form(realm_uuid: str) -> dict[str, str]:
    """An analytics upload announcing one realm, as Zulip 12 sends it: every field JSON text."""
    realm = {
        "id": 2,
        "host": "chat.example.org",
        "url": "https://chat.example.org",
        "name": "Example",
        "org_type": 0,
        "date_created": time.time(),
        "deactivated": False,
        "is_system_bot_realm": False,
        "authentication_methods": {"Email": True},
        "uuid": realm_uuid,
        "uuid_owner_secret": "zuliprealm_secret",
    }
    data = {
        "realm_counts": [],
        "installation_counts": [],
        "realmauditlog_rows": [],
        "realms": [realm],
        "version": "12.0",
        "merge_base": "12.0",
        "api_feature_level": 483,
    }
    return {k: json.dumps(v) for k, v in data.items()}


class ZulipServerClient:
    """A Zulip server talking to the installed bouncer over HTTP, as Zulip does."""

    def __init__(self, base_url: str) -> None:
        self.base = f"{base_url}/api/v1/remotes/"
        self.uuid = str(uuid.uuid4())
        self.key = secrets.token_hex(32)
        self.realm_uuid = str(uuid.uuid4())

    def register(self) -> httpx.Response:
        return httpx.post(
            self.base + "server/register",
            data={
                "zulip_org_id": self.uuid,
                "zulip_org_key": self.key,
                "hostname": "chat.example.org",
                "contact_email": "admin@example.org",
            },
            timeout=15,
        )

    def upload_analytics(self) -> httpx.Response:
        return self.post_form("server/analytics", analytics_form(self.realm_uuid))

    def register_e2ee(self, public_key: str, token: str) -> httpx.Response:
        registration = {
            "token": token,
            "token_kind": "apns",
            "ios_app_id": "org.zulip.Zulip",
            "timestamp": int(time.time()),
        }
        return self.post_form(
            "push/e2ee/register",
            {
                "realm_uuid": self.realm_uuid,
                "token_id": sealing.token_id_b64(sealing.token_id_int(token)),
                "encrypted_push_registration": sealing.seal_registration(registration, public_key),
                "bouncer_public_key": public_key,
            },
        )

    def notify(self, tokens: list[str]) -> httpx.Response:
        body = {
            "realm_uuid": self.realm_uuid,
            "push_requests": [
                {
                    "token_id": sealing.token_id_b64(sealing.token_id_int(token)),
                    "http_headers": {"apns_priority": 10, "apns_push_type": "alert"},
                    "payload": {"push_key_id": 1, "encrypted_data": "c2VjcmV0"},
                }
                for token in tokens
            ],
        }
        return httpx.post(
            self.base + "push/e2ee/notify", json=body, auth=(self.uuid, self.key), timeout=30
        )

    def post_form(self, endpoint: str, data: dict[str, str]) -> httpx.Response:
        return httpx.post(self.base + endpoint, data=data, auth=(self.uuid, self.key), timeout=15)
