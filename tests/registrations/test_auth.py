"""HTTP Basic authentication, the rate limit and deactivation (spec part 1 sections 2.3, 2.4)."""

import base64
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.test import Client
from pytest_django.fixtures import Settings

from registrations.models import AuditLog, RemoteZulipServer
from tests.conftest import API, ZulipServer, basic_auth, wait_until

ENDPOINT = "push/unregister/all"
FORM = {"user_id": "10"}


def assert_unauthorized(response: object, msg: str) -> None:
    assert response.status_code == 401  # type: ignore[attr-defined]
    assert response["WWW-Authenticate"] == 'Basic realm="zulip"'  # type: ignore[index]
    assert response.json() == {"result": "error", "msg": msg, "code": "UNAUTHORIZED"}  # type: ignore[attr-defined]


def test_valid_credentials_are_accepted_and_last_request_time_is_recorded(
    zulip_server: ZulipServer,
) -> None:
    response = zulip_server.post_form(ENDPOINT, FORM)
    assert response.status_code == 200
    zulip_server.row.refresh_from_db()
    assert zulip_server.row.last_request_datetime is not None


def test_a_user_api_key_username_is_refused(zulip_server: ZulipServer) -> None:
    response = zulip_server.post_form(ENDPOINT, FORM, auth=basic_auth("hamlet@zulip.com", "x" * 32))
    assert response.status_code == 400
    assert response.json() == {
        "result": "error",
        "msg": "Must validate with valid Zulip server API key",
        "code": "BAD_REQUEST",
    }


def test_an_unknown_uuid_is_told_to_register(zulip_server: ZulipServer) -> None:
    response = zulip_server.post_form(ENDPOINT, FORM, auth=basic_auth("not-a-uuid", "k" * 64))
    assert_unauthorized(
        response,
        "Zulip server auth failure: not-a-uuid is not registered -- "
        "did you run `manage.py register_server`?",
    )


def test_a_wrong_key_is_refused(zulip_server: ZulipServer) -> None:
    response = zulip_server.post_form(ENDPOINT, FORM, auth=basic_auth(zulip_server.uuid, "k" * 64))
    assert_unauthorized(
        response, f"Zulip server auth failure: key does not match role {zulip_server.uuid}"
    )


def test_a_garbled_header_is_refused(zulip_server: ZulipServer) -> None:
    for header in [
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic",
    ]:
        response = zulip_server.post_form(ENDPOINT, FORM, auth=header)
        assert_unauthorized(response, "Invalid authorization header for basic auth")


def test_another_scheme_is_refused(zulip_server: ZulipServer) -> None:
    response = zulip_server.post_form(ENDPOINT, FORM, auth="Bearer abc")
    assert response.status_code == 400
    assert response.json()["msg"] == "This endpoint requires HTTP basic authentication."


# Zulip also refuses requests on a realm subdomain of its own host ("Invalid subdomain for
# push notifications bouncer"); this bouncer serves no realms, so it has no subdomains.


def test_deactivate_then_every_request_is_refused(zulip_server: ZulipServer) -> None:
    response = zulip_server.post_json("server/deactivate", {})
    assert response.status_code == 200
    assert response.json() == {"result": "success", "msg": ""}
    zulip_server.row.refresh_from_db()
    assert zulip_server.row.deactivated
    assert AuditLog.objects.filter(
        server=zulip_server.row, event_type="remote_server_deactivated"
    ).exists()
    deactivated = (
        "The mobile push notification service registration for your server has been deactivated"
    )
    assert_unauthorized(zulip_server.post_json("server/deactivate", {}), deactivated)
    assert_unauthorized(zulip_server.post_form(ENDPOINT, FORM), deactivated)


def test_reactivate_command_restores_access(zulip_server: ZulipServer) -> None:
    from django.core.management import call_command

    zulip_server.post_json("server/deactivate", {})
    call_command("reactivate_remote_server", zulip_server.uuid)
    assert zulip_server.post_form(ENDPOINT, FORM).status_code == 200
    assert AuditLog.objects.filter(
        server=zulip_server.row, event_type="remote_server_reactivated"
    ).exists()


def test_the_rate_limit_answers_429_with_retry_after(
    settings: Settings, zulip_server: ZulipServer
) -> None:
    settings.BOUNCER_RATE_LIMIT = (3, 60)
    for _ in range(3):
        assert zulip_server.post_form(ENDPOINT, FORM).status_code == 200
    response = zulip_server.post_form(ENDPOINT, FORM)
    assert response.status_code == 429
    body = response.json()
    assert (body["result"], body["msg"], body["code"]) == (
        "error",
        "API usage exceeded rate limit",
        "RATE_LIMIT_HIT",
    )
    assert 0 < body["retry-after"] <= 60
    assert 1 <= int(response["Retry-After"]) <= 60


def test_the_rate_limit_is_counted_in_redis_for_every_process(
    settings: Settings, zulip_server: ZulipServer
) -> None:
    settings.BOUNCER_RATE_LIMIT = (2, 60)
    client, pattern = _counters(zulip_server)
    zulip_server.post_form(ENDPOINT, FORM)
    keys = client.keys(pattern)
    assert len(keys) == 1
    assert int(client.get(keys[0]) or 0) == 1
    # Another process (here: another client with a fresh connection) shares the count.
    other = Client()
    other.post(
        API + ENDPOINT,
        data="user_id=10",
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=zulip_server.auth,
    )
    client.incr(keys[0])  # a third request counted by some other web process
    assert zulip_server.post_form(ENDPOINT, FORM).status_code == 429


def test_a_server_row_never_holds_its_plain_key(zulip_server: ZulipServer) -> None:
    row = RemoteZulipServer.objects.get(pk=zulip_server.row.pk)
    assert all(zulip_server.key not in str(value) for value in row.__dict__.values())


@pytest.mark.django_db
def test_analytics_status_needs_authentication() -> None:
    response = Client().get(API + "server/analytics/status")
    assert response.status_code == 401


def _counters(server: ZulipServer) -> tuple[redis.Redis, str]:
    """A Redis client, and the pattern of the keys that count this server's requests."""
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    return client, f"bouncer:ratelimit:server:{server.row.pk}:*"


def _empty_notify(server: ZulipServer) -> Any:
    realm = server.add_realm()
    return lambda: server.post_json(
        "push/e2ee/notify", {"realm_uuid": str(realm.uuid), "push_requests": []}
    )


@pytest.mark.django_db(transaction=True)
def test_the_notify_path_answers_429_past_the_limit(
    settings: Settings, zulip_server: ZulipServer
) -> None:
    settings.BOUNCER_RATE_LIMIT = (3, 60)
    notify = _empty_notify(zulip_server)
    assert [notify().status_code for _ in range(3)] == [200, 200, 200]
    response = notify()
    assert response.status_code == 429
    assert response.json()["code"] == "RATE_LIMIT_HIT"
    assert 1 <= int(response["Retry-After"]) <= 60


@pytest.mark.django_db(transaction=True)
def test_the_notify_paths_counts_reach_redis_and_others_counts_reach_it(
    settings: Settings, zulip_server: ZulipServer
) -> None:
    settings.BOUNCER_RATE_LIMIT = (5, 60)
    client, pattern = _counters(zulip_server)
    notify = _empty_notify(zulip_server)
    assert notify().status_code == 200
    assert wait_until(lambda: client.keys(pattern), 5)
    [key] = client.keys(pattern)
    assert wait_until(lambda: int(client.get(key) or 0) == 1, 5)
    # Other web processes counted three more; once synced, the sixth request is over.
    client.incrby(key, 3)
    assert notify().status_code == 200  # the fifth: this process learns the total now
    assert wait_until(lambda: int(client.get(key) or 0) == 5, 5)
    # This process alone has counted 2 (3 and 4 after these): a 429 within two more requests
    # comes only from the others' counts (the sync may land just after the next request).
    assert 429 in [notify().status_code, notify().status_code]


@pytest.mark.django_db(transaction=True)
def test_the_notify_paths_counters_expire_even_after_redis_lost_them(
    settings: Settings, zulip_server: ZulipServer
) -> None:
    settings.BOUNCER_RATE_LIMIT = (1000, 60)
    client, pattern = _counters(zulip_server)
    notify = _empty_notify(zulip_server)

    def counted_with_a_lifetime() -> bool:
        keys = client.keys(pattern)
        return bool(keys) and all(0 < int(client.ttl(key)) <= 61 for key in keys)

    assert notify().status_code == 200
    assert wait_until(counted_with_a_lifetime, 5)
    # Redis restarted empty: the next count recreates the key, which must not live forever.
    client.delete(*client.keys(pattern))
    assert notify().status_code == 200
    assert wait_until(counted_with_a_lifetime, 5)


def test_failed_authentications_are_limited_per_source_address(
    zulip_server: ZulipServer, settings: Settings
) -> None:
    settings.BOUNCER_AUTH_FAILURE_RATE_LIMIT = (3, 60)
    wrong = basic_auth(zulip_server.uuid, "k" * 64)

    def from_address(address: str, auth: str) -> int:
        response = Client(REMOTE_ADDR=address).post(API + ENDPOINT, FORM, HTTP_AUTHORIZATION=auth)
        return int(response.status_code)

    assert [from_address("203.0.113.5", wrong) for _ in range(4)] == [401, 401, 401, 429]
    # Only failures are counted and refused: the right key from that address still works,
    # and another address is not affected.
    assert from_address("203.0.113.5", zulip_server.auth) == 200
    assert from_address("203.0.113.6", wrong) == 401


def test_reactivation_is_refused_when_another_server_took_the_hostname(
    zulip_server: ZulipServer,
) -> None:
    from django.core.management import CommandError, call_command

    from tests.conftest import make_server

    zulip_server.client.post(API + "server/deactivate", HTTP_AUTHORIZATION=zulip_server.auth)
    make_server(hostname=zulip_server.row.hostname)
    with pytest.raises(CommandError, match="already exists"):
        call_command("reactivate_remote_server", zulip_server.uuid)
    assert RemoteZulipServer.objects.get(pk=zulip_server.row.pk).deactivated
