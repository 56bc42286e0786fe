"""Tenants take turns: fair admission of requests and fair sending (pure asyncio, no I/O).

A tenant is an opaque key (a Zulip server's id). Two gates, both per process; when a slot
frees, the waiting tenant that was served least recently gets it (round robin with a quantum
of one, where holding slots already counts as having been served):

- `RequestGate` decides when a request is worked on. It lets a bounded number of requests be
  in progress at once, and adapts that bound to the CPU (`adapt`): it shrinks while the event
  loop falls behind and grows back while requests wait and the loop keeps up. A tenant's
  only request is admitted at once, beyond the bound if need be (`overdraft` tenants at once;
  one given back goes first to a tenant whose only request waits for it);
  a request beyond the bound otherwise waits for its tenant's turn, so a quiet tenant's
  request is next whatever another tenant has queued; a tenant alone may use the whole
  process. A request that would
  wait too long (its tenant already has `max_waiting_per_tenant` waiting, or it waited
  `max_wait` seconds) is refused: the caller answers 503 with Retry-After, which Zulip servers
  retry. So a flood is slowed and then shed, and never makes the others wait behind it.
- `FairGate` orders the deliveries that wait for room on an upstream: one tenant's
  10,000-device burst does not sit in front of another tenant's single notification.
"""

import asyncio
import contextlib
import os
import time
from collections import OrderedDict, deque
from pathlib import Path


class FairGate:
    """At most `capacity` holders at once; waiters are served round robin by tenant."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        # When each tenant last got a slot: the waiting tenant served least recently goes
        # next, so a tenant holding slots already does not go before one that holds none.
        self._turns = 0
        self._last_turn: dict[str, int] = {}

    def _took_turn(self, tenant: str) -> None:
        self._turns += 1
        self._last_turn[tenant] = self._turns
        if len(self._last_turn) > 100_000:
            self._last_turn = {t: n for t, n in self._last_turn.items() if t in self._waiting}

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def waiting_tenants(self) -> list[str]:
        return list(self._waiting)

    def last_turn(self, tenant: str) -> int:
        """When the tenant last got a slot (0: never): the lower, the sooner its turn."""
        return self._last_turn.get(tenant, 0)

    def waiting_for(self, tenant: str) -> int:
        queue = self._waiting.get(tenant)
        return len(queue) if queue else 0

    def overdraw(self, tenant: str) -> None:
        """A slot beyond the bound, now; it goes when released (in_use above capacity)."""
        self.in_use += 1
        self._took_turn(tenant)

    def hand_over(self, tenant: str) -> bool:
        """Wake this tenant's first waiter (the caller accounts for its slot); False if it
        has none waiting."""
        queue = self._waiting.get(tenant)
        while queue:
            future = queue.popleft()
            if not queue:
                del self._waiting[tenant]
            if not future.done():
                future.set_result(None)
                self._took_turn(tenant)
                return True
        return False

    def try_acquire(self, tenant: str) -> bool:
        """A slot now if one is free and nobody waits for it."""
        if self.in_use < self.capacity and not self._waiting:
            self.in_use += 1
            self._took_turn(tenant)
            return True
        return False

    async def acquire(self, tenant: str) -> None:
        if self.try_acquire(tenant):
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

    def resize(self, capacity: int) -> None:
        """A new bound: more room is handed to waiters at once; less takes effect as holders
        leave."""
        self.capacity = capacity
        while self.in_use < self.capacity and self._grant_next():
            self.in_use += 1

    def _grant_next(self) -> bool:
        """Wake the first waiter of the tenant served least recently; False if none waits."""
        while self._waiting:
            if self.hand_over(min(self._waiting, key=self.last_turn)):
                return True
        return False

    def release(self) -> None:
        """Hand the slot to the next tenant in turn, or free it."""
        if self.in_use > self.capacity:  # shrunk meanwhile: this slot goes
            self.in_use -= 1
            return
        if not self._grant_next():
            self.in_use -= 1


class SiblingSignal:
    """One flag shared by the web processes of one server (`manage.py serve --workers N`):
    "a quiet tenant is being isolated here". A file's modification time, set by a process
    that isolates (once a window), read by the others once a window and, while they have a
    busy tenant they do not isolate, every RequestGate.RECONSIDER seconds.

    Processes of one machine share its cores. A process whose quiet tenant keeps its own turns
    short still waits for the CPU while a sibling runs a flood's work at the looser target:
    measured with the quiet tenant on one of two processes, its loop stayed within 1-2 ms
    while the sibling ran 10-30 ms behind, and the quiet tenant's p99 went from 66 ms alone to
    107 ms; with the sibling isolating too (both at a bound of 8), 72-76 ms (bench/README.md,
    fourth round)."""

    ENV = "BOUNCER_SIBLING_SIGNAL_FILE"

    def __init__(self, path: str, *, fresh_for: float = 2.0) -> None:
        self.path = path
        # Raised once a window (RequestGate.WINDOW) while it holds: two windows without
        # it, and it is down, as a tenant's activity is judged over two windows.
        self.fresh_for = fresh_for

    @classmethod
    def from_environment(cls) -> "SiblingSignal | None":
        path = os.environ.get(cls.ENV)
        return cls(path) if path else None

    def raise_(self) -> None:
        with contextlib.suppress(OSError):  # the server stopped, its directory gone: nothing
            Path(self.path).touch()

    def raised(self) -> bool:
        try:
            return time.time() - os.stat(self.path).st_mtime < self.fresh_for
        except OSError:
            return False


class RequestGate:
    """Requests in progress at once, adapted to the CPU; waiters served round robin by tenant.

    Two lag targets. While a quiet tenant (fewer than BUSY requests at once) shares the
    process with a busy one (at least BUSY, and at least a quarter of all the requests), the
    bound keeps the loop within `isolation_lag_target`, down to `isolation_minimum` requests:
    each step of the quiet tenant's notify waits one turn of the loop behind the busy
    tenant's work, so the turns must be short for it to see its latency alone. The busy
    tenant pays with throughput, and only then. Otherwise (a flood alone, a few busy tenants
    taking turns, many tenants of similar size) the bound keeps the loop within `lag_target`.

    Which applies is decided at the end of each window, and also the moment a tenant becomes
    busy beside one known to be quiet from the last window: then the bound is held at the
    requests in progress, and the rest of the burst waits instead of entering in one turn.
    """

    # A tenant with this many requests in progress or waiting at once is not a quiet one.
    BUSY = 8
    # ...and a busy one if it also has this share of all the requests of the process.
    BUSY_SHARE = 0.25
    # Activity is judged over two windows of this many seconds (the last and the current).
    WINDOW = 1.0
    # Between two decisions on isolation taken outside the window's end.
    RECONSIDER = 0.1

    def __init__(
        self,
        *,
        minimum: int,
        maximum: int,
        max_waiting_per_tenant: int,
        max_wait: float,
        lag_target: float,
        isolation_lag_target: float | None = None,
        isolation_minimum: int | None = None,
        overdraft: int | None = None,
        siblings: SiblingSignal | None = None,
    ) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.max_waiting_per_tenant = max_waiting_per_tenant
        self.max_wait = max_wait
        self.lag_target = lag_target
        self.isolation_lag_target = (
            lag_target if isolation_lag_target is None else isolation_lag_target
        )
        self.isolation_minimum = minimum if isolation_minimum is None else isolation_minimum
        # Slots beyond the bound for tenants with no other request in progress or waiting.
        self.overdraft = self.isolation_minimum if overdraft is None else overdraft
        self.gate = FairGate(maximum)
        self.lag = 0.0
        self._load: dict[str, int] = {}  # requests in progress or waiting, by tenant
        self._peak: dict[str, int] = {}  # the highest load of each tenant this window
        self._last_peak: dict[str, int] = {}
        self._total = 0  # requests in progress or waiting, all tenants
        self._total_peak = 0
        self._last_total_peak = 0
        self._window_started = time.monotonic()
        # A quiet tenant shares this process with a busy one, or a sibling process isolates
        # one while this process has a busy tenant.
        self.isolating = False
        self.siblings = siblings
        # Tenants with BUSY or more requests now: while there are any and the process does
        # not isolate, whether it should is asked again, at most every RECONSIDER seconds.
        self._busy: set[str] = set()
        self._reconsidered = -self.RECONSIDER
        # Tenants whose only request went past the bound: one each, given back with that
        # tenant's next request to leave (another of its requests, if it sent more meanwhile:
        # a busy tenant never keeps one).
        self._overdrawn: set[str] = set()

    @property
    def in_progress(self) -> int:
        return self.gate.in_use

    async def enter(self, tenant: str) -> bool:
        """Wait for this tenant's turn; False when the request should be refused instead.
        A True must be followed by `leave(tenant)` once the request is done."""
        load = self._load[tenant] = self._load.get(tenant, 0) + 1
        if load > self._peak.get(tenant, 0):
            self._peak[tenant] = load
        self._total += 1
        if self._total > self._total_peak:
            self._total_peak = self._total
        gate = self.gate
        acquired = gate.try_acquire(tenant)
        if load == self.BUSY:
            self._busy.add(tenant)
            if not self.isolating:
                # A flood's first burst arrives within one turn of the loop: decided at the
                # next window's end, it was all admitted at once and the loop fell 100 ms
                # behind, the quiet tenant's worst figures of a whole run (bench/README.md).
                self._reconsider(time.monotonic())
        if acquired:
            return True
        if load == 1 and len(self._overdrawn) < self.overdraft:
            # The tenant's only request: it waits behind nobody, even when the others fill
            # the bound. Waiting for a slot to free is waiting for one of their requests to
            # end (an upstream's round trip): the quiet tenant's latency doubled under a
            # flood. Bounded, so that many tenants at once still queue; counted apart from
            # the bound, so that a bound shrinking below the requests in progress (a flood
            # just met) does not hold it back either.
            gate.overdraw(tenant)
            self._overdrawn.add(tenant)
            return True
        if gate.waiting_for(tenant) >= self.max_waiting_per_tenant:
            self._unload(tenant)
            return False
        try:
            async with asyncio.timeout(self.max_wait):
                await gate.acquire(tenant)
        except TimeoutError:
            self._unload(tenant)
            return False
        except BaseException:
            self._unload(tenant)
            raise
        return True

    def leave(self, tenant: str) -> None:
        self._unload(tenant)
        if tenant in self._overdrawn:
            self._overdrawn.discard(tenant)
            # A tenant whose only request came while every overdraft was taken waits in the
            # queue: the overdraft freed is its, before a tenant arriving later takes it.
            alone = [t for t in self.gate.waiting_tenants() if self._load.get(t) == 1]
            for waiting in sorted(alone, key=self.gate.last_turn):
                if self.gate.hand_over(waiting):
                    self._overdrawn.add(waiting)
                    return
        self.gate.release()

    def _unload(self, tenant: str) -> None:
        self._total -= 1
        load = self._load.get(tenant, 0) - 1
        if load > 0:
            self._load[tenant] = load
        else:
            self._load.pop(tenant, None)
        if load == self.BUSY - 1:
            self._busy.discard(tenant)

    def _decide(self, *, window_ended: bool) -> None:
        """Isolate or not, from the tenants' peaks over the last two windows. Before the
        current window has ended, only a tenant clearly quiet (under half of BUSY) and
        already there in the last one counts as quiet: tenants arriving or growing together
        (many similar ones ramping up, a few busy ones taking turns) are not told apart until
        their window ends."""
        busy_from = max(self.BUSY, self.BUSY_SHARE * max(self._total_peak, self._last_total_peak))
        quiet_below = self.BUSY if window_ended else self.BUSY // 2
        busy = quiet = False
        last_peak = self._last_peak
        for tenant in self._peak.keys() | last_peak.keys():
            peak = max(self._peak.get(tenant, 0), last_peak.get(tenant, 0))
            if peak >= busy_from:
                busy = True
            elif peak < quiet_below and (window_ended or tenant in last_peak):
                quiet = True
        if busy and quiet and self.siblings is not None:
            self.siblings.raise_()
        isolating = busy and (quiet or (self.siblings is not None and self.siblings.raised()))
        if isolating and not self.isolating:
            # Held where it is: no more of the flood is admitted until the loop is seen to
            # keep within the stricter target; it shrinks from there while it does not.
            gate = self.gate
            held = gate.in_use - len(self._overdrawn)  # the overdrawn are beyond any bound
            gate.resize(min(gate.capacity, max(self.isolation_minimum, held)))
        self.isolating = isolating

    def _reconsider(self, now: float) -> None:
        if now - self._reconsidered >= self.RECONSIDER:
            self._reconsidered = now
            self._decide(window_ended=False)

    def _classify(self, now: float) -> None:
        if now - self._window_started < self.WINDOW:
            if self._busy and not self.isolating:
                # A flood growing here beside a tenant known to be quiet, or a sibling that
                # has started to isolate.
                self._reconsider(now)
            return
        self._decide(window_ended=True)
        self._last_peak, self._last_total_peak = self._peak, self._total_peak
        # Tenants with requests still in progress stay active into the next window.
        self._peak, self._total_peak = dict(self._load), self._total
        self._window_started = now

    def adapt(self, lag: float) -> None:
        """Called every tick with the loop's lag: multiplicative decrease while it is behind,
        additive increase while requests wait and it keeps up."""
        self.lag = lag
        self._classify(time.monotonic())
        target = self.isolation_lag_target if self.isolating else self.lag_target
        minimum = self.isolation_minimum if self.isolating else self.minimum
        capacity = self.gate.capacity
        if lag > target or capacity < minimum:
            capacity = max(minimum, int(capacity * 0.9))
        elif lag < target / 2 and self.gate.waiting:
            capacity = min(self.maximum, capacity + max(1, capacity // 20))
        if capacity != self.gate.capacity:
            self.gate.resize(capacity)


class LagMonitor:
    """How far behind the event loop runs (a timer's lateness, smoothed), fed to the gate."""

    INTERVAL = 0.01

    def __init__(self, gate: RequestGate) -> None:
        self.gate = gate
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
            self.gate.adapt(lag)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
