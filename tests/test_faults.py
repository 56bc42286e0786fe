"""Fault injection: a real PostgreSQL, Redis and Celery worker, one fault each, and the count
of notifications lost and sent twice, counted at the fake APNs by device token.

Each test waits for conditions (bounded polls), never for time. A test is over when every
delivery reached the fake and the broker holds nothing more (no task queued, none handed
out unacknowledged), so a late duplicate would have been counted.
"""

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection

from delivery import attemptlog
from registrations import sealing
from registrations.models import RemoteRealm
from tests.conftest import ZulipServer, add_e2ee_devices, e2ee_notify, make_server, wait_until
from tests.delivery.worker import CeleryWorker, own_database_stack
from tests.fakes.apns import Answer, FakeApns
from tests.services import RedisServer, WebServer

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

UNAVAILABLE = Answer(503, "ServiceUnavailable")


@pytest.fixture(autouse=True)
def _stop_delivery_log_writer() -> Iterator[None]:
    # This test process is the web in most of these tests: its log writer's connection must
    # be gone before the test database is dropped.
    yield
    attemptlog.stop()


def tokens(n: int, *, first: int = 1) -> list[str]:
    return [f"{i:064x}" for i in range(first, first + n)]


@dataclass(frozen=True)
class Tally:
    """What the fake saw: tokens never delivered (lost) and deliveries beyond one (duplicates)."""

    lost: list[str]
    duplicates: int

    def __str__(self) -> str:
        return f"{len(self.lost)} notifications lost, {self.duplicates} duplicates"


def tally(fake: FakeApns, expected: list[str]) -> Tally:
    delivered = {t: [r.status for r in fake.requests_for(t)].count(200) for t in expected}
    return Tally(
        lost=[t for t, n in delivered.items() if n == 0],
        duplicates=sum(n - 1 for n in delivered.values() if n > 1),
    )


def all_delivered(fake: FakeApns, expected: list[str]) -> bool:
    return not tally(fake, expected).lost


def broker_idle(url: str) -> bool:
    """No retry batch queued, waiting or in progress (kombu's Redis transport keeps the
    messages handed out and not yet acknowledged, due ones included, in `unacked`)."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return client.llen("celery") == 0 and client.hlen("unacked") == 0
    except redis.RedisError:
        return False
    finally:
        client.close()


def session_database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def http_notify(
    web: WebServer, server: ZulipServer, realm: RemoteRealm, values: list[str]
) -> httpx.Response:
    """`push/e2ee/notify` over HTTP to a running web process, as a Zulip server sends it."""
    body = {
        "realm_uuid": str(realm.uuid),
        "push_requests": [
            {
                "token_id": sealing.token_id_b64(sealing.token_id_int(t)),
                "http_headers": {"apns_priority": 10, "apns_push_type": "alert"},
                "payload": {"push_key_id": 1, "encrypted_data": "abc"},
            }
            for t in values
        ],
    }
    url = f"{web.url}/api/v1/remotes/push/e2ee/notify"
    return httpx.post(url, json=body, auth=(server.uuid, server.key), timeout=30)


class Supervisor:
    """Starts the worker again when it exits, as its systemd unit does (Restart=on-failure)."""

    def __init__(self, worker: CeleryWorker) -> None:
        self.worker = worker
        self.restarts = 0
        self.exit_codes: list[int] = []
        self.logs: list[str] = []

    def up(self) -> bool:
        """Restarts the worker if it has exited; always true, for use inside a poll."""
        assert self.worker.process is not None
        code = self.worker.process.poll()
        if code is not None:
            self.exit_codes.append(code)
            self.logs.append(self.worker.log())
            self.worker.stop()
            self.restarts += 1
            self.worker = CeleryWorker(
                env=self.worker.env, name=f"restarted{self.restarts}"
            ).start()
        return True

    def log(self) -> str:
        return "\n".join([*self.logs, self.worker.log()])

    def stop(self) -> None:
        self.worker.stop()


def assert_delivered_once(fake: FakeApns, expected: list[str], name: str) -> None:
    """Each token delivered exactly once; the tally printed as `name`'s figure (in the
    output with -s or -rA; the figures docs/security.md quotes)."""
    result = tally(fake, expected)
    print(f"\n[fault] {name}: {result}")
    assert result == Tally(lost=[], duplicates=0)


@pytest.fixture
def worker_env(apns_settings: dict[str, str]) -> dict[str, str]:
    # Short claims and visibility timeout: a dead worker's batch is handed out again within
    # seconds, not minutes.
    return {**apns_settings, "DELIVERY_CLAIM_SECONDS": "3", "CELERY_VISIBILITY_TIMEOUT": "2"}


def test_a_worker_killed_between_a_retry_answer_and_its_scheduling_loses_no_retry(
    worker_env: dict[str, str], fake_apns: FakeApns
) -> None:
    """The worker has Apple's "retry" answer for some deliveries of a batch and is still
    waiting for another (held by Apple) when it is SIGKILLed, so the retry of those answered
    is not scheduled yet: each is still sent later, once."""
    server = make_server()
    realm = server.add_realm()
    answered = tokens(5)
    held = tokens(1, first=100)
    everyone = answered + held
    add_e2ee_devices(realm, everyone)
    for token in answered:
        # The web's first attempt, then the doomed worker's retry: both "retry".
        fake_apns.script(token, UNAVAILABLE, UNAVAILABLE)
    for token in held:
        fake_apns.script(token, UNAVAILABLE, Answer(hang=True))
    # The batch waits for the held stream as long as its claims allow.
    env = {**worker_env, "DELIVERY_BATCH_TIMEOUT_SECONDS": "2.9"}
    doomed = CeleryWorker(env=env, name="doomed").start()
    rescuer: CeleryWorker | None = None
    try:
        body = e2ee_notify(server, realm, everyone).json()
        assert body["apple_successfully_sent_count"] == 0

        def retries_answered_and_batch_open() -> bool:
            return all(
                [r.status for r in fake_apns.requests_for(t)] == [503, 503] for t in answered
            ) and all(len(fake_apns.requests_for(t)) == 2 for t in held)

        # The answers are in the worker; the batch waits for the held stream.
        assert wait_until(retries_answered_and_batch_open, 15), doomed.log()
        doomed.kill()
        assert fake_apns.delivered == 0
        # Killed before the batch ended: nothing of it was settled, so no retry scheduled.
        assert "attempt 2: 503" not in doomed.log(), doomed.log()
        rescuer = CeleryWorker(env=env, name="rescuer").start()
        assert wait_until(lambda: all_delivered(fake_apns, everyone), 40), rescuer.log()
        assert wait_until(lambda: broker_idle(settings.CELERY_BROKER_URL), 20), rescuer.log()
        assert_delivered_once(
            fake_apns, everyone, "worker SIGKILLed between a retry answer and its scheduling"
        )
    finally:
        if rescuer is not None:
            rescuer.stop()
        doomed.stop()


def test_streams_apple_never_answers_end_the_batch_in_time_and_are_retried(
    worker_env: dict[str, str], fake_apns: FakeApns
) -> None:
    """More streams held unanswered than the worker's batch can wait for (each send's own
    timeout is 10 s; the batch's 2 s; 4 in flight, so some wait for room behind the held
    ones): the batch ends, the held and the waiting deliveries are retried, each sent once,
    and those Apple answered are not sent again."""
    env = {**worker_env, "DELIVERY_BATCH_TIMEOUT_SECONDS": "2", "DELIVERY_MAX_IN_FLIGHT": "4"}
    server = make_server()
    realm = server.add_realm()
    answered = tokens(6)
    held = tokens(6, first=100)
    everyone = answered + held
    add_e2ee_devices(realm, everyone)
    for token in answered:
        fake_apns.script(token, UNAVAILABLE)  # the web's attempt; the worker's is answered
    for token in held:
        fake_apns.script(token, UNAVAILABLE, Answer(hang=True))  # then held forever
    worker = CeleryWorker(env=env, name="held").start()
    try:
        body = e2ee_notify(server, realm, everyone).json()
        assert body["apple_successfully_sent_count"] == 0
        assert wait_until(lambda: all_delivered(fake_apns, everyone), 40), worker.log()
        assert wait_until(lambda: broker_idle(settings.CELERY_BROKER_URL), 20), worker.log()
        assert_delivered_once(fake_apns, everyone, "streams held unanswered past the batch timeout")
        log = worker.log()
        assert "attempt 2: - Timeout" in log, log  # the held ones: cut short, retried
        # The held streams were reset when the batch gave up on them, and the worker's
        # connection, which answered the others, carried the retries: the web's and the
        # worker's, no other.
        assert fake_apns.connections == 2
        for token in answered:  # answered by the worker's first retry, never sent again
            assert [r.status for r in fake_apns.requests_for(token)] == [503, 200]
    finally:
        worker.stop()


def test_a_redis_restart_loses_no_waiting_retry(
    worker_env: dict[str, str], fake_apns: FakeApns, tmp_path: Path
) -> None:
    """Redis (the broker and the claims; append-only file, fsync on every write) is killed
    while retry batches wait for their due time, held by the worker, and started again: the
    worker reconnects and every waiting retry is delivered."""
    broker = RedisServer(appendonly=True)
    broker.start()
    env = {
        **os.environ,
        **worker_env,
        "DATABASE_URL": session_database_url(),
        "CELERY_BROKER_URL": broker.url,
    }
    server = make_server()
    realm = server.add_realm()
    values = tokens(12)
    add_e2ee_devices(realm, values)
    for token in values:
        fake_apns.script(token, UNAVAILABLE)  # the web's attempt: retried by the worker
    web = WebServer(env=env, log_path=tmp_path / "web.log")
    worker: CeleryWorker | None = None
    supervisor: Supervisor | None = None
    try:
        web.start()
        worker = CeleryWorker(env=env, name="redis-restart").start()
        for chunk in range(0, len(values), 3):  # four requests: four retry batches
            answer = http_notify(web, server, realm, values[chunk : chunk + 3])
            assert answer.status_code == 200, answer.text
            assert answer.json()["apple_successfully_sent_count"] == 0

        def retries_waiting_in_the_worker() -> bool:
            client = redis.Redis.from_url(broker.url)
            try:
                return client.hlen("unacked") == 4
            finally:
                client.close()

        # Each retry is due 1-2 s after its notify: the worker holds them until then.
        assert wait_until(retries_waiting_in_the_worker, 5), worker.log()
        broker.crash()
        assert fake_apns.delivered == 0  # nothing of them sent before the crash
        broker.start()  # same port and data directory
        supervisor = Supervisor(worker)
        assert wait_until(lambda: supervisor.up() and all_delivered(fake_apns, values), 40), (
            supervisor.log()
        )
        assert wait_until(lambda: supervisor.up() and broker_idle(broker.url), 20), supervisor.log()
        assert_delivered_once(
            fake_apns,
            values,
            f"Redis killed and restarted with retries waiting (worker restarts: "
            f"{supervisor.restarts}, exit codes {supervisor.exit_codes})",
        )
    finally:
        if supervisor is not None:
            supervisor.stop()
        elif worker is not None:
            worker.stop()
        web.stop()
        broker.stop()


def test_a_postgresql_restart_under_the_delivery_log_writers_loses_no_row_written_after_it(
    worker_env: dict[str, str], fake_apns: FakeApns, tmp_path: Path
) -> None:
    """PostgreSQL restarts while the web's and the worker's delivery-log writers hold live
    connections: rows after the restart are written. Rows of deliveries answered while it is
    down are lost, logged with their count by each process; no notification is lost."""
    with own_database_stack(worker_env, tmp_path, "pg-writers") as stack:
        database, web, worker, zulip = stack.database, stack.web, stack.worker, stack.zulip
        public_key = stack.public_key
        values = tokens(8)
        for token in values:
            assert zulip.register_e2ee(public_key, token).status_code == 200

        def logged() -> int:
            try:
                with psycopg.connect(database.url) as conn:
                    [(count,)] = conn.execute("SELECT count(*) FROM delivery_deliveryattempt")
                    return int(count)
            except psycopg.OperationalError:
                return -1

        def notify(pair: list[str]) -> None:
            # The first request after a restart may meet a dead pooled connection: a 503,
            # which a Zulip server sends again.
            def accepted() -> bool:
                return zulip.notify(pair).status_code == 200

            assert wait_until(accepted, 15), web.log()

        # Each pair: one delivered by the web, one retried and delivered by the worker.
        # Three rows a pair: (1, delivered), (1, retry), (2, delivered).
        before, after, down, back = (values[i : i + 2] for i in range(0, 8, 2))
        for pair in (before, after, down, back):
            fake_apns.script(pair[1], UNAVAILABLE)
        notify(before)
        assert wait_until(lambda: logged() == 3, 15), worker.log()

        database.halt()  # both writers hold a connection now
        database.resume()
        notify(after)
        assert wait_until(lambda: logged() == 6, 15), web.log() + worker.log()
        assert "rows lost" not in web.log() + worker.log()

        # Down while Apple answers the web (1.5 s), and still down when the worker's retry
        # is answered: both processes' rows of `down` are lost, and say how many.
        fake_apns.latency_ms = (1500, 1500)
        sending = threading.Thread(target=lambda: zulip.notify(down))
        sending.start()
        assert wait_until(lambda: all(fake_apns.requests_for(t) for t in down), 10), web.log()
        database.halt()
        sending.join(timeout=30)
        assert wait_until(
            lambda: "Delivery log: database unavailable, 2 rows lost" in web.log(), 10
        )
        assert wait_until(
            lambda: "Delivery log: database unavailable, 1 rows lost" in worker.log(), 15
        ), worker.log()
        fake_apns.latency_ms = (0, 0)
        database.resume()
        notify(back)
        assert wait_until(lambda: logged() == 9, 15), web.log() + worker.log()

        assert wait_until(lambda: all_delivered(fake_apns, values), 15), worker.log()
        assert wait_until(lambda: broker_idle(settings.CELERY_BROKER_URL), 20), worker.log()
        assert_delivered_once(
            fake_apns, values, "PostgreSQL restarted under the delivery-log writers"
        )


def test_a_retry_batch_that_meets_the_claims_redis_down_runs_again_later(
    worker_env: dict[str, str], fake_apns: FakeApns
) -> None:
    """The claims' Redis (REDIS_URL, apart from the broker, as beside RabbitMQ) is down when
    a worker takes retry batches: the batches fail before sending anything, and run again
    once it is back instead of being acknowledged as failed."""
    claims = RedisServer()
    claims.start()
    env = {**worker_env, "REDIS_URL": claims.url}
    server = make_server()
    realm = server.add_realm()
    values = tokens(6)
    add_e2ee_devices(realm, values)
    for token in values:
        fake_apns.script(token, UNAVAILABLE)
    worker = CeleryWorker(env=env, name="claims-down").start()
    try:
        claims.crash()
        for chunk in range(0, len(values), 3):
            body = e2ee_notify(server, realm, values[chunk : chunk + 3]).json()
            assert body["apple_successfully_sent_count"] == 0
        assert wait_until(lambda: worker.log().count("the batch runs again") >= 2, 15), worker.log()
        assert fake_apns.delivered == 0
        claims.start()
        assert wait_until(lambda: all_delivered(fake_apns, values), 30), worker.log()
        assert wait_until(lambda: broker_idle(settings.CELERY_BROKER_URL), 20), worker.log()
        assert_delivered_once(fake_apns, values, "the claims' Redis down when retry batches arrive")
    finally:
        worker.stop()
        claims.stop()
