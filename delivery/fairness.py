"""Tenants take turns: fair admission of requests and fair sending (pure asyncio, no I/O).

A tenant is an opaque key (a Zulip server's id). Two mechanisms, both per process:

- `Admission` decides whether a request starts at all. While the process is within its
  capacity everyone is admitted, and a tenant alone may use all of it. Once it is over (too
  many deliveries in flight, or the event loop falling behind), only tenants using less than
  their max-min fair share of the capacity are admitted; the others get a quick 503 with
  Retry-After, which Zulip servers retry. A tenant under its share is never refused.
- `FairGate` orders the sends that wait for room on an upstream: waiting deliveries are
  served one per tenant in turn (deficit round robin with a quantum of one delivery), so one
  tenant's 10,000-device burst does not sit in front of another tenant's single notification.
"""

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from dataclasses import dataclass


class FairGate:
    """At most `capacity` holders at once; waiters are served round robin by tenant."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def waiting_for(self, tenant: str) -> int:
        queue = self._waiting.get(tenant)
        return len(queue) if queue else 0

    async def acquire(self, tenant: str) -> None:
        if self.in_use < self.capacity and not self._waiting:
            self.in_use += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tenant, deque()).append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as it was cancelled: pass the slot on
            else:
                queue = self._waiting.get(tenant)
                if queue is not None:
                    with contextlib.suppress(ValueError):
                        queue.remove(future)
                    if not queue:
                        del self._waiting[tenant]
            raise

    def release(self) -> None:
        """Hand the slot to the next tenant in turn, or free it."""
        while self._waiting:
            tenant, queue = next(iter(self._waiting.items()))
            future = queue.popleft()
            if queue:
                self._waiting.move_to_end(tenant)  # its next delivery waits for a full turn
            else:
                del self._waiting[tenant]
            if not future.done():
                future.set_result(None)
                return
        self.in_use -= 1


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    share: float  # the fair share at the time, in deliveries in flight
    in_flight: int  # the tenant's deliveries in flight before this request


class Admission:
    """Max-min fair admission by deliveries in flight, per process."""

    def __init__(self, *, capacity: int, lag_limit: float, active_seconds: float = 2.0) -> None:
        self.capacity = capacity
        self.lag_limit = lag_limit
        self.active_seconds = active_seconds
        self.in_flight = 0
        self.lag = 0.0  # seconds the event loop is behind (LagMonitor)
        self._by_tenant: dict[str, int] = {}
        self._last_seen: dict[str, float] = {}

    def overloaded(self) -> bool:
        return self.in_flight >= self.capacity or self.lag > self.lag_limit

    def _limit(self) -> int:
        """What the process can carry now: its capacity, or, while the loop falls behind
        (the CPU is the limit), what it already carries."""
        if self.lag > self.lag_limit:
            return max(1, min(self.capacity, self.in_flight))
        return self.capacity

    def _active_tenants(self, tenant: str, now: float) -> int:
        horizon = now - self.active_seconds
        stale = [t for t, seen in self._last_seen.items() if seen < horizon and t != tenant]
        for t in stale:
            if not self._by_tenant.get(t):
                del self._last_seen[t]
        return max(1, len(self._last_seen))

    def admit(self, tenant: str, cost: int) -> Decision:
        """Count `cost` deliveries in flight for `tenant` if admitted; call `done` after."""
        now = time.monotonic()
        self._last_seen[tenant] = now
        mine = self._by_tenant.get(tenant, 0)
        share = self._limit() / self._active_tenants(tenant, now)
        if self.overloaded() and mine + cost > share and mine > 0:
            return Decision(admitted=False, share=share, in_flight=mine)
        self.in_flight += cost
        self._by_tenant[tenant] = mine + cost
        return Decision(admitted=True, share=share, in_flight=mine)

    def done(self, tenant: str, cost: int) -> None:
        self.in_flight -= cost
        left = self._by_tenant.get(tenant, 0) - cost
        if left > 0:
            self._by_tenant[tenant] = left
        else:
            self._by_tenant.pop(tenant, None)


class LagMonitor:
    """How far behind the event loop runs: a timer's lateness, smoothed."""

    INTERVAL = 0.01

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        lag = 0.0
        while True:
            expected = time.monotonic() + self.INTERVAL
            await asyncio.sleep(self.INTERVAL)
            late = max(0.0, time.monotonic() - expected)
            # Rises at once, decays over ~10 ticks: one slow callback is not an overload.
            lag = late if late > lag else lag * 0.9 + late * 0.1
            self.admission.lag = lag

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
