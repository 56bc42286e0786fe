"""What the load generator sends, and the data it needs in the bouncer's database.

Requests are built as Zulip servers build them (zulip-delivery.md, zulip-registration.md):
E2EE notify with N devices (APNs and FCM alternating), legacy notify for a user with one
APNs and one FCM token, sealed E2EE registrations, analytics uploads. Many servers, one realm
each; a request goes out as one of them, in turn.
Matrix notifications are built as Synapse sends them to a push gateway.
"""

import base64
import itertools
import os
import random
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from harness import MATRIX_APP_ID

# A request for the load generator: (method, path, auth, json body or form).
Request = tuple[str, str, tuple[str, str] | None, dict[str, Any] | None, dict[str, str] | None]

APNS_PAYLOAD = {
    "alert": {"title": "King Hamlet", "body": "hi"},
    "sound": "default",
    "badge": 0,
    "custom": {"zulip": {"message_ids": [45], "sender_id": 8, "user_id": 10}},
}
GCM_PAYLOAD = {"user_id": 10, "event": "message", "zulip_message_id": 45, "content": "hi"}


@dataclass
class Tenant:
    """One Zulip server with one realm and its devices."""

    uuid: str
    key: str
    realm_uuid: str
    e2ee_tokens: list[tuple[str, str]] = field(default_factory=list)  # (kind, token)
    # user id -> (APNs token, FCM token): a legacy user with one phone of each kind
    legacy_users: dict[int, tuple[str, str]] = field(default_factory=dict)

    @property
    def auth(self) -> tuple[str, str]:
        return (self.uuid, self.key)


def create_tenants(*, servers: int, e2ee_per_server: int, legacy_users: int) -> list[Tenant]:
    """Servers, realms and devices, written straight to the database (fast, not measured)."""
    from legacy.models import RemotePushDeviceToken
    from registrations import sealing
    from registrations.models import RemotePushDevice, RemoteRealm, RemoteZulipServer

    tenants: list[Tenant] = []
    for n in range(servers):
        key = secrets.token_hex(32)
        server = RemoteZulipServer(uuid=uuid.uuid4(), hostname=f"zulip{n}.bench.example.org")
        server.set_api_key(key)
        server.save()
        realm = RemoteRealm.objects.create(server=server, uuid=uuid.uuid4(), remote_id=2)
        tenant = Tenant(uuid=str(server.uuid), key=key, realm_uuid=str(realm.uuid))
        devices = []
        for i in range(e2ee_per_server):
            kind = "apns" if i % 2 == 0 else "fcm"
            token = secrets.token_hex(32) if kind == "apns" else f"fcm-{secrets.token_hex(70)}"
            tenant.e2ee_tokens.append((kind, token))
            devices.append(
                RemotePushDevice(
                    remote_realm=realm,
                    token=token,
                    token_kind=kind,
                    token_id=sealing.token_id_int(token),
                    ios_app_id="org.zulip.Zulip" if kind == "apns" else None,
                )
            )
        RemotePushDevice.objects.bulk_create(devices, batch_size=5000)
        legacy = []
        for user_id in range(100, 100 + legacy_users):
            apns_token, fcm_token = secrets.token_hex(32), f"fcm-{secrets.token_hex(70)}"
            tenant.legacy_users[user_id] = (apns_token, fcm_token)
            legacy += [
                RemotePushDeviceToken(
                    server=server,
                    remote_realm=realm,
                    user_id=user_id,
                    kind=RemotePushDeviceToken.Kind.APNS,
                    token=apns_token,
                    ios_app_id="org.zulip.Zulip",
                ),
                RemotePushDeviceToken(
                    server=server,
                    remote_realm=realm,
                    user_id=user_id,
                    kind=RemotePushDeviceToken.Kind.FCM,
                    token=fcm_token,
                ),
            ]
        RemotePushDeviceToken.objects.bulk_create(legacy, batch_size=5000)
        tenants.append(tenant)
    return tenants


def e2ee_notify(tenants: list[Tenant], devices: int, kind: str | None = None) -> Iterator[Request]:
    """E2EE notify requests of `devices` devices each: APNs and FCM alternating, or only
    `kind`'s devices ("apns")."""
    from registrations import sealing

    def item(kind: str, token: str) -> dict[str, Any]:
        token_id = sealing.token_id_b64(sealing.token_id_int(token))
        payload = {"push_key_id": 1, "encrypted_data": base64.b64encode(os.urandom(180)).decode()}
        if kind == "apns":
            return {
                "token_id": token_id,
                "http_headers": {"apns_priority": 10, "apns_push_type": "alert"},
                "payload": payload,
            }
        return {"token_id": token_id, "fcm_priority": "high", "payload": payload}

    bodies: list[Request] = []
    for tenant in tenants:
        tokens = [(k, t) for k, t in tenant.e2ee_tokens if kind is None or k == kind]
        for start in range(0, len(tokens) - devices + 1, devices):
            body = {
                "realm_uuid": tenant.realm_uuid,
                "push_requests": [item(k, t) for k, t in tokens[start : start + devices]],
            }
            bodies.append(("POST", "push/e2ee/notify", tenant.auth, body, None))
    random.shuffle(bodies)
    return itertools.cycle(bodies)


# Matrix: a homeserver's push for a message, as Synapse sends it (the push gateway spec's
# POST /_matrix/push/v1/notify), to `devices` iOS devices. The same bodies go to the bouncer
# and to Sygnal (--peer sygnal), both serving MATRIX_APP_ID from the same `apps:` entry.
MATRIX_NOTIFY = "/_matrix/push/v1/notify"


def matrix_bodies(devices: int, pushkeys: int = 6000) -> list[dict[str, Any]]:
    """Notifications to `devices` APNs pushkeys each (base64, as iOS apps register them;
    both gateways turn them into hex tokens), drawn in turn from `pushkeys` distinct ones,
    in a random order."""
    keys = [base64.b64encode(os.urandom(32)).decode() for _ in range(pushkeys)]
    bodies: list[dict[str, Any]] = []
    for start in range(0, len(keys) - devices + 1, devices):
        bodies.append(
            {
                "notification": {
                    "event_id": f"$bench{start}",
                    "room_id": "!room:bench.example.org",
                    "type": "m.room.message",
                    "sender": "@hamlet:bench.example.org",
                    "sender_display_name": "King Hamlet",
                    "room_name": "Denmark",
                    "content": {"msgtype": "m.text", "body": "hi"},
                    "counts": {"unread": 1},
                    "prio": "high",
                    "devices": [
                        {"app_id": MATRIX_APP_ID, "pushkey": key, "pushkey_ts": 0, "data": {}}
                        for key in keys[start : start + devices]
                    ],
                }
            }
        )
    random.shuffle(bodies)
    return bodies


def matrix_notify(bodies: list[dict[str, Any]], base_url: str = "") -> Iterator[Request]:
    """`bodies` in turn, in their order, to a gateway: the bouncer (no `base_url`: the load
    generator sends a path to the bouncer) or Sygnal at `base_url`."""
    return itertools.cycle(
        [("POST", f"{base_url}{MATRIX_NOTIFY}", None, body, None) for body in bodies]
    )


def legacy_notify(tenants: list[Tenant]) -> Iterator[Request]:
    bodies: list[Request] = []
    for tenant in tenants:
        for user_id, (apns_token, fcm_token) in tenant.legacy_users.items():
            body = {
                "user_id": user_id,
                "realm_uuid": tenant.realm_uuid,
                "apns_payload": APNS_PAYLOAD,
                "gcm_payload": GCM_PAYLOAD,
                "gcm_options": {"priority": "high"},
                "apple_devices": [apns_token],
                "android_devices": [fcm_token],
            }
            bodies.append(("POST", "push/notify", tenant.auth, body, None))
    random.shuffle(bodies)
    return itertools.cycle(bodies)


def e2ee_registrations(tenants: list[Tenant], public_key: str, count: int) -> Iterator[Request]:
    """New devices, sealed to the bouncer's public key as a phone seals them."""
    from registrations import sealing

    def forms() -> Iterator[Request]:
        for tenant in itertools.cycle(tenants):
            token = secrets.token_hex(32)
            registration = {
                "token": token,
                "token_kind": "apns",
                "ios_app_id": "org.zulip.Zulip",
                "timestamp": int(time.time()),
            }
            form = {
                "realm_uuid": tenant.realm_uuid,
                "token_id": sealing.token_id_b64(sealing.token_id_int(token)),
                "encrypted_push_registration": sealing.seal_registration(registration, public_key),
                "bouncer_public_key": public_key,
            }
            yield ("POST", "push/e2ee/register", tenant.auth, None, form)

    # Sealed ahead of time: the load generator's CPU goes to sending, not to sealing.
    return itertools.cycle(list(itertools.islice(forms(), count)))


def analytics_upload(tenant: Tenant) -> Request:
    from tests.zulip_client import analytics_form

    return ("POST", "server/analytics", tenant.auth, None, analytics_form(tenant.realm_uuid))


def mixed(tenants: list[Tenant], public_key: str) -> Iterator[Request]:
    """Zulip's proportions, roughly: mostly notify, some registrations, rare analytics."""
    notify = e2ee_notify(tenants, 3)
    legacy = legacy_notify(tenants)
    registrations = e2ee_registrations(tenants, public_key, 2000)
    uploads = itertools.cycle([analytics_upload(t) for t in tenants])
    choices: list[tuple[float, Callable[[], Request]]] = [
        (0.70, lambda: next(notify)),
        (0.20, lambda: next(legacy)),
        (0.09, lambda: next(registrations)),
        (0.01, lambda: next(uploads)),
    ]

    # Everything above reads the database now; the draws below run in the load generator's
    # event loop, where Django's ORM may not be used.
    def draw() -> Iterator[Request]:
        while True:
            roll, total = random.random(), 0.0
            for weight, make in choices:
                total += weight
                if roll < total:
                    yield make()
                    break
            else:
                yield choices[0][1]()

    return draw()


def floor() -> Iterator[Request]:
    """GET /health: Django and the web server with nothing to do, the ceiling of any
    endpoint here."""
    return itertools.repeat(("GET", "/health", None, None, None))


def device_lookup_plan(realm_uuid: str, token_ids: list[int]) -> str:
    """EXPLAIN ANALYZE of the notify path's device look-up, as the service issues it."""
    from django.db import connection

    from registrations.models import RemotePushDevice, RemoteRealm
    from registrations.notify import active_devices_condition

    realm = RemoteRealm.objects.get(uuid=realm_uuid)
    query = active_devices_condition(realm_id=realm.pk, token_ids=set(token_ids), device_ids=set())
    assert query is not None
    condition, params = query
    table = RemotePushDevice._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN ANALYZE SELECT * FROM {table} WHERE {condition}", params)  # noqa: S608 - the service's own SQL
        return "\n".join(line for (line,) in cursor.fetchall())


def legacy_lookup_plan(tenant: Tenant, user_id: int) -> str:
    from legacy.models import RemotePushDeviceToken

    query = RemotePushDeviceToken.objects.filter(server__uuid=tenant.uuid, user_id=user_id)
    return query.explain(analyze=True)


def add_filler_legacy_tokens(rows: int, tenants: list[Tenant]) -> None:
    """Grow the legacy token table to `rows`, the new rows spread over the tenants' servers
    (other users, APNs and FCM alternating): a look-up that reads a server's rows instead of
    using an index gets slower as this grows."""
    from legacy.models import RemotePushDeviceToken
    from registrations.models import RemoteRealm, RemoteZulipServer

    current = RemotePushDeviceToken.objects.count()
    if current >= rows:
        return
    servers = [RemoteZulipServer.objects.get(uuid=t.uuid).pk for t in tenants]
    realms = [RemoteRealm.objects.get(uuid=t.realm_uuid).pk for t in tenants]
    table = RemotePushDeviceToken._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {table} (server_id, remote_realm_id, user_id, kind, token, ios_app_id,
                                 created)
            SELECT (%s::bigint[])[1 + s], (%s::bigint[])[1 + s], 10000000 + n, k,
                   CASE WHEN k = 1 THEN md5(n::text) || md5(random()::text)
                        ELSE 'fcm-' || md5(n::text) || md5(random()::text) END,
                   CASE WHEN k = 1 THEN 'org.zulip.Zulip' END, now()
            FROM (SELECT n, n %% %s AS s, 1 + (n / %s) %% 2 AS k
                  FROM generate_series(%s, %s) AS n) AS filler
            ON CONFLICT DO NOTHING
            """,  # noqa: S608 - the table name comes from the model, the values are parameters
            [servers, realms, len(tenants), len(tenants), current, rows - 1],
        )
        cursor.execute(f"ANALYZE {table}")


def registration_legacy_check_plan(tenant: Tenant) -> str:
    """EXPLAIN ANALYZE of what every E2EE registration asks: has this server legacy rows for
    the phone (a new one here, so none)?"""
    from legacy.models import RemotePushDeviceToken
    from legacy.retirement import same_phone_condition
    from registrations.models import RemoteRealm

    realm = RemoteRealm.objects.get(uuid=tenant.realm_uuid)
    condition, params = same_phone_condition(
        server_id=realm.server_id, realm_id=realm.pk, token_kind="apns", token=secrets.token_hex(32)
    )
    table = RemotePushDeviceToken._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"EXPLAIN ANALYZE SELECT EXISTS (SELECT 1 FROM {table} WHERE {condition})",  # noqa: S608 - the service's own SQL
            params,
        )
        return "\n".join(line for (line,) in cursor.fetchall())


def add_filler_devices(rows: int) -> None:
    """Grow the device table to `rows` E2EE devices in other realms (SQL, seconds per million)."""
    from registrations.models import RemotePushDevice, RemoteRealm, RemoteZulipServer

    current = RemotePushDevice.objects.count()
    if current >= rows:
        return
    server = RemoteZulipServer(uuid=uuid.uuid4(), hostname=f"filler{uuid.uuid4().hex[:6]}.example")
    server.set_api_key(secrets.token_hex(32))
    server.save()
    realms = [
        RemoteRealm.objects.create(server=server, uuid=uuid.uuid4(), remote_id=i) for i in range(10)
    ]
    table = RemotePushDevice._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {table} (remote_realm_id, token, token_kind, token_id, ios_app_id,
                                 created, last_registered)
            SELECT (%s::bigint[])[1 + (n %% 10)], md5(n::text || random()::text) || md5(n::text),
                   'apns', (random() * 9e18)::bigint, 'org.zulip.Zulip', now(), now()
            FROM generate_series(1, %s) AS n
            ON CONFLICT DO NOTHING
            """,  # noqa: S608 - the table name comes from the model, the values are parameters
            [[r.pk for r in realms], rows - current],
        )
        cursor.execute(f"ANALYZE {table}")
