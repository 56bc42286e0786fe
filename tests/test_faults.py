"""Fault injection: a real PostgreSQL, Redis and Celery worker, one fault each, and the count
of notifications lost and sent twice, counted at the fake APNs by device token.

Each test waits for conditions (bounded polls), never for time. A test is over when every
delivery reached the fake and the broker holds nothing more (no task queued, none handed
out unacknowledged), so a late duplicate would have been counted.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from django.conf import settings

from delivery import attemptlog
from tests.conftest import add_e2ee_devices, e2ee_notify, make_server, wait_until
from tests.delivery.worker import CeleryWorker
from tests.fakes.apns import Answer, FakeApns

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


def report(name: str, result: Tally) -> None:
    # In the output with -s or -rA; the figures docs/security.md quotes.
    print(f"\n[fault] {name}: {result}")


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
    doomed = CeleryWorker(env=worker_env, name="doomed").start()
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
        rescuer = CeleryWorker(env=worker_env, name="rescuer").start()
        assert wait_until(lambda: all_delivered(fake_apns, everyone), 40), rescuer.log()
        assert wait_until(lambda: broker_idle(settings.CELERY_BROKER_URL), 20), rescuer.log()
        result = tally(fake_apns, everyone)
        report("worker SIGKILLed between a retry answer and its scheduling", result)
        assert result == Tally(lost=[], duplicates=0)
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
        result = tally(fake_apns, everyone)
        report("streams held unanswered past the batch timeout", result)
        assert result == Tally(lost=[], duplicates=0)
        log = worker.log()
        assert "attempt 2: - Timeout" in log, log  # the held ones: cut short, retried
        for token in answered:  # answered by the worker's first retry, never sent again
            assert [r.status for r in fake_apns.requests_for(token)] == [503, 200]
    finally:
        worker.stop()
