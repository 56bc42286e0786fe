"""Tenants take turns: admission by max-min fair share, sending round robin by tenant."""

import asyncio
from typing import Any

import pytest
from pytest_django.fixtures import Settings

from bouncer.endpoints import admission
from delivery.fairness import Admission, FairGate
from registrations.models import RemoteRealm
from tests.conftest import ZulipServer, make_server
from tests.delivery.test_notify_e2ee import apns_item, device
from tests.delivery.test_notify_e2ee import notify as e2ee_notify
from tests.fakes.apns import Answer, FakeApns


def test_a_tenant_alone_may_use_the_whole_capacity_and_no_more() -> None:
    gate = Admission(capacity=100, lag_limit=1.0)
    assert all(gate.admit("big", 10).admitted for _ in range(10))
    assert not gate.admit("big", 10).admitted
    gate.done("big", 10)
    assert gate.admit("big", 10).admitted


def test_over_capacity_only_tenants_over_their_share_are_shed() -> None:
    gate = Admission(capacity=100, lag_limit=1.0)
    for _ in range(10):
        assert gate.admit("flood", 10).admitted
    # Full: the flood is over its share of two; the quiet tenant is under it, always admitted.
    for _ in range(20):
        assert gate.admit("quiet", 1).admitted
        assert not gate.admit("flood", 10).admitted
        gate.done("quiet", 1)


def test_a_lagging_loop_sheds_the_heaviest_tenant_but_never_one_with_nothing_in_flight() -> None:
    gate = Admission(capacity=1000, lag_limit=0.01)
    for _ in range(30):
        gate.admit("flood", 5)
    gate.lag = 0.5  # the CPU is the limit now, far below the nominal capacity
    assert not gate.admit("flood", 5).admitted
    decision = gate.admit("quiet", 1)
    assert decision.admitted
    assert decision.share < 150


def test_waiting_deliveries_are_served_one_tenant_at_a_time() -> None:
    async def run() -> list[str]:
        gate = FairGate(capacity=1)
        order: list[str] = []
        await gate.acquire("holder")

        async def one(tenant: str) -> None:
            await gate.acquire(tenant)
            order.append(tenant)
            gate.release()

        # A 10-delivery burst queues first, then a single notification of another tenant.
        tasks = [asyncio.create_task(one("burst")) for _ in range(10)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(one("single")))
        await asyncio.sleep(0)
        gate.release()
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(run())
    assert order.index("single") <= 1, order
    assert order.count("burst") == 10


def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    async def run() -> int:
        gate = FairGate(capacity=1)
        await gate.acquire("a")
        waiter = asyncio.create_task(gate.acquire("b"))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        gate.release()
        await asyncio.wait_for(gate.acquire("c"), 1)
        return gate.in_use

    assert asyncio.run(run()) == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("in_process_delivery", "upstreams")
def test_a_flooding_server_gets_503_while_a_server_under_its_share_is_served(
    settings: Settings, zulip_server: ZulipServer, realm: RemoteRealm, fake_apns: FakeApns
) -> None:
    capacity = admission.capacity
    admission.capacity = 4
    try:
        quiet = make_server()
        quiet_realm = quiet.add_realm()
        device(quiet_realm, "cd" * 32, "apns")
        flood_tokens = [f"{i:064x}" for i in range(4)]
        for t in flood_tokens:
            device(realm, t, "apns")
            fake_apns.script(t, Answer(hang=True))
        settings.NOTIFY_WAIT_SECONDS = 3.0
        settings.DELIVERY_RETRY_WINDOW_SECONDS = 0  # the flood's timeouts are not retried

        async def scenario() -> tuple[Any, list[Any], Any]:
            loop = asyncio.get_running_loop()
            # The flood fills the process: four deliveries Apple never answers.
            flood = loop.run_in_executor(
                None, lambda: e2ee_notify(zulip_server, realm, [apns_item(t) for t in flood_tokens])
            )
            while admission.in_flight < 4:
                await asyncio.sleep(0.01)
            more = [
                await loop.run_in_executor(
                    None, lambda: e2ee_notify(zulip_server, realm, [apns_item(flood_tokens[0])])
                )
                for _ in range(3)
            ]
            served = await loop.run_in_executor(
                None, lambda: e2ee_notify(quiet, quiet_realm, [apns_item("cd" * 32)])
            )
            return await flood, more, served

        flood, more, served = asyncio.run(scenario())
        assert [r.status_code for r in more] == [503, 503, 503]
        assert all(r["Retry-After"] for r in more)
        assert {r.json()["code"] for r in more} == {"SERVICE_UNAVAILABLE"}
        assert served.status_code == 200
        assert served.json()["apple_successfully_sent_count"] == 1
        assert flood.status_code == 200  # answered when its wait ran out; retried later
    finally:
        admission.capacity = capacity
