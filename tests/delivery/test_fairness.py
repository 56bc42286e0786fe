"""Tenants take turns: requests and deliveries that wait are served round robin by tenant."""

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from pytest_django.fixtures import Settings

from bouncer.endpoints import gate
from delivery.fairness import FairGate, RequestGate, SiblingSignal
from registrations.models import RemoteRealm
from tests.conftest import ZulipServer, make_server
from tests.delivery.test_notify_e2ee import apns_item, device
from tests.delivery.test_notify_e2ee import notify as e2ee_notify
from tests.fakes.apns import Answer, FakeApns


def request_gate(**options: Any) -> RequestGate:
    values: dict[str, Any] = {
        "minimum": 1,
        "maximum": 4,
        "max_waiting_per_tenant": 100,
        "max_wait": 10.0,
        "lag_target": 0.02,
    }
    values.update(options)
    return RequestGate(**values)


def test_a_tenant_alone_may_use_every_slot_and_then_waits_its_turn() -> None:
    async def run() -> list[bool]:
        gate = request_gate()
        entered = [await gate.enter("alone") for _ in range(4)]
        fifth = asyncio.create_task(gate.enter("alone"))
        await asyncio.sleep(0)
        assert not fifth.done()
        gate.leave("alone")
        return [*entered, await fifth]

    assert asyncio.run(run()) == [True] * 5


def test_a_quiet_tenants_request_is_next_whatever_a_flood_has_queued() -> None:
    async def run() -> list[str]:
        gate = request_gate(maximum=1)
        order: list[str] = []
        await gate.enter("flood")

        async def one(tenant: str) -> None:
            assert await gate.enter(tenant)
            order.append(tenant)
            gate.leave(tenant)

        tasks = [asyncio.create_task(one("flood")) for _ in range(20)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(one("quiet")))
        await asyncio.sleep(0)
        gate.leave("flood")
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(run())
    assert order.index("quiet") <= 1, order


def test_a_tenant_with_too_many_waiting_is_refused_at_once_and_others_still_wait() -> None:
    async def run() -> tuple[bool, bool]:
        gate = request_gate(maximum=1, max_waiting_per_tenant=2)
        await gate.enter("flood")
        waiting = [asyncio.create_task(gate.enter("flood")) for _ in range(2)]
        await asyncio.sleep(0)
        refused = await gate.enter("flood")
        quiet = asyncio.create_task(gate.enter("quiet"))
        await asyncio.sleep(0)
        for _ in range(3):
            gate.leave("flood")
        await asyncio.gather(*waiting)
        return refused, await quiet

    assert asyncio.run(run()) == (False, True)


def test_a_request_that_waited_too_long_is_refused() -> None:
    async def run() -> bool:
        gate = request_gate(maximum=1, max_wait=0.05)
        await gate.enter("slow")
        return await gate.enter("slow")

    assert asyncio.run(run()) is False


def test_a_tenants_only_request_is_admitted_at_once_beyond_the_bound() -> None:
    async def run() -> None:
        gate = request_gate(maximum=1, overdraft=2)
        assert await gate.enter("flood")
        flood = [asyncio.create_task(gate.enter("flood")) for _ in range(5)]
        await asyncio.sleep(0)
        # Each quiet tenant's only request goes in, past the flood's queue and the bound...
        assert await gate.enter("quiet")
        assert await gate.enter("other quiet")
        assert gate.in_progress == 3
        # ...up to the overdraft; a third such tenant, and a quiet tenant's second request,
        # wait their turn.
        third = asyncio.create_task(gate.enter("third quiet"))
        second = asyncio.create_task(gate.enter("quiet"))
        await asyncio.sleep(0)
        assert not third.done()
        assert not second.done()
        # An overdraft given back goes to a tenant whose only request waits ("quiet"'s
        # second is its only one once its first has left); the flood's slot, released
        # above the bound, goes.
        for tenant in ("quiet", "other quiet", "flood"):
            gate.leave(tenant)
        await asyncio.sleep(0)
        assert third.done()
        assert second.done()
        assert not any(task.done() for task in flood)
        assert gate.in_progress == 2
        for task in [third, second, *flood]:
            task.cancel()

    asyncio.run(run())


def test_the_bound_shrinks_while_the_loop_lags_and_grows_back_while_requests_wait() -> None:
    async def run() -> list[int]:
        gate = request_gate(minimum=10, maximum=100)
        seen = [gate.gate.capacity]
        for _ in range(30):
            gate.adapt(0.5)
        seen.append(gate.gate.capacity)
        for _ in range(100):
            gate.adapt(0.0)  # nobody waits: no reason to grow
        seen.append(gate.gate.capacity)
        for _ in range(10):
            await gate.enter("t")
        waiter = asyncio.create_task(gate.enter("t"))
        await asyncio.sleep(0)
        gate.adapt(0.0)  # a request waits and the loop keeps up: one more slot, and it enters
        await asyncio.wait_for(waiter, 1)
        seen.append(gate.gate.capacity)
        return seen

    assert asyncio.run(run()) == [100, 10, 10, 11]


def test_a_quiet_tenant_beside_a_busy_one_makes_the_bound_follow_the_stricter_target() -> None:
    async def run() -> list[tuple[bool, int]]:
        gate = request_gate(
            minimum=32,
            maximum=100,
            lag_target=0.02,
            isolation_lag_target=0.005,
            isolation_minimum=4,
        )
        gate.WINDOW = 0.0  # every tick closes a window: the test steps through them
        seen = []
        for _ in range(RequestGate.BUSY):
            assert await gate.enter("busy")

        def ticks(lag: float) -> None:
            for _ in range(50):
                gate.adapt(lag)
            seen.append((gate.isolating, gate.gate.capacity))

        ticks(0.01)  # the busy tenant alone: within its lag target, nothing changes
        assert await gate.enter("quiet")
        ticks(0.01)  # a quiet tenant beside it: beyond the stricter target, down to its bound
        gate.leave("quiet")
        ticks(0.01)  # two windows without it: the lax target, and back up to its bound
        return seen

    assert asyncio.run(run()) == [(False, 100), (True, 4), (False, 32)]


def test_a_flood_beside_a_tenant_known_to_be_quiet_is_held_as_it_arrives() -> None:
    """A flood's first burst arrives within one turn of the loop: the bound is held the
    moment a tenant becomes busy beside one already known to be quiet, not at the end of
    the window (here, never)."""

    async def run() -> None:
        gate = request_gate(
            minimum=32, maximum=100, isolation_lag_target=0.005, isolation_minimum=4
        )
        gate.WINDOW = 0.0
        assert await gate.enter("quiet")
        gate.leave("quiet")
        gate.adapt(0.0)  # a window ends: the quiet tenant is known
        gate.WINDOW = 3600.0
        for _ in range(RequestGate.BUSY):
            assert await gate.enter("flood")
        assert gate.isolating
        assert gate.gate.capacity == RequestGate.BUSY
        # The rest of the burst waits; the quiet tenant's next request does not.
        rest = asyncio.create_task(gate.enter("flood"))
        await asyncio.sleep(0)
        assert not rest.done()
        assert await gate.enter("quiet")
        rest.cancel()

    asyncio.run(run())


def test_tenants_growing_together_are_not_told_apart_before_their_window_ends() -> None:
    """Two tenants at 5 each, then one at 8 and the other at 6: the second may be growing
    too. Only a tenant clearly quiet in the last window is judged before this one ends."""

    async def run() -> tuple[bool, int]:
        gate = request_gate(maximum=100, isolation_minimum=4)
        gate.WINDOW = 0.0
        for tenant in ("a", "b"):
            for _ in range(5):
                assert await gate.enter(tenant)
        gate.adapt(0.0)  # a window ends with both at 5
        gate.WINDOW = 3600.0
        for _ in range(3):
            assert await gate.enter("a")
        assert await gate.enter("b")
        return gate.isolating, gate.gate.capacity

    assert asyncio.run(run()) == (False, 100)


def test_a_quiet_tenants_only_request_goes_in_while_the_bound_shrinks_below_the_flood() -> None:
    async def run() -> None:
        gate = request_gate(minimum=2, maximum=10, overdraft=1, max_wait=0.5)
        for _ in range(10):
            assert await gate.enter("flood")
        for _ in range(30):
            gate.adapt(0.5)  # far behind: the bound falls to 2 with 10 still in progress
        assert (gate.gate.capacity, gate.in_progress) == (2, 10)
        assert await gate.enter("quiet")
        second = asyncio.create_task(gate.enter("other quiet"))  # beyond the overdraft
        await asyncio.sleep(0)
        assert not second.done()
        gate.leave("quiet")  # its overdraft goes to the tenant whose only request waits
        assert await second
        third = asyncio.create_task(gate.enter("third quiet"))
        await asyncio.sleep(0)
        assert not third.done()
        gate.leave("other quiet")
        assert await third

    asyncio.run(run())


def test_a_tenant_sending_more_gives_its_overdraft_back_with_its_next_request_to_leave() -> None:
    async def run() -> None:
        gate = request_gate(maximum=1, overdraft=1)
        assert await gate.enter("flood")
        assert await gate.enter("growing")  # its only request: past the bound
        more = asyncio.create_task(gate.enter("growing"))
        other = asyncio.create_task(gate.enter("quiet"))  # the one overdraft is taken
        await asyncio.sleep(0)
        assert not more.done()
        assert not other.done()
        gate.leave("growing")
        # "growing" still has a request waiting, but no longer holds the overdraft: it goes
        # to the tenant served least recently among those whose only request waits.
        assert await other
        assert not more.done()
        assert gate._overdrawn == {"quiet"}
        more.cancel()

    asyncio.run(run())


def test_an_overdraft_given_back_goes_to_a_quiet_tenant_already_waiting_not_a_later_one() -> None:
    async def run() -> None:
        gate = request_gate(maximum=2, overdraft=1)
        for _ in range(2):
            assert await gate.enter("flood")
        flood = asyncio.create_task(gate.enter("flood"))
        assert await gate.enter("first quiet")  # the one overdraft
        waiting = asyncio.create_task(gate.enter("second quiet"))
        await asyncio.sleep(0)
        assert not waiting.done()
        gate.leave("first quiet")
        # At once, while the flood still fills the bound, and before a tenant arriving now.
        assert await waiting
        late = asyncio.create_task(gate.enter("late quiet"))
        await asyncio.sleep(0)
        assert not late.done()
        assert not flood.done()
        assert gate.in_progress == 3
        for task in (late, flood):
            task.cancel()

    asyncio.run(run())


def test_busy_tenants_taking_turns_and_many_similar_tenants_never_isolate() -> None:
    async def isolating(loads: dict[str, int]) -> bool:
        gate = request_gate(minimum=1, maximum=1000, isolation_lag_target=0.001)
        gate.WINDOW = 0.0
        for tenant, load in loads.items():
            for _ in range(load):
                assert await gate.enter(tenant)
        gate.adapt(0.01)
        gate.adapt(0.01)
        return gate.isolating

    async def run() -> list[bool]:
        return [
            await isolating({"a": 40, "b": 40}),  # two floods
            await isolating({f"s{i}": 6 + i % 7 for i in range(20)}),  # 20 servers, 6-12 each
            await isolating({"flood": 40, "quiet": 1}),
        ]

    assert asyncio.run(run()) == [False, False, True]


def test_a_process_isolating_a_quiet_tenant_makes_its_siblings_isolate_their_busy_ones(
    tmp_path: Path,
) -> None:
    """Processes of one server share the machine's cores: a flood's turns on one process
    delay a quiet tenant's on another, so while one isolates, a sibling with a busy tenant
    keeps its turns short too. A sibling with no busy tenant has nothing to hold back, and
    one that only followed never raises the signal itself (or it would never go down)."""
    signal = SiblingSignal(str(tmp_path / "isolating"), fresh_for=3600)

    async def run() -> list[tuple[bool, bool, bool, int]]:
        def sibling() -> RequestGate:
            gate = request_gate(
                minimum=32,
                maximum=100,
                isolation_lag_target=0.005,
                isolation_minimum=4,
                siblings=signal,
            )
            gate.WINDOW = 0.0
            return gate

        quiet_here, busy_only, idle = sibling(), sibling(), sibling()
        for _ in range(RequestGate.BUSY):
            assert await quiet_here.enter("flood")
            assert await busy_only.enter("flood")
        assert await idle.enter("small")
        seen = []

        def tick() -> None:
            for _ in range(50):
                for process in (quiet_here, busy_only, idle):
                    process.adapt(0.01)
            seen.append(
                (
                    quiet_here.isolating,
                    busy_only.isolating,
                    idle.isolating,
                    busy_only.gate.capacity,
                )
            )

        tick()  # floods only, no signal: nobody isolates
        assert await quiet_here.enter("quiet")
        tick()  # a quiet tenant on one: both processes with a flood isolate
        quiet_here.leave("quiet")
        tick()  # gone, but the signal is still fresh: both follow it
        os.utime(signal.path, (0, 0))  # ...and no longer
        tick()
        return seen

    assert asyncio.run(run()) == [
        (False, False, False, 100),
        (True, True, False, 4),
        (True, True, False, 4),
        (False, False, False, 32),
    ]


def test_a_process_with_a_flood_follows_its_sibling_within_the_window(tmp_path: Path) -> None:
    signal = SiblingSignal(str(tmp_path / "isolating"), fresh_for=3600)

    async def run() -> list[bool]:
        gate = request_gate(maximum=100, isolation_minimum=4, siblings=signal)
        gate.WINDOW = 3600.0  # no window ends in this test
        gate.RECONSIDER = 0.0
        for _ in range(RequestGate.BUSY):
            assert await gate.enter("flood")
        seen = [gate.isolating]
        gate.adapt(0.0)
        seen.append(gate.isolating)
        signal.raise_()  # another process isolates a quiet tenant
        gate.adapt(0.0)
        seen.append(gate.isolating)
        return seen

    assert asyncio.run(run()) == [False, False, True]


def test_without_a_sibling_signal_file_nothing_is_shared(tmp_path: Path) -> None:
    signal = SiblingSignal(str(tmp_path / "missing" / "isolating"))
    signal.raise_()  # its directory is gone (the server stopped): no error, nothing raised
    assert not signal.raised()


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
def test_a_flooding_servers_backlog_waits_behind_a_quiet_servers_notify_and_its_excess_is_503(
    settings: Settings, zulip_server: ZulipServer, realm: RemoteRealm, fake_apns: FakeApns
) -> None:
    quiet = make_server()
    quiet_realm = quiet.add_realm()
    quiet_token, slow, backlog = "cd" * 32, f"{1:064x}", f"{2:064x}"
    device(quiet_realm, quiet_token, "apns")
    device(realm, slow, "apns")
    device(realm, backlog, "apns")
    fake_apns.script(slow, Answer(hang=True))
    settings.NOTIFY_WAIT_SECONDS = 2.0
    settings.DELIVERY_RETRY_WINDOW_SECONDS = 0  # the flood's timeout is not retried
    saved = (gate.gate.capacity, gate.max_waiting_per_tenant, gate.max_wait)
    gate.gate.resize(1)
    gate.max_waiting_per_tenant = 1
    # The backlog waits until the flood's first notify gives up (NOTIFY_WAIT_SECONDS): it
    # must not itself give up on the same clock first.
    gate.max_wait = 30.0
    try:

        async def scenario() -> tuple[Any, Any, Any, Any]:
            loop = asyncio.get_running_loop()

            def send(server: ZulipServer, r: RemoteRealm, token: str) -> Any:
                return loop.run_in_executor(
                    None, lambda: e2ee_notify(server, r, [apns_item(token)])
                )

            # The flood takes the only slot with a delivery Apple never answers...
            first = send(zulip_server, realm, slow)
            while gate.in_progress < 1:
                await asyncio.sleep(0.01)
            # ...queues a second notify, and has a third refused at once.
            second = send(zulip_server, realm, backlog)
            while gate.gate.waiting_for(str(zulip_server.row.pk)) < 1:
                await asyncio.sleep(0.01)
            third = await send(zulip_server, realm, backlog)
            # The quiet server's notify, sent last, is its only one: in at once, beyond the
            # bound, and answered while the flood's backlog still waits.
            served = await send(quiet, quiet_realm, quiet_token)
            assert not second.done()
            return await first, await second, third, served

        first, second, third, served = asyncio.run(scenario())
        assert third.status_code == 503
        assert third["Retry-After"]
        assert third.json()["code"] == "SERVICE_UNAVAILABLE"
        assert served.json()["apple_successfully_sent_count"] == 1
        assert second.json()["apple_successfully_sent_count"] == 1
        assert first.status_code == 200  # answered when its wait ran out
        order = [r.token for r in fake_apns.received]
        assert order.index(quiet_token) < order.index(backlog), order
    finally:
        gate.gate.resize(saved[0])
        gate.max_waiting_per_tenant = saved[1]
        gate.max_wait = saved[2]
