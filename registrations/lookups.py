"""Servers, realms and E2EE devices for the notify path, cached in each web process.

Every notify starts with its server (authentication), its realm and its devices. Read from
PostgreSQL each time, they were the request's three round trips. Cached, they are read once per
BOUNCER_CACHE_MAX_SECONDS, and a change is pushed rather than waited out: whatever saves a
server or realm (the registration endpoints, the admin, a command) publishes its uuid in Redis
once committed (`publish_change`), and every web process polls that list every half
BOUNCER_CACHE_SECONDS and forgets the entries named (`watch_changes`). So a deactivation or an
API-key change takes effect everywhere within BOUNCER_CACHE_SECONDS. Where no watcher runs
(no Redis, Redis down, a process without the web server's loop), entries live only
BOUNCER_CACHE_SECONDS: the same bound, at the cost of more reads.
"""

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import redis
import redis.asyncio
from django.conf import settings
from django.db import connection
from django.utils import timezone

from bouncer.asyncdb import database
from registrations.models import RemoteRealm, RemoteZulipServer, api_key_matches
from registrations.realms import LAST_REQUEST_RESOLUTION, parse_realm_uuid, usable_realm

logger = logging.getLogger(__name__)

_SERVER_TABLE = RemoteZulipServer._meta.db_table
_REALM_TABLE = RemoteRealm._meta.db_table


@dataclass(frozen=True, slots=True)
class ServerInfo:
    id: int
    uuid: uuid.UUID
    api_key_hash: str
    deactivated: bool

    def key_matches(self, api_key: str) -> bool:
        return _key_matches(self.api_key_hash, api_key)


@dataclass(frozen=True, slots=True)
class RealmInfo:
    id: int
    uuid: uuid.UUID
    server_id: int


_verified: dict[tuple[str, str], bool] = {}


def _key_matches(stored_hash: str, api_key: str) -> bool:
    # A salted hash per request is most of authentication's CPU; the answer for a given
    # (hash, key) pair never changes.
    known = _verified.get((stored_hash, api_key))
    if known is None:
        if len(_verified) > 10_000:
            _verified.clear()
        known = _verified[(stored_hash, api_key)] = api_key_matches(api_key, stored_hash)
    return known


def _uuid_param(value: uuid.UUID) -> object:
    # PostgreSQL takes the UUID itself; SQLite stores Django's 32-character hex.
    return value if connection.vendor == "postgresql" else value.hex


CHANGES_KEY = "bouncer:lookups:changes"
VERSION_KEY = "bouncer:lookups:version"
# Changes kept for watchers that fell behind; one further behind forgets everything.
CHANGES_KEPT = 10_000


class _Watch:
    """What this process knows of the published changes."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.healthy_until = 0.0  # monotonic time until which the last poll vouches

    def fresh(self) -> bool:
        return time.monotonic() < self.healthy_until


_watch = _Watch()


def _max_age() -> float:
    return settings.BOUNCER_CACHE_MAX_SECONDS if _watch.fresh() else settings.BOUNCER_CACHE_SECONDS


class _Cache[K, V]:
    def __init__(self) -> None:
        self._entries: dict[K, tuple[float, V | None]] = {}

    def get(self, key: K) -> tuple[bool, V | None]:
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] > _max_age():
            return False, None
        return True, entry[1]

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def put(self, key: K, value: V | None) -> None:
        if len(self._entries) > 100_000:
            self._entries.clear()
        self._entries[key] = (time.monotonic(), value)


# device_id, token_id, token, token_kind, ios_app_id of an unexpired E2EE device.
DeviceRow = tuple[int, int, str, str, str | None]


class _DeviceCache:
    """Unexpired E2EE devices by realm, found by ("token_id", id) or ("device_id", id).

    Only devices found are kept: a device registered a moment ago in another process must
    not be answered "unknown" (the Zulip server would delete it). What makes an entry wrong:
    an expiry (a dead token), which publishes the realm; a re-registration cannot, since a
    row's token_id is computed from its token, and a token belongs to one app. A realm's
    entries go when the realm is named in a change, and every entry ages out as servers do.

    A realm that keeps missing is loaded whole (`should_load`): a notify names one or a few
    of a realm's devices, and each is rarely named twice within the entries' lifetime, so
    entry by entry nearly every notify of a busy realm paid a PostgreSQL round trip (its
    largest single cost at one device per request). A realm of up to LOAD_MAX_DEVICES costs
    one query per lifetime instead; a larger one goes on device by device.
    """

    MAX_ENTRIES = 200_000
    # Misses in a realm after which it is loaded whole: about the cost of the load itself
    # (a row of a load costs a small fraction of a round trip).
    LOAD_AFTER_MISSES = 16
    LOAD_MAX_DEVICES = 5_000

    def __init__(self) -> None:
        self._by_realm: dict[uuid.UUID, dict[tuple[str, int], tuple[float, DeviceRow]]] = {}
        self._size = 0
        self._misses: dict[uuid.UUID, int] = {}
        # Realms being loaded now, and those too large to load, until when.
        self._loading: set[uuid.UUID] = set()
        self._too_large: dict[uuid.UUID, float] = {}
        # Counts forgets: rows read before one may be stale, and are not kept (`put`).
        self.epoch = 0

    def get(self, realm: uuid.UUID, key: tuple[str, int]) -> DeviceRow | None:
        entries = self._by_realm.get(realm)
        entry = entries.get(key) if entries is not None else None
        if entry is None or time.monotonic() - entry[0] > _max_age():
            return None
        return entry[1]

    def should_load(self, realm: uuid.UUID, misses: int) -> bool:
        """Count a lookup's misses; True once the realm is worth loading whole. The caller
        then loads it and calls `loaded`, whatever the outcome."""
        count = self._misses[realm] = self._misses.get(realm, 0) + misses
        if count < self.LOAD_AFTER_MISSES or realm in self._loading:
            return False
        until = self._too_large.get(realm)
        if until is not None:
            if time.monotonic() < until:
                return False
            del self._too_large[realm]
        self._loading.add(realm)
        return True

    def loaded(self, realm: uuid.UUID, rows: list[DeviceRow] | None, epoch: int) -> bool:
        """A load's end: its rows read in `epoch` (up to LOAD_MAX_DEVICES + 1), or None if it
        failed (tried again after more misses). False when the realm has more devices than
        LOAD_MAX_DEVICES: nothing is kept, and it goes on device by device for a lifetime."""
        self._loading.discard(realm)
        self._misses.pop(realm, None)
        if rows is not None and len(rows) > self.LOAD_MAX_DEVICES:
            self._too_large[realm] = time.monotonic() + _max_age()
            return False
        if rows is not None:
            self.put(realm, rows, epoch)
        return True

    def put(self, realm: uuid.UUID, rows: list[DeviceRow], epoch: int) -> None:
        """Keep rows read while `epoch` was current; none if something was forgotten since."""
        if epoch != self.epoch:
            return
        if self._size + 2 * len(rows) > self.MAX_ENTRIES:
            self.clear()
        entries = self._by_realm.setdefault(realm, {})
        before = len(entries)
        now = time.monotonic()
        for row in rows:
            entries[("device_id", row[0])] = entries[("token_id", row[1])] = (now, row)
        self._size += len(entries) - before

    def forget(self, realm: uuid.UUID) -> None:
        self.epoch += 1
        entries = self._by_realm.pop(realm, None)
        if entries is not None:
            self._size -= len(entries)
        self._misses.pop(realm, None)
        self._too_large.pop(realm, None)

    def clear(self) -> None:
        self.epoch += 1
        self._by_realm.clear()
        self._size = 0
        self._misses.clear()
        self._too_large.clear()


_servers: _Cache[uuid.UUID, ServerInfo] = _Cache()
_realms: _Cache[uuid.UUID, RealmInfo] = _Cache()
devices = _DeviceCache()
_last_touched: dict[tuple[str, int], float] = {}
_background: set[asyncio.Task[None]] = set()


async def server_by_uuid(server_uuid: uuid.UUID) -> ServerInfo | None:
    hit, server = _servers.get(server_uuid)
    if hit:
        return server
    rows = await database().fetch(
        f"SELECT id, api_key_hash, deactivated FROM {_SERVER_TABLE} WHERE uuid = %s",  # noqa: S608 - table name from the model
        [_uuid_param(server_uuid)],
    )
    server = (
        ServerInfo(id=rows[0][0], uuid=server_uuid, api_key_hash=rows[0][1], deactivated=rows[0][2])
        if rows
        else None
    )
    _servers.put(server_uuid, server)
    return server


async def realm_by_uuid(realm_uuid: uuid.UUID) -> RealmInfo | None:
    hit, realm = _realms.get(realm_uuid)
    if hit:
        return realm
    rows = await database().fetch(
        f"SELECT id, server_id FROM {_REALM_TABLE} WHERE uuid = %s",  # noqa: S608 - table name from the model
        [_uuid_param(realm_uuid)],
    )
    realm = RealmInfo(id=rows[0][0], uuid=realm_uuid, server_id=rows[0][1]) if rows else None
    # An unknown realm is not remembered: analytics may create it any moment.
    if realm is not None:
        _realms.put(realm_uuid, realm)
    return realm


def touch_last_request(table: str, row_id: int) -> None:
    """Record a request's time on a server or realm, at most every LAST_REQUEST_RESOLUTION
    per process, in the background (operators' information, not the request's business)."""
    now = time.monotonic()
    key = (table, row_id)
    if now - _last_touched.get(key, -1e9) < LAST_REQUEST_RESOLUTION.total_seconds():
        return
    _last_touched[key] = now
    task = asyncio.get_running_loop().create_task(_touch(table, row_id, timezone.now()))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _touch(table: str, row_id: int, at: datetime) -> None:
    try:
        await database().execute(
            f"UPDATE {table} SET last_request_datetime = %s WHERE id = %s",  # noqa: S608 - table name from the model
            [connection.ops.adapt_datetimefield_value(at), row_id],
        )
    except Exception:  # noqa: BLE001 - a missed timestamp is not worth a request
        return


def server_table() -> str:
    return _SERVER_TABLE


def realm_table() -> str:
    return _REALM_TABLE


async def find_realm(*, server: ServerInfo, realm_uuid: str, required: bool) -> RealmInfo | None:
    """registrations.realms.find_realm for the event loop: the same answers."""
    parsed = parse_realm_uuid(realm_uuid)
    realm = await realm_by_uuid(parsed)
    owner = realm.server_id if realm is not None else None
    if not usable_realm(realm_uuid=parsed, owner_id=owner, server_id=server.id, required=required):
        return None
    assert realm is not None
    touch_last_request(_REALM_TABLE, realm.id)
    return realm


def forget_all() -> None:
    """Drop every cached server and realm (tests; an operator never needs it)."""
    _servers.clear()
    _realms.clear()
    devices.clear()
    _last_touched.clear()


def publish_change(values: Sequence[uuid.UUID | str]) -> None:
    """Tell every web process to forget these servers or realms, and the realms' devices
    (sync: Django's side).

    Call it once the change is committed (transaction.on_commit), or a process could read
    and cache the old row again in between."""
    uuids = [uuid.UUID(str(value)) for value in values]
    for value in uuids:
        _forget(value)
    if not settings.REDIS_URL or not uuids:
        return
    try:
        client = _sync_redis(settings.REDIS_URL)
        version = int(client.incr(VERSION_KEY))
        pipe = client.pipeline(transaction=False)
        pipe.zadd(CHANGES_KEY, {f"{version}:{value}": version for value in uuids})
        pipe.zremrangebyscore(CHANGES_KEY, "-inf", version - CHANGES_KEPT)
        pipe.execute()
    except redis.RedisError as e:
        # The watchers see Redis fail too and fall back to the short lifetime.
        logger.warning("Server cache: change not published (Redis unavailable: %s)", e)


@functools.cache
def _sync_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


async def watch_changes() -> None:
    """Forget what other processes changed, for ever (the web server's start-up runs it)."""
    if not settings.REDIS_URL:
        return
    client = redis.asyncio.Redis.from_url(
        settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1
    )
    interval = settings.BOUNCER_CACHE_SECONDS / 2
    try:
        while True:
            started = time.monotonic()
            try:
                await _poll(client)
                _watch.healthy_until = started + settings.BOUNCER_CACHE_SECONDS
            except (redis.RedisError, OSError) as e:
                if _watch.fresh():
                    logger.warning("Server cache: Redis unavailable (%s); short lifetimes", e)
                _watch.healthy_until = 0.0
            await asyncio.sleep(interval)
    finally:
        await client.aclose()


async def _poll(client: redis.asyncio.Redis) -> None:
    raw = await client.get(VERSION_KEY)
    version = int(raw or 0)
    if _watch.version is None or version < _watch.version:
        # First look, or Redis lost its data: nothing cached can be vouched for.
        forget_all()
    elif version > _watch.version:
        if version - _watch.version > CHANGES_KEPT // 2:
            forget_all()
        else:
            changed = await client.zrangebyscore(CHANGES_KEY, _watch.version + 1, version)
            for member in changed:
                text = member.decode() if isinstance(member, bytes) else str(member)
                _, _, value = text.partition(":")
                _forget(uuid.UUID(value))
    _watch.version = version


def _forget(value: uuid.UUID) -> None:
    # A uuid names a server or a realm; the tables never share one.
    _servers.forget(value)
    _realms.forget(value)
    devices.forget(value)
