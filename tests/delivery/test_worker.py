"""Retries through a real Celery worker process (Redis -> worker -> fake APNs).

These tests commit their rows (transactional db) so the worker, another process, sees them.
"""

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from pytest_django.fixtures import Settings

from delivery import attemptlog
from delivery.models import DeliveryAttempt
from registrations import sealing
from registrations.models import RemotePushDevice
from tests.conftest import (
    add_e2ee_devices,
    delivered_notifications,
    e2ee_notify,
    make_server,
    wait_until,
)
from tests.delivery.worker import CeleryWorker, own_database_stack
from tests.fakes.apns import Answer, FakeApns
from tests.services import free_port, wait_for_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _stop_delivery_log_writer() -> Iterator[None]:
    # This test process is the web here (not eager): its delivery log is buffered by a
    # thread with its own database connection, which must be gone before the test
    # database is dropped.
    yield
    attemptlog.stop()


def tokens(n: int) -> list[str]:
    return [f"{i:064x}" for i in range(1, n + 1)]


@pytest.fixture
def worker_env(apns_settings: dict[str, str]) -> dict[str, str]:
    return {**apns_settings, "DELIVERY_CLAIM_SECONDS": "3", "CELERY_VISIBILITY_TIMEOUT": "2"}


@pytest.fixture
def worker(worker_env: dict[str, str]) -> Iterator[CeleryWorker]:
    process = CeleryWorker(env=worker_env).start()
    yield process
    process.stop()


def test_the_first_attempt_is_answered_by_the_web_and_its_retry_delivered_by_the_worker(
    worker: CeleryWorker, fake_apns: FakeApns
) -> None:
    server = make_server()
    realm = server.add_realm()
    values = tokens(3)
    add_e2ee_devices(realm, values)
    fake_apns.script(values[0], Answer(410, "Unregistered"))
    fake_apns.script(values[1], Answer(503, "ServiceUnavailable"))
    response = e2ee_notify(server, realm, values)
    assert response.status_code == 200
    body = response.json()
    assert body["apple_successfully_sent_count"] == 1  # the 503 is not counted
    assert body["delete_token_ids"] == [sealing.token_id_b64(sealing.token_id_int(values[0]))]
    # Expired before the answer went out, by the web process itself.
    assert list(
        RemotePushDevice.objects.filter(expired_time__isnull=False).values_list("token", flat=True)
    ) == [values[0]]
    assert wait_until(lambda: fake_apns.delivered == 2, 10), worker.log()
    assert [r.status for r in fake_apns.requests_for(values[1])] == [503, 200]
    assert wait_until(lambda: DeliveryAttempt.objects.count() == 4, 5), worker.log()
    assert sorted(DeliveryAttempt.objects.values_list("attempt", "outcome")) == [
        (1, "delivered"),
        (1, "retry"),
        (1, "token_dead"),
        (2, "delivered"),
    ]
    log = worker.log()
    assert "delivered to e2ee device" in log
    assert "attempt 2" in log
    assert "attempt 1" not in log  # the worker never sent a first attempt


def test_a_delivery_not_answered_in_time_is_not_counted_and_still_happens(
    worker: CeleryWorker, fake_apns: FakeApns, settings: Settings
) -> None:
    settings.NOTIFY_WAIT_SECONDS = 0.3
    fake_apns.latency_ms = (1000, 1000)
    server = make_server()
    realm = server.add_realm()
    values = tokens(2)
    add_e2ee_devices(realm, values)
    started = time.monotonic()
    body = e2ee_notify(server, realm, values).json()
    assert time.monotonic() - started < 1.0  # answered at the wait's end, not Apple's
    assert body["apple_successfully_sent_count"] == 0
    assert body["delete_token_ids"] == []
    delivered = wait_until(
        lambda: all(any(r.status == 200 for r in fake_apns.requests_for(t)) for t in values), 15
    )
    assert delivered, worker.log()
    assert wait_until(
        lambda: (
            set(DeliveryAttempt.objects.values_list("attempt", "outcome", "reason"))
            == {(1, "retry", "Timeout"), (2, "delivered", "")}
        ),
        5,
    ), worker.log()


def test_transient_failures_are_retried_in_the_background(
    worker: CeleryWorker, fake_apns: FakeApns
) -> None:
    server = make_server()
    realm = server.add_realm()
    [token] = tokens(1)
    add_e2ee_devices(realm, [token])
    fake_apns.script(token, Answer(503, "ServiceUnavailable"), Answer(503, "ServiceUnavailable"))
    body = e2ee_notify(server, realm, [token]).json()
    assert body["apple_successfully_sent_count"] == 0  # the first attempt failed
    # Backoff: 1-2 s, then 2-4 s.
    assert wait_until(lambda: fake_apns.delivered == 1, 15), worker.log()
    assert [r.status for r in fake_apns.requests_for(token)] == [503, 503, 200]
    # The attempt row is written after Apple's answer arrives: wait for it too.
    assert wait_until(lambda: DeliveryAttempt.objects.count() == 3, 5), worker.log()
    outcomes = list(DeliveryAttempt.objects.order_by("attempt").values_list("attempt", "outcome"))
    assert outcomes == [(1, "retry"), (2, "retry"), (3, "delivered")]


def test_a_worker_killed_mid_batch_loses_no_delivery(
    worker_env: dict[str, str], fake_apns: FakeApns
) -> None:
    server = make_server()
    realm = server.add_realm()
    values = tokens(20)
    add_e2ee_devices(realm, values)
    for t in values:
        fake_apns.script(t, Answer(503, "ServiceUnavailable"))  # so the worker gets a batch
    first = CeleryWorker(env=worker_env, name="doomed").start()
    assert e2ee_notify(server, realm, values).json()["apple_successfully_sent_count"] == 0
    fake_apns.latency_ms = (1500, 1500)  # the retry comes 1-2 s later
    assert wait_until(lambda: len(fake_apns.received) == 40, 10), first.log()
    first.kill()  # mid-batch: every retry is in flight, none answered, nothing acked
    assert fake_apns.delivered == 0
    fake_apns.latency_ms = (10, 10)
    second = CeleryWorker(env=worker_env, name="rescuer").start()
    try:
        delivered = wait_until(
            lambda: all(any(r.status == 200 for r in fake_apns.requests_for(t)) for t in values), 45
        )
        assert delivered, second.log()
    finally:
        second.stop()


def test_two_workers_sharing_the_queue_deliver_each_retry_once(
    worker_env: dict[str, str], fake_apns: FakeApns
) -> None:
    server = make_server()
    realm = server.add_realm()
    values = tokens(30)
    add_e2ee_devices(realm, values)
    for t in values:
        fake_apns.script(t, Answer(503, "ServiceUnavailable"))
    workers = [CeleryWorker(env=worker_env, name=f"w{i}").start() for i in range(2)]
    try:
        for chunk in range(0, 30, 3):
            assert e2ee_notify(server, realm, values[chunk : chunk + 3]).status_code == 200
        assert wait_until(lambda: fake_apns.delivered == 30, 15)
        time.sleep(0.5)
        for t in values:
            assert [r.status for r in fake_apns.requests_for(t)] == [503, 200]
        assert all("delivered to e2ee device" in w.log() for w in workers)  # both took part
    finally:
        for w in workers:
            w.stop()


def test_a_database_restart_mid_batch_loses_no_delivery(
    worker_env: dict[str, str], fake_apns: FakeApns, tmp_path: Path
) -> None:
    """PostgreSQL stops while a batch is with Apple, whose first answer asks for a retry:
    the retry still happens, and the worker's connections recover when PostgreSQL is back."""
    with own_database_stack(worker_env, tmp_path, "pg-restart") as stack:
        database, worker, zulip = stack.database, stack.worker, stack.zulip
        [token] = tokens(1)
        assert zulip.register_e2ee(stack.public_key, token).status_code == 200

        # The first attempt (the web's) and the first retry (the worker's) both fail.
        unavailable = Answer(503, "ServiceUnavailable")
        fake_apns.script(token, unavailable, unavailable)
        assert zulip.notify([token]).status_code == 200
        fake_apns.latency_ms = (1500, 1500)  # the retry comes 1-2 s later
        assert wait_until(lambda: len(fake_apns.received) == 2, 10), worker.log()
        database.halt()  # while Apple thinks about the retry
        assert wait_until(lambda: "database unavailable" in worker.log(), 10), worker.log()
        fake_apns.latency_ms = (10, 10)
        database.resume()
        assert wait_until(lambda: fake_apns.delivered == 1, 20), worker.log()
        assert [r.status for r in fake_apns.requests_for(token)] == [503, 503, 200]

        def logged() -> list[tuple[int, str]]:
            with psycopg.connect(database.url) as conn:
                return list(
                    conn.execute(
                        "SELECT attempt, outcome FROM delivery_deliveryattempt ORDER BY attempt"
                    )
                )

        # The web logged the first attempt; the worker's first retry's row was lost with the
        # database, and the second retry's is written over a fresh connection.
        assert wait_until(lambda: logged() == [(1, "retry"), (3, "delivered")], 10), worker.log()


def test_a_worker_only_machine_serves_its_own_metrics(
    worker_env: dict[str, str], fake_apns: FakeApns, tmp_path: Path
) -> None:
    port = free_port()
    samples = tmp_path / "prometheus"
    samples.mkdir()
    env = {
        **worker_env,
        "WORKER_METRICS_BIND": f"127.0.0.1:{port}",
        "PROMETHEUS_MULTIPROC_DIR": str(samples),
    }
    server = make_server()
    realm = server.add_realm()
    values = tokens(2)
    add_e2ee_devices(realm, values)
    for t in values:
        fake_apns.script(t, Answer(503, "ServiceUnavailable"))  # so the worker sends something
    worker = CeleryWorker(env=env, name="metrics").start()
    try:
        wait_for_port(port, timeout=10)
        assert e2ee_notify(server, realm, values).json()["apple_successfully_sent_count"] == 0

        def delivered() -> float:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            return delivered_notifications(text)

        assert wait_until(lambda: delivered() == 2, 5), worker.log()
    finally:
        worker.stop()
