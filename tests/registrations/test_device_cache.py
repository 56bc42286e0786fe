"""The notify path's device cache: a realm that keeps missing is loaded whole.

A device whose row is expired behind the cache's back (no change published) shows what the
notify was answered from: still sent means the cache, "delete" means PostgreSQL.
"""

import pytest
from django.utils import timezone

from registrations import lookups
from registrations.models import RemotePushDevice, RemoteRealm
from tests.conftest import ZulipServer, add_e2ee_devices, e2ee_notify
from tests.delivery.test_notify_e2ee import tid

pytestmark = [
    pytest.mark.usefixtures("in_process_delivery", "upstreams"),
    pytest.mark.django_db(transaction=True),
]

MISSES = lookups.devices.LOAD_AFTER_MISSES


def tokens(n: int, prefix: str = "a") -> list[str]:
    return [f"{prefix}{i:03d}".ljust(64, "0") for i in range(n)]


def expire_quietly(token: str) -> None:
    """Expired in the database, and nobody told (as a change not yet published)."""
    RemotePushDevice.objects.filter(token=token).update(expired_time=timezone.now())


def answered_from_cache(server: ZulipServer, realm: RemoteRealm, token: str) -> bool:
    answer = e2ee_notify(server, realm, [token])
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert (body["apple_successfully_sent_count"], body["delete_token_ids"]) in [
        (1, []),
        (0, [tid(token)]),
    ]
    return bool(body["apple_successfully_sent_count"])


def test_a_realm_that_keeps_missing_is_loaded_whole(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    named = tokens(MISSES + 5)
    add_e2ee_devices(realm, named)
    # Before enough misses, a device never named is read from PostgreSQL.
    expire_quietly(named[-1])
    assert not answered_from_cache(zulip_server, realm, named[-1])
    for token in named[: MISSES - 1]:
        assert e2ee_notify(zulip_server, realm, [token]).json()["apple_successfully_sent_count"]
    # The misses so far (MISSES, with the expired one) loaded the realm; a device never
    # named is then answered from the cache.
    expire_quietly(named[-3])
    assert answered_from_cache(zulip_server, realm, named[-3])


def test_a_device_registered_after_the_load_is_found(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    named = tokens(MISSES)
    add_e2ee_devices(realm, named)
    for token in named:
        e2ee_notify(zulip_server, realm, [token])
    [late] = tokens(1, prefix="b")
    add_e2ee_devices(realm, [late])
    assert answered_from_cache(zulip_server, realm, late)


def test_a_change_published_drops_the_loaded_realm(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    named = tokens(MISSES + 2)
    add_e2ee_devices(realm, named)
    for token in named[:MISSES]:
        e2ee_notify(zulip_server, realm, [token])
    expire_quietly(named[-1])
    lookups.publish_change([realm.uuid])
    assert not answered_from_cache(zulip_server, realm, named[-1])


def test_a_realm_too_large_is_looked_up_device_by_device(
    zulip_server: ZulipServer, realm: RemoteRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lookups.devices, "LOAD_MAX_DEVICES", MISSES)
    named = tokens(MISSES + 3)
    add_e2ee_devices(realm, named)
    for token in named[:MISSES]:
        e2ee_notify(zulip_server, realm, [token])
    for token in named[MISSES:]:
        expire_quietly(token)
        assert not answered_from_cache(zulip_server, realm, token)
    # The devices already named stay cached.
    expire_quietly(named[0])
    assert answered_from_cache(zulip_server, realm, named[0])
