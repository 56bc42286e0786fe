"""The benchmark: `make bench` (or `.venv/bin/python bench/run.py --help`).

Starts PostgreSQL, Redis, the web server (`manage.py serve`), Celery workers (as
deploy/systemd runs them) and fake APNs (20-60 ms) and FCM (30-80 ms) servers, then drives
the bouncer over HTTP from this process (asyncio + httpx; forked into up to 4 client
processes at higher concurrency) as many Zulip servers, at rising concurrency until
throughput stops rising. For notify workloads the limit is measured in the
same run: our APNs and FCM senders straight to the same fakes, same notifications in flight.

Prints a Markdown report and writes it to bench/results/.
"""

import argparse
import asyncio
import contextlib
import datetime
import itertools
import multiprocessing
import os
import resource
import ssl
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import peers
from harness import ROOT, Stack, percentile, setup_django, stack
from workloads import MATRIX_NOTIFY, Request, Tenant

WORKLOADS = [
    "e2ee-1",
    "e2ee-3",
    "e2ee-10",
    "apns-1",
    "apns-10",
    "matrix-1",
    "matrix-10",
    "legacy-2",
    "register",
    "mixed",
    "floor",
]


@dataclass
class Point:
    workload: str
    concurrency: int
    seconds: float
    requests_per_second: float
    delivered_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: Counter[str]
    cpu_web: float
    cpu_worker: float
    mem_web: float
    mem_worker: float
    machine_busy: float = float("nan")
    limit: float | None = None
    limit_machine_busy: float = float("nan")
    # CPU seconds by process group over the point and its raw limit (CpuMeter).
    cpu: dict[str, float] = field(default_factory=dict)
    limit_cpu: dict[str, float] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.delivered_per_second or self.requests_per_second


def error_label(response: httpx.Response) -> str:
    """A non-200 answer as the report counts it: status and Zulip's error code (or Matrix's
    errcode), if any."""
    try:
        answer = response.json()
        code = answer.get("code") or answer.get("errcode") or ""
    except ValueError:
        code = "not JSON"
    retry_after = " + Retry-After" if "Retry-After" in response.headers else ""
    return f"{response.status_code} {code}{retry_after}".strip()


async def drive(
    s: Stack,
    requests: Iterator[Request],
    *,
    concurrency: int | None,
    rate: float | None = None,
    seconds: float,
    stamp: bool = False,
    count_from: float | None = None,
) -> tuple[int, list[float], Counter[str], float]:
    """Closed loop (`concurrency` clients) or open loop (`rate` requests per second).

    `stamp`: each request carries `X-Request-Start` with the time it was sent, as nginx adds
    it in front of the bouncer (deploy/nginx/bouncer.conf), so that load shedding can work.
    `count_from` (a `time.time()`): requests are sent from now, but only those sent from
    then on are counted, for `seconds`.
    """
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    done = 0
    base = f"{s.web_url}/api/v1/remotes/"
    # One client (one keep-alive connection) per request in flight, reused: httpcore's pool
    # checks every idle connection's socket on each request, so one shared pool of N
    # connections cost the load generator O(N) per request (a fifth of its CPU at 16).
    idle: list[httpx.AsyncClient] = []
    one_connection = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    # Plain HTTP on loopback; one context for all, since httpx builds (and loads CAs into)
    # one per client otherwise, milliseconds each when an open loop opens thousands.
    no_tls = ssl.create_default_context()
    async with contextlib.AsyncExitStack() as opened:

        async def one(request: Request) -> None:
            nonlocal done
            method, path, auth, body, form = request
            if idle:
                client = idle.pop()
            else:
                client = await opened.enter_async_context(
                    # A Zulip server gives up after 15 s (spec: zulip-delivery.md section 1).
                    httpx.AsyncClient(limits=one_connection, timeout=15, verify=no_tls)
                )
            started = time.perf_counter()
            counted = started >= count_at
            if path.startswith("http"):  # another server than the bouncer (a peer)
                url = path
            else:
                url = s.web_url + path if path.startswith("/") else base + path
            headers = {"X-Request-Start": f"t={time.time():.3f}"} if stamp else None
            try:
                response = await client.request(
                    method, url, auth=auth, json=body, data=form, headers=headers
                )
            except httpx.HTTPError as e:
                if counted:
                    errors[type(e).__name__] += 1
                return
            finally:
                idle.append(client)
            if not counted:
                return
            latencies.append(time.perf_counter() - started)
            done += 1
            if response.status_code != 200:
                errors[error_label(response)] += 1
            elif url.endswith(MATRIX_NOTIFY) and response.json().get("rejected"):
                # A 200 that sent nothing to the rejected pushkeys (an app the gateway does
                # not know, a token Apple declared dead): not a delivered notification.
                errors["200 rejected"] += 1

        started = time.perf_counter()
        count_at = started + (0.0 if count_from is None else max(0.0, count_from - time.time()))
        deadline = count_at + seconds
        if rate is not None:
            tasks = []
            n = 0
            while (now := time.perf_counter()) < deadline:
                due = started + n / rate
                if due > now:
                    await asyncio.sleep(due - now)
                tasks.append(asyncio.create_task(one(next(requests))))
                n += 1
            await asyncio.gather(*tasks)
        else:
            assert concurrency is not None

            async def client_loop() -> None:
                while time.perf_counter() < deadline:
                    await one(next(requests))

            await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - count_at
    return done, latencies, errors, elapsed


# One asyncio + httpx client process carries about this many requests in flight before its
# own CPU (one core at most) delays them: at 64 in flight, one process ran at ~80% of a core
# while the bouncer had CPU to spare, and the latencies it measured were its own queueing.
IN_FLIGHT_PER_CLIENT_PROCESS = 16
MAX_CLIENT_PROCESSES = 4


def _drive_share(
    s: Stack,
    requests: Iterator[Request],
    share: int,
    shares: int,
    concurrency: int | None,
    rate: float | None,
    seconds: float,
    stamp: bool,
    results: "multiprocessing.Queue[Any]",
    count_from: float | None = None,
) -> None:
    # Every process forked the same request stream; each takes every shares-th request, so
    # no two send the same one (a sealed registration stays a new device).
    mine = itertools.islice(requests, share, None, shares)
    results.put(
        asyncio.run(
            drive(
                s,
                mine,
                concurrency=concurrency,
                rate=rate,
                seconds=seconds,
                stamp=stamp,
                count_from=count_from,
            )
        )
    )


def share_of(total: int, i: int, shares: int) -> int:
    return total // shares + (1 if i < total % shares else 0)


def drive_from_processes(
    s: Stack,
    requests: Iterator[Request],
    *,
    concurrency: int | None,
    rate: float | None,
    seconds: float,
    stamp: bool = False,
) -> tuple[int, list[float], Counter[str], float]:
    """`drive`, split over forked client processes when one would be the bottleneck."""
    if concurrency is not None:
        in_flight = concurrency
    else:
        # Open loop: about rate x 0.1 s in flight while the bouncer keeps up (half load);
        # above saturation (the stamped overload), thousands: every client process.
        assert rate is not None
        in_flight = (
            MAX_CLIENT_PROCESSES * IN_FLIGHT_PER_CLIENT_PROCESS if stamp else int(rate * 0.1)
        )
    shares = min(MAX_CLIENT_PROCESSES, max(1, -(-in_flight // IN_FLIGHT_PER_CLIENT_PROCESS)))
    if shares == 1:
        return asyncio.run(
            drive(s, requests, concurrency=concurrency, rate=rate, seconds=seconds, stamp=stamp)
        )
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[Any] = context.Queue()
    children = [
        context.Process(
            target=_drive_share,
            args=(
                s,
                requests,
                i,
                shares,
                None if concurrency is None else share_of(concurrency, i, shares),
                None if rate is None else rate / shares,
                seconds,
                stamp,
                results,
            ),
        )
        for i in range(shares)
    ]
    for child in children:
        child.start()
    parts = [results.get(timeout=seconds + 120) for _ in children]
    for child in children:
        child.join(timeout=30)
    errors: Counter[str] = Counter()
    for part in parts:
        errors.update(part[2])
    return (
        sum(part[0] for part in parts),
        [latency for part in parts for latency in part[1]],
        errors,
        max(part[3] for part in parts),
    )


def measure(
    s: Stack,
    workload: str,
    requests: Iterator[Request],
    *,
    concurrency: int,
    seconds: float,
    rate: float | None = None,
    stamp: bool = False,
    groups: dict[str, list[str]] | None = None,
) -> Point:
    time.sleep(0.5)  # whatever came before (a raw-limit run) has been counted
    delivered_before = s.delivered()
    meter = CpuMeter(s, groups)
    done, latencies, errors, elapsed = drive_from_processes(
        s,
        requests,
        concurrency=None if rate else concurrency,
        rate=rate,
        seconds=seconds,
        stamp=stamp,
    )
    cpu = meter.stop()
    time.sleep(1.5)  # late deliveries land; the fakes write their counts every 0.2 s
    delivered = s.delivered() - delivered_before
    return Point(
        workload=f"{workload} at {rate:,.0f} req/s" if rate else workload,
        concurrency=concurrency,
        seconds=elapsed,
        requests_per_second=done / elapsed,
        delivered_per_second=delivered / elapsed,
        p50_ms=percentile(latencies, 50) * 1000,
        p95_ms=percentile(latencies, 95) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        errors=errors,
        cpu_web=cpu["web"],
        cpu_worker=cpu["worker"],
        mem_web=s.peak_memory_mb("web"),
        mem_worker=s.peak_memory_mb("worker"),
        machine_busy=cpu["machine"] / cpu["capacity"],
        cpu=cpu,
    )


# Where a point's CPU went: the bouncer's processes, what it talks to, the load generator.
CPU_GROUPS = {
    "web": ["web"],
    "worker": ["worker"],
    "PostgreSQL": ["postgres"],
    "Redis": ["redis"],
    "fakes": ["apns", "fcm"],
}


class CpuMeter:
    """CPU seconds by group (CPU_GROUPS, "load generator"), the machine's busy seconds
    ("machine"), what its cores could have given ("capacity") and the wall time ("seconds"),
    from creation to stop()."""

    def __init__(self, s: Stack, groups: dict[str, list[str]] | None = None) -> None:
        self.s = s
        self.groups = groups or CPU_GROUPS
        self.before = self._groups()
        self.before["load generator"] = self._load_generator()
        self.jiffies = machine_jiffies()
        self.started = time.perf_counter()

    def stop(self) -> dict[str, float]:
        seconds = time.perf_counter() - self.started
        jiffies = machine_jiffies()
        after = {"load generator": self._load_generator(), **self._groups()}
        cpu = {group: after[group] - self.before[group] for group in after}
        tick = os.sysconf("SC_CLK_TCK")
        cpu["machine"] = (jiffies[0] - self.jiffies[0]) / tick
        cpu["capacity"] = (jiffies[1] - self.jiffies[1]) / tick
        cpu["seconds"] = seconds
        return cpu

    def _groups(self) -> dict[str, float]:
        return {
            group: sum(self.s.cpu_seconds(role) for role in roles)
            for group, roles in self.groups.items()
        }

    @staticmethod
    def _load_generator() -> float:
        """This process and its client processes (forked, finished and joined by then)."""
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            total += usage.ru_utime + usage.ru_stime
        return total


def host_busy(seconds: float = 3) -> float:
    """The share of the machine's CPU in use over the next `seconds`, by whatever runs."""
    before = machine_jiffies()
    time.sleep(seconds)
    after = machine_jiffies()
    return (after[0] - before[0]) / max(1, after[1] - before[1])


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # without guest time, which user time already counts
    return total - idle, total


async def _raw_limit(
    s: Stack, tenants: list[Tenant], in_flight: int, seconds: float, kind: str | None
) -> tuple[float, dict[str, float]]:
    """Our senders alone, straight to the fakes: the ceiling the bouncer is compared with."""
    from delivery.apns import ApnsSender
    from delivery.fcm import FcmSender
    from delivery.types import Delivery

    apns, fcm = ApnsSender(), FcmSender()
    tokens = [t for tenant in tenants for t in tenant.e2ee_tokens if kind in (None, t[0])]
    sent = 0
    deadline = time.perf_counter() + seconds
    payload = {"push_key_id": 1, "encrypted_data": "x" * 240}

    async def loop(n: int) -> None:
        nonlocal sent
        i = n
        while time.perf_counter() < deadline:
            kind, token = tokens[i % len(tokens)]
            if kind == "apns":
                await apns.send(
                    Delivery.apns(
                        index=0,
                        device_id=0,
                        token=token,
                        app_id="org.zulip.Zulip",
                        body=payload,
                        priority=10,
                        push_type="alert",
                        expiration=None,
                    )
                )
            else:
                await fcm.send(
                    Delivery.fcm(
                        index=0,
                        device_id=0,
                        token=token,
                        data={"push_key_id": "1", "encrypted_data": "x" * 240},
                        priority="high",
                    )
                )
            sent += 1
            i += in_flight

    await loop(0)  # connections and tokens first, outside the timed part
    meter = CpuMeter(s)  # reading it takes a moment: before the clock starts
    sent = 0
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(loop(n) for n in range(in_flight)))
    rate = sent / (time.perf_counter() - started)
    cpu = meter.stop()
    await apns.close()
    await fcm.close()
    return rate, cpu


def raw_limit(
    s: Stack, tenants: list[Tenant], in_flight: int, seconds: float, kind: str | None = None
) -> tuple[float, dict[str, float]]:
    """Notifications per second, and the CPU by group while they were sent (to `kind`'s
    devices only, "apns", or APNs and FCM alternating)."""
    return asyncio.run(_raw_limit(s, tenants, in_flight, seconds, kind))


def requests_for(workload: str, tenants: list[Tenant], public_key: str) -> Iterator[Request]:
    import workloads

    if workload.startswith("e2ee-"):
        return workloads.e2ee_notify(tenants, int(workload.split("-")[1]))
    if workload.startswith("apns-"):
        return workloads.e2ee_notify(tenants, int(workload.split("-")[1]), kind="apns")
    if workload.startswith("matrix-"):
        return workloads.matrix_notify(workloads.matrix_bodies(int(workload.split("-")[1])))
    if workload == "legacy-2":
        return workloads.legacy_notify(tenants)
    if workload == "register":
        return workloads.e2ee_registrations(tenants, public_key, 3000)
    if workload == "mixed":
        return workloads.mixed(tenants, public_key)
    if workload == "floor":
        return workloads.floor()
    raise ValueError(workload)


def devices_per_request(workload: str) -> int:
    if workload.startswith(("e2ee-", "apns-", "matrix-")):
        return int(workload.split("-")[1])
    return {"legacy-2": 2, "mixed": 3}.get(workload, 0)


def fmt_errors(errors: Counter[str]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(errors.items())) or "0"


def point_row(p: Point) -> str:
    per = p.delivered_per_second or p.requests_per_second
    total = per * p.seconds
    cpu_ms = (p.cpu_web + p.cpu_worker) / total * 1000 if total else float("nan")
    limit = f"{p.limit:,.0f} ({p.limit_machine_busy:.0%} busy)" if p.limit else "-"
    ratio = f"{p.delivered_per_second / p.limit:.0%}" if p.limit else "-"
    return (
        f"| {p.workload} | {p.concurrency or 'open loop'} | {p.requests_per_second:,.0f} | "
        f"{p.delivered_per_second:,.0f} | {p.p50_ms:,.0f} / {p.p95_ms:,.0f} / {p.p99_ms:,.0f} | "
        f"{fmt_errors(p.errors)} | {p.cpu_web:.1f} / {p.cpu_worker:.1f} ({cpu_ms:.1f} ms) | "
        f"{p.mem_web:,.0f} / {p.mem_worker:,.0f} | {p.machine_busy:.0%} | {limit} | {ratio} |"
    )


def cpu_rows(p: Point) -> list[str]:
    """CPU milliseconds per item (delivered notification, else request) by process group,
    for the point and its raw limit; "rest" is the machine's busy time no group accounts for
    (the kernel's own work, other processes)."""
    rows = [_cpu_row(p.workload, p.concurrency, p.cpu, p.throughput * p.seconds)]
    if p.limit and p.limit_cpu:
        rows.append(
            _cpu_row(
                f"raw limit, {p.workload}",
                p.concurrency * devices_per_request(p.workload),
                p.limit_cpu,
                p.limit * p.limit_cpu["seconds"],
            )
        )
    return [row for row in rows if row]


def _cpu_row(label: str, in_flight: int, cpu: dict[str, float], items: float) -> str:
    if not items or not cpu:
        return ""
    named = [*CPU_GROUPS, "load generator"]
    # The machine's busy time is sampled at each clock tick, the processes' own time is their
    # exact run time: over a short point the two disagree by tenths of a second either way, so
    # a difference below zero means "nothing else ran", not negative work.
    rest = max(0.0, cpu["machine"] - sum(cpu[group] for group in named))
    cells = " | ".join(f"{cpu[group] / items * 1000:.2f}" for group in named)
    return (
        f"| {label} | {in_flight or 'open loop'} | {cells} | "
        f"{rest / items * 1000:.2f} | {cpu['machine'] / items * 1000:.2f} |"
    )


CPU_HEADER = (
    "| workload | in flight | web | worker | PostgreSQL | Redis | fakes | load generator | "
    "rest | machine |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


HEADER = (
    "| workload | in flight | req/s | delivered/s | latency p50 / p95 / p99 ms | errors | "
    "CPU s web / worker (per item) | peak MB web / worker | machine busy | raw limit/s | ratio |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def ladder(
    s: Stack,
    workload: str,
    tenants: list[Tenant],
    public_key: str,
    concurrencies: list[int],
    seconds: float,
    with_limit: bool,
    out: list[str],
    points: list[Point],
) -> Point:
    """Rising concurrency until throughput stops rising (less than 5% more)."""
    requests = requests_for(workload, tenants, public_key)
    best: Point | None = None
    for concurrency in concurrencies:
        point = measure(s, workload, requests, concurrency=concurrency, seconds=seconds)
        devices = devices_per_request(workload)
        if with_limit and devices:
            kind = "apns" if workload.startswith(("apns-", "matrix-")) else None
            point.limit, point.limit_cpu = raw_limit(
                s, tenants, concurrency * devices, seconds / 2, kind
            )
            point.limit_machine_busy = point.limit_cpu["machine"] / point.limit_cpu["capacity"]
        out.append(point_row(point))
        print(out[-1], flush=True)
        points.append(point)
        if best is not None and point.throughput < best.throughput * 1.05:
            break
        if best is None or point.throughput > best.throughput:
            best = point
    assert best is not None
    return best


def half_load_latency(
    s: Stack, workload: str, tenants: list[Tenant], saturated: Point, seconds: float
) -> Point:
    """Open loop at half of the saturation throughput: the latency a user sees normally."""
    rate = saturated.requests_per_second / 2
    return measure(
        s,
        workload,
        requests_for(workload, tenants, ""),
        concurrency=0,
        rate=rate,
        seconds=seconds,
    )


def bouncer_public_key() -> str:
    from registrations import keys

    pair = keys.active_key() or keys.generate_key()
    return pair.public_key


def stack_for(args: argparse.Namespace) -> AbstractContextManager[Stack]:
    """The processes under test, as the command line configures them."""
    return stack(
        apns_latency_ms=args.apns_latency,
        fcm_latency_ms=args.fcm_latency,
        celery_processes=args.workers,
        celery_threads=args.threads,
        celery_pool=args.pool,
        web_workers=args.web_workers,
    )


def run_main(args: argparse.Namespace, out: list[str]) -> None:
    started = datetime.datetime.now(datetime.UTC)
    out.append(f"# Benchmark run {started:%Y-%m-%d %H:%M} UTC\n")
    out.append(
        f"`{' '.join(['bench/run.py', *sys.argv[1:]])}`; APNs latency {args.apns_latency} ms, "
        f"FCM {args.fcm_latency} ms; {args.workers} worker process(es), --pool {args.pool} "
        f"--concurrency {args.threads}; "
        f"`manage.py serve --workers {args.web_workers}`; {args.seconds:g} s per point.\n"
    )
    with stack_for(args) as s:
        setup_django(s)
        import workloads

        tenants = workloads.create_tenants(
            servers=args.servers, e2ee_per_server=600, legacy_users=100
        )
        public_key = bouncer_public_key()
        # Connections, JWTs and OAuth tokens first.
        measure(s, "warm-up", requests_for("e2ee-3", tenants, ""), concurrency=4, seconds=2)
        out.append("## Throughput at rising concurrency\n")
        out.append(HEADER)
        print("\n".join(out), flush=True)
        saturation: dict[str, Point] = {}
        points: list[Point] = []
        for workload in args.workloads:
            saturation[workload] = ladder(
                s, workload, tenants, public_key, args.concurrency, args.seconds, True, out, points
            )
        if args.half_load:
            out.append("\n## Latency at half the saturation load (open loop)\n")
            out.append(HEADER)
            for workload in args.half_load:
                if workload not in saturation:
                    continue
                point = half_load_latency(s, workload, tenants, saturation[workload], args.seconds)
                out.append(point_row(point))
                print(out[-1], flush=True)
                points.append(point)
        if args.overload:
            out.append("\n## Above saturation\n")
            out.append(
                "Closed loop at 4x the saturation concurrency; then open loop at twice the "
                "saturation throughput for at least 20 s, each request stamped "
                "`X-Request-Start` when sent, as nginx stamps it "
                f"(BOUNCER_MAX_QUEUE_SECONDS {s.env.get('BOUNCER_MAX_QUEUE_SECONDS', '5')}; "
                "the client gives up after 15 s, as a Zulip server does).\n"
            )
            out.append(HEADER)
            for workload in args.overload:
                concurrency = (
                    saturation[workload].concurrency * 4 if workload in saturation else 256
                )
                point = measure(
                    s,
                    workload,
                    requests_for(workload, tenants, public_key),
                    concurrency=concurrency,
                    seconds=args.seconds,
                )
                out.append(point_row(point))
                print(out[-1], flush=True)
                points.append(point)
                if workload not in saturation:
                    continue
                point = measure(
                    s,
                    workload,
                    requests_for(workload, tenants, public_key),
                    concurrency=0,
                    rate=saturation[workload].requests_per_second * 2,
                    seconds=max(args.seconds, 20),
                    stamp=True,
                )
                out.append(point_row(point))
                print(out[-1], flush=True)
                points.append(point)
        out.append("\n## Where the machine's CPU went, ms per item\n")
        out.append(
            "Per delivered notification (per request for registrations and the floor), "
            "measured over each point above in the same order. The bouncer is web + worker; "
            "PostgreSQL, Redis, the fakes and the load generator share the same cores.\n"
        )
        out.append(CPU_HEADER)
        rows = [row for point in points for row in cpu_rows(point)]
        out += rows
        print("\n".join(out[-len(rows) - 3 :]), flush=True)


def run_rows(args: argparse.Namespace) -> list[str]:
    """Cost of a notify and a registration as the device tables grow; the look-ups' query
    plans at each size."""
    import workloads

    out = ["\n## Device look-ups as the tables grow\n"]
    with stack_for(args) as s:
        setup_django(s)
        from registrations import sealing

        tenants = workloads.create_tenants(servers=4, e2ee_per_server=600, legacy_users=100)
        public_key = bouncer_public_key()
        rows_table = [HEADER.replace("| workload |", "| rows in each table, workload |", 1)]
        cpu_table = [CPU_HEADER.replace("| workload |", "| rows in each table, workload |", 1)]
        plans: list[str] = []
        for rows in args.rows:
            workloads.add_filler_devices(rows)
            workloads.add_filler_legacy_tokens(rows, tenants)
            for workload in ("e2ee-3", "legacy-2", "register"):
                point = measure(
                    s,
                    workload,
                    requests_for(workload, tenants, public_key),
                    concurrency=args.concurrency[-1] if args.concurrency else 16,
                    seconds=args.seconds,
                )
                label = f"| {rows:,}, {workload} |"
                rows_table.append(point_row(point).replace(f"| {workload} |", label, 1))
                cpu_table += [row.replace(f"| {workload} |", label, 1) for row in cpu_rows(point)]
                print(rows_table[-1], flush=True)
            token_ids = [sealing.token_id_int(t) for _, t in tenants[0].e2ee_tokens[:3]]
            plan = workloads.device_lookup_plan(tenants[0].realm_uuid, token_ids)
            legacy_plan = workloads.legacy_lookup_plan(
                tenants[0], next(iter(tenants[0].legacy_users))
            )
            registration_plan = workloads.registration_legacy_check_plan(tenants[0])
            plans.append(
                f"### {rows:,} E2EE devices and {rows:,} legacy tokens\n\n"
                f"E2EE notify look-up:\n\n```\n{plan}\n```\n\n"
                f"Legacy notify look-up:\n\n```\n{legacy_plan}\n```\n\n"
                "E2EE registration, its server's legacy rows for the phone:\n\n"
                f"```\n{registration_plan}\n```\n"
            )
        out += rows_table
        out.append("\nCPU per item, ms:\n")
        out += cpu_table
        out.append("")
        out += plans
        print("\n".join(cpu_table + plans), flush=True)
    return out


def run_scaling(args: argparse.Namespace) -> list[str]:
    """e2ee-3 at the top concurrency with 1, 2, 4... web processes (`manage.py serve
    --workers`: they send the first attempts; Celery workers carry only retries), each in a
    fresh stack.

    Each configuration runs in its own child process: Django binds a process to one database.
    """
    out = ["\n## Web processes\n", HEADER.replace("| workload |", "| web processes |", 1)]
    for web_workers in args.scaling:
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--workloads",
                "e2ee-3",
                "--concurrency",
                str(args.concurrency[-1]),
                "--seconds",
                str(args.seconds),
                "--servers",
                str(args.servers),
                "--workers",
                str(args.workers),
                "--web-workers",
                str(web_workers),
                "--threads",
                str(args.threads),
                "--pool",
                args.pool,
                "--apns-latency",
                args.apns_latency,
                "--fcm-latency",
                args.fcm_latency,
                "--half-load",
                "--overload",
                "--no-report",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        # The throughput row; the CPU table that follows starts the same way.
        row = next(line for line in child.stdout.splitlines() if line.startswith("| e2ee-3 |"))
        out.append(row.replace("| e2ee-3 |", f"| {web_workers} |", 1))
        print(out[-1], flush=True)
    return out


# --- Side by side with a peer (--peer sygnal) -----------------------------------------------

# The bouncer's side of a delivered notification: every process it needs, not only its own.
BOUNCER_SIDE = ["web", "worker", "PostgreSQL", "Redis"]
PEER_GROUPS = {**CPU_GROUPS, "Sygnal": ["sygnal"]}
PEER_SHAPES = [1, 10]  # APNs devices per request


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cpu_ms_per_notification(p: Point, groups: list[str]) -> float:
    """Machine CPU milliseconds per notification delivered at the fakes, of these groups."""
    delivered = p.delivered_per_second * p.seconds
    if not delivered:
        return float("nan")
    return sum(p.cpu.get(group, 0.0) for group in groups) / delivered * 1000


def progress_text(name: str, point: Point, groups: list[str]) -> str:
    """A side's point as the peer mode prints it while running: rate, p99, CPU (and by group
    for the bouncer: which of its processes a change moved)."""
    cpu = f"{cpu_ms_per_notification(point, groups):.2f} ms CPU/notif"
    if len(groups) > 1:
        cpu += " = " + " + ".join(
            f"{cpu_ms_per_notification(point, [group]):.2f} {group}" for group in groups
        )
    return (
        f"{name} {point.delivered_per_second:,.0f}/s p99 {point.p99_ms:,.0f} ms ({cpu}, "
        f"errors {fmt_errors(point.errors)}, machine {point.machine_busy:.0%} busy)"
    )


def start_peer(s: Stack, args: argparse.Namespace) -> str | None:
    """The peer's base URL once it answers, or None (and why, printed) when it cannot run:
    the rest of the benchmark never needs it."""
    s.scratch += [s.workdir / "sygnal-venv", s.workdir / "sygnal-src"]
    try:
        python = peers.install_sygnal(s.workdir, Path(args.sygnal_archive))
        return peers.start_sygnal(s, python)
    except (peers.PeerUnavailable, OSError, subprocess.SubprocessError) as e:
        print(f"--peer sygnal skipped: Sygnal is unavailable here ({e})", flush=True)
        return None


def fresh_sides(s: Stack, peer_url: str) -> None:
    """New bouncer (web, workers) and Sygnal processes: each run starts from new processes
    and connections, so that what one run's heaviest shape leaves behind (a queue, a stuck
    connection) is not measured again in the next. The database, Redis and the fakes stay."""
    from tests.services import wait_for_port

    for role in ("web", "worker", "sygnal"):
        s.restart(role)
    for url in (s.web_url, peer_url):
        wait_for_port(int(url.rsplit(":", 1)[1]), timeout=60)
    time.sleep(2)  # the workers connect to the broker


def peer_row(devices: int, concurrency: int, pairs: list[tuple[Point, Point]]) -> str:
    """Medians over the runs; errors summed over them."""
    ours, theirs = [b for b, _ in pairs], [g for _, g in pairs]

    def side(points: list[Point], groups: list[str]) -> tuple[float, str, float]:
        rate = median([p.delivered_per_second for p in points])
        errors: Counter[str] = Counter()
        for p in points:
            errors.update(p.errors)
        cells = (
            f"{rate:,.0f} | {median([p.p50_ms for p in points]):,.0f} | "
            f"{median([p.p99_ms for p in points]):,.0f} | {fmt_errors(errors)}"
        )
        cpu = median([cpu_ms_per_notification(p, groups) for p in points])
        return rate, cells, cpu

    our_rate, our_cells, our_cpu = side(ours, BOUNCER_SIDE)
    their_rate, their_cells, their_cpu = side(theirs, ["Sygnal"])
    ratio = f"{our_rate / their_rate:.2f}" if their_rate else "-"
    return (
        f"| {devices} x {concurrency} | {our_cells} | {their_cells} | {ratio} | "
        f"{our_cpu:.2f} | {their_cpu:.2f} |"
    )


PEER_HEADER = (
    "| devices x in flight | bouncer notif/s | p50 ms | p99 ms | errors | "
    "Sygnal notif/s | p50 ms | p99 ms | errors | bouncer ÷ Sygnal | "
    "CPU ms/notif bouncer | CPU ms/notif Sygnal |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


MATRIX_PEER_HEADER = PEER_HEADER.replace("devices x in flight", "pushkeys x in flight", 1)


def run_peer(args: argparse.Namespace, out: list[str]) -> None:
    """The same APNs-only shapes against the bouncer and against Sygnal, in one stack (one
    fake APNs, one load generator), `--runs` times: the bouncer on Zulip's protocol and on
    Matrix's (`--peer-protocols`), Sygnal on Matrix's. Sygnal and the bouncer's Matrix side
    get the same request bodies in the same order; Sygnal is measured once per shape and
    compared with each of the bouncer's sides."""
    started = datetime.datetime.now(datetime.UTC)
    out.append(f"# Bouncer and Sygnal side by side, {started:%Y-%m-%d %H:%M} UTC\n")
    # The host is shared: how busy it was before anything of the benchmark ran says how much
    # of the figures' noise is other users'.
    out.append(f"Before the run, without the benchmark: {host_busy():.0%} busy.\n")
    busy: list[float] = []
    with stack_for(args) as s:
        setup_django(s)
        import workloads

        url = start_peer(s, args)
        if url is None:
            out.append("Sygnal unavailable here: peer comparison skipped.")
            return
        if args.fakes_first:
            renice(s, FAKE_ROLES, FIRST_NICE)
            out.append(
                f"Fakes first (`--fakes-first`): the fakes at nice {FIRST_NICE}, the servers "
                "and the load generator at 0.\n"
            )
        tenants = workloads.create_tenants(
            servers=args.servers, e2ee_per_server=600, legacy_users=0
        )
        bodies = {n: workloads.matrix_bodies(n) for n in PEER_SHAPES}
        # Per shape, what is measured, in order: the bouncer's protocols, then Sygnal.
        sides = {
            n: [
                *(
                    (protocol, requests_for(f"apns-{n}", tenants, ""))
                    if protocol == "zulip"
                    else (protocol, workloads.matrix_notify(bodies[n]))
                    for protocol in args.peer_protocols
                ),
                ("Sygnal", workloads.matrix_notify(bodies[n], url)),
            ]
            for n in PEER_SHAPES
        }

        def warm_up() -> None:
            # Connections, provider tokens and each side's caches first, on every side.
            for _, requests in sides[1]:
                measure(s, "warm-up", requests, concurrency=4, seconds=2)

        warm_up()
        out.append(
            f"`{' '.join(['bench/run.py', *sys.argv[1:]])}`: E2EE notify to 1 or 10 APNs "
            "devices per request (bouncer, Zulip's protocol), the push gateway's notify with "
            "1 or 10 APNs pushkeys (bouncer's /_matrix/push/v1/notify, configured by "
            "MATRIX_APPS_FILE with Sygnal's `apps:` entry; and Sygnal: the same request "
            "bodies in the same order); measured here: "
            + "".join(f"bouncer ({protocol}), " for protocol in args.peer_protocols)
            + f"Sygnal; closed loop, {args.seconds:g} s per point, the fake "
            f"APNs answering after {args.apns_latency} ms; medians of {args.runs} run(s), "
            "errors summed over them; the client gives up after 15 s, as a Zulip server does. "
            "Notifications counted at the fake APNs. CPU per notification: the bouncer's web, "
            "workers, PostgreSQL and Redis; Sygnal's process. "
            f"`manage.py serve --workers {args.web_workers}`; Sygnal as configured by "
            "bench/peers.py (one process, its defaults). Each run after the first starts "
            "with new bouncer and Sygnal processes (same database, Redis and fakes). Sygnal "
            "is measured once per shape and run: with both protocols, its columns are the "
            "same figures in both tables.\n"
        )
        results: dict[tuple[str, int, int], list[tuple[Point, Point]]] = {}
        for run in range(args.runs):
            if run:
                fresh_sides(s, url)
                warm_up()
            for devices in PEER_SHAPES:
                for concurrency in args.peer_concurrency:
                    # Which side goes first alternates between runs: the host's drift
                    # then falls on all of them.
                    order = sides[devices] if run % 2 == 0 else sides[devices][::-1]
                    measured = {
                        label: measure(
                            s,
                            f"{label}-{devices}",
                            requests,
                            concurrency=concurrency,
                            seconds=args.seconds,
                            groups=PEER_GROUPS,
                        )
                        for label, requests in order
                    }
                    busy += [point.machine_busy for point in measured.values()]
                    sygnal = measured.pop("Sygnal")
                    for protocol, bouncer in measured.items():
                        results.setdefault((protocol, devices, concurrency), []).append(
                            (bouncer, sygnal)
                        )
                    progress = [
                        *((f"bouncer ({p})", b, BOUNCER_SIDE) for p, b in measured.items()),
                        ("Sygnal", sygnal, ["Sygnal"]),
                    ]
                    print(
                        f"run {run + 1}/{args.runs}, {devices} x {concurrency}: "
                        + "; ".join(
                            progress_text(name, point, groups) for name, point, groups in progress
                        ),
                        flush=True,
                    )
        tables = []
        if "zulip" in args.peer_protocols:
            tables += ["The bouncer on Zulip's protocol (E2EE notify), Sygnal on Matrix's:\n"]
            tables += [PEER_HEADER]
            tables += [
                peer_row(d, c, pairs) for (p, d, c), pairs in results.items() if p == "zulip"
            ]
        if "matrix" in args.peer_protocols:
            tables += [
                "\nBoth on Matrix's protocol (the same notify bodies to each):\n",
                MATRIX_PEER_HEADER,
            ]
            tables += [
                peer_row(d, c, pairs) for (p, d, c), pairs in results.items() if p == "matrix"
            ]
        tables.append(
            f"\nThe whole machine while measuring: {median(busy):.0%} busy (median of the "
            f"points; {min(busy):.0%} to {max(busy):.0%}).\n"
        )
        out += tables
        print("\n".join(tables), flush=True)


# --- A quiet server among flooding neighbours (--neighbours) ---------------------------------

QUIET_RATE = 5.0  # one-device notifies per second, sent on schedule
FLOOD_SERVERS = 3
FLOOD_DEVICES = 5


@dataclass
class Phase:
    label: str
    quiet_latencies: list[float]
    quiet_errors: Counter[str]
    quiet_sent: int
    flood_seconds: float
    flood_done: int
    flood_latencies: list[float]
    flood_errors: Counter[str]
    flood_delivered: int
    cpu: dict[str, float]
    delivered: int


def _answered_200(done: int, errors: Counter[str]) -> int:
    """Answers that were 200 and rejected nothing: `done` counts every answer, `errors` also
    the non-200 ones and the 200s with rejected pushkeys (labels starting with their status)
    and the requests never answered (exception names)."""
    return done - sum(n for label, n in errors.items() if label[:1].isdigit())


def _drive_quiet(
    s: Stack,
    quiet: Iterator[Request],
    cpus: set[int] | None,
    nice: int,
    count_from: float,
    seconds: float,
    results: "multiprocessing.Queue[Any]",
) -> None:
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    if nice:
        with contextlib.suppress(OSError):  # not allowed: the figures say so (the note)
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    _drive_share(s, quiet, 0, 1, None, QUIET_RATE, seconds, True, results, count_from)


# The quiet server sends this long before each phase is measured (and the flood starts): a
# quiet server is already there, its connection open, when a flood begins. With 0 it starts
# with the flood: a server nobody has seen, connecting in the flood's first burst.
QUIET_LEAD_SECONDS = 3.0


def neighbours_phase(
    s: Stack,
    label: str,
    quiet: Iterator[Request],
    flood: Iterator[Request],
    flood_concurrency: int,
    seconds: float,
    groups: dict[str, list[str]],
    quiet_cpus: set[int] | None = None,
    quiet_nice: int = 0,
    quiet_lead: float = QUIET_LEAD_SECONDS,
) -> Phase:
    """The quiet server's open loop in a process of its own (its send times do not wait on
    the flood's client), beside the flood's closed loop when there is one. The quiet server
    starts `quiet_lead` seconds before the phase; the flood starts with it."""
    time.sleep(0.5)
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[Any] = context.Queue()
    count_from = time.time() + quiet_lead
    child = context.Process(
        target=_drive_quiet,
        args=(s, quiet, quiet_cpus, quiet_nice, count_from, seconds, results),
    )
    child.start()
    time.sleep(max(0.0, count_from - time.time()))
    delivered_before = s.delivered()
    meter = CpuMeter(s, groups)
    flood_result: tuple[int, list[float], Counter[str], float] = (0, [], Counter(), seconds)
    if flood_concurrency:
        flood_result = drive_from_processes(
            s, flood, concurrency=flood_concurrency, rate=None, seconds=seconds, stamp=True
        )
    quiet_done, quiet_latencies, quiet_errors, _ = results.get(timeout=seconds + 120)
    child.join(timeout=30)
    cpu = meter.stop()
    time.sleep(1.5)  # late deliveries land; the fakes write their counts every 0.2 s
    delivered = s.delivered() - delivered_before
    flood_done, flood_latencies, flood_errors, flood_seconds = flood_result
    quiet_ok = _answered_200(quiet_done, quiet_errors)
    return Phase(
        label=label,
        quiet_latencies=quiet_latencies,
        quiet_errors=quiet_errors,
        quiet_sent=quiet_done + sum(n for k, n in quiet_errors.items() if not k[:1].isdigit()),
        flood_seconds=flood_seconds,
        flood_done=flood_done,
        flood_latencies=flood_latencies,
        flood_errors=flood_errors,
        # The fake counts both; the quiet server's one notification per 200 is taken off.
        flood_delivered=max(0, delivered - quiet_ok),
        cpu=cpu,
        delivered=delivered,
    )


def neighbours_row(side: str, phases: list[Phase], server_groups: list[str]) -> str:
    """One phase of one side: each figure the median over the runs, counts summed."""

    def median(figure: Callable[[Phase], float]) -> float:
        return statistics.median(figure(p) for p in phases)

    def cpu_per_notification(p: Phase) -> float:
        server_cpu = sum(p.cpu.get(group, 0.0) for group in server_groups)
        return server_cpu * 1000 / p.delivered if p.delivered else float("nan")

    quiet_errors = sum((p.quiet_errors for p in phases), Counter[str]())
    flood_errors = sum((p.flood_errors for p in phases), Counter[str]())
    quiet = (
        f"{median(lambda p: percentile(p.quiet_latencies, 50)) * 1000:,.0f} | "
        f"{median(lambda p: percentile(p.quiet_latencies, 99)) * 1000:,.0f} | "
        f"{median(lambda p: max(p.quiet_latencies, default=float('nan'))) * 1000:,.0f} | "
        f"{fmt_errors(quiet_errors)} (of {sum(p.quiet_sent for p in phases)})"
    )
    # The machine as a share, not per notification: at 5 notifications a second, whatever
    # else runs on the host would dominate a per-notification figure.
    cpu = (
        f"{median(cpu_per_notification):.2f} | "
        f"{median(lambda p: p.cpu['machine'] / p.cpu['capacity']):.0%}"
    )
    label = phases[0].label
    if not any(p.flood_done or p.flood_errors for p in phases):
        return f"| {side} | {label} | {quiet} | - | - | - | - | {cpu} |"
    unavailable = sum(n for error, n in flood_errors.items() if error.startswith("503"))
    with_retry_after = sum(
        n for error, n in flood_errors.items() if error.startswith("503") and "Retry-After" in error
    )
    flood = (
        f"{median(lambda p: p.flood_done / p.flood_seconds):,.0f} | "
        f"{median(lambda p: p.flood_delivered / p.flood_seconds):,.0f} | "
        f"{median(lambda p: percentile(p.flood_latencies, 99)) * 1000:,.0f} | "
        f"{unavailable} ({with_retry_after} with Retry-After)"
    )
    other = Counter({error: n for error, n in flood_errors.items() if not error.startswith("503")})
    if other:
        flood += f"; other errors: {fmt_errors(other)}"
    return f"| {side} | {label} | {quiet} | {flood} | {cpu} |"


NEIGHBOURS_HEADER = (
    "| server | phase | quiet p50 ms | quiet p99 ms | quiet max ms | quiet errors | "
    "flood req/s | flood notif/s | flood p99 ms | flood 503s | "
    "server CPU ms/notif | machine busy |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


SERVER_ROLES = ["web", "worker", "postgres", "redis", "sygnal"]


def cpu_halves() -> tuple[set[int], set[int]]:
    """--pin: (the servers' CPUs, everything else's)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least two CPUs")
    return {cpus[0]}, set(cpus[1:])


def _threads(s: Stack, roles: list[str]) -> Iterator[int]:
    """Every thread of these roles' processes (affinity and nice are per thread)."""
    for role in roles:
        for pid in s._pids(role):
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    yield int(task.name)


def pin_servers(s: Stack, cpus: set[int]) -> None:
    """The servers' processes onto `cpus` (what they start later inherits it: PostgreSQL's
    backends, the web processes' threads)."""
    for thread in _threads(s, SERVER_ROLES):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(thread, cpus)


FAKE_ROLES = ["apns", "fcm"]
FIRST_NICE = -10


def renice(s: Stack, roles: list[str], nice: int) -> None:
    for thread in _threads(s, roles):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, thread, nice)


def run_neighbours(args: argparse.Namespace, out: list[str]) -> None:
    """One quiet server (5 one-device APNs notifies a second, open loop) alone, then beside
    three servers flooding (closed loop, 5-device requests) at each --neighbours-flood; the
    same against Sygnal with --peer sygnal."""
    started = datetime.datetime.now(datetime.UTC)
    out.append(f"# A quiet server among flooding neighbours, {started:%Y-%m-%d %H:%M} UTC\n")
    out.append(
        f"`{' '.join(['bench/run.py', *sys.argv[1:]])}`: the quiet server sends "
        f"{QUIET_RATE:g} E2EE notifies a second to one APNs device each, on schedule (open "
        f"loop), from {args.neighbours_lead:g} s before each phase (not counted); from the "
        f"phase's start, {FLOOD_SERVERS} other servers send {FLOOD_DEVICES}-APNs-device "
        "notifies in a closed loop; "
        f"{args.neighbours_seconds:g} s per phase; every request stamped "
        "`X-Request-Start` as nginx stamps it; the client gives up after 15 s. Flood "
        "notifications counted at the fake APNs, less the quiet server's. Server CPU per "
        "notification delivered (both senders'): the bouncer's web, workers, PostgreSQL and "
        "Redis, or Sygnal's process; machine busy: the whole host, other users included. "
        f"`manage.py serve --workers {args.web_workers}`.\n"
    )
    if args.pin:
        server_cpus, other_cpus = cpu_halves()
        out.append(
            f"Pinned (`--pin`): the servers and the quiet client on CPU {sorted(server_cpus)}, "
            f"the flood's clients and the fakes on CPUs {sorted(other_cpus)}.\n"
        )
        # Inherited by everything the run starts; the servers are moved once started.
        os.sched_setaffinity(0, other_cpus)
    phases = [("alone", 0)] + [(f"flood at {c} in flight", c) for c in args.neighbours_flood]
    with stack_for(args) as s:
        setup_django(s)
        import workloads

        tenants = workloads.create_tenants(
            servers=1 + FLOOD_SERVERS, e2ee_per_server=600, legacy_users=0
        )
        sides: list[tuple[str, Iterator[Request], Iterator[Request], list[str]]] = [
            (
                "bouncer",
                workloads.e2ee_notify(tenants[:1], 1, kind="apns"),
                workloads.e2ee_notify(tenants[1:], FLOOD_DEVICES, kind="apns"),
                BOUNCER_SIDE,
            )
        ]
        if args.peer == "sygnal":
            url = start_peer(s, args)
            if url is None:
                out.append("Sygnal unavailable here: its side skipped.\n")
            else:
                sides.append(
                    (
                        "Sygnal",
                        workloads.matrix_notify(workloads.matrix_bodies(1), url),
                        workloads.matrix_notify(workloads.matrix_bodies(FLOOD_DEVICES), url),
                        ["Sygnal"],
                    )
                )
        if args.pin:
            pin_servers(s, server_cpus)
        if args.fakes_first:
            renice(s, FAKE_ROLES, FIRST_NICE)
            out.append(
                f"Fakes first (`--fakes-first`): the fakes and the quiet client at nice "
                f"{FIRST_NICE}, the servers and the flood's clients at 0.\n"
            )
        print("\n".join(out), flush=True)
        measured: dict[tuple[str, str], list[Phase]] = {}
        for run in range(args.runs):
            for side, quiet, flood, server_groups in sides:
                measure(s, "warm-up", flood, concurrency=4, seconds=2)
                for label, concurrency in phases:
                    phase = neighbours_phase(
                        s,
                        label,
                        quiet,
                        flood,
                        concurrency,
                        args.neighbours_seconds,
                        PEER_GROUPS,
                        quiet_cpus=server_cpus if args.pin else None,
                        quiet_nice=FIRST_NICE if args.fakes_first else 0,
                        quiet_lead=args.neighbours_lead,
                    )
                    measured.setdefault((side, label), []).append(phase)
                    print(
                        f"run {run + 1}/{args.runs}: "
                        + neighbours_row(side, [phase], server_groups),
                        flush=True,
                    )
        out.append(f"Medians of {args.runs} run(s) (`--runs`), errors and 503s summed over them.\n")
        out.append(NEIGHBOURS_HEADER)
        groups_of = {side: server_groups for side, _, _, server_groups in sides}
        table = [
            neighbours_row(side, phases_run, groups_of[side])
            for (side, _), phases_run in measured.items()
        ]
        out += table
        print("\n".join([out[-len(table) - 2], NEIGHBOURS_HEADER, *table]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workloads",
        nargs="*",
        default=None,
        choices=[*WORKLOADS, "matrix"],
        help="default: all, or none with --peer or --neighbours; matrix: matrix-1 and matrix-10",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16, 64, 128])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--servers", type=int, default=20, help="Zulip servers sending")
    parser.add_argument("--apns-latency", default="20-60")
    parser.add_argument("--fcm-latency", default="30-80")
    parser.add_argument("--workers", type=int, default=1, help="Celery worker processes")
    parser.add_argument("--threads", type=int, default=32, help="threads per worker process")
    parser.add_argument(
        "--pool", default="threads", choices=["threads", "prefork"], help="Celery worker pool"
    )
    parser.add_argument(
        "--web-workers", type=int, default=2, help="web processes (`manage.py serve --workers`)"
    )
    parser.add_argument(
        "--web-threads",
        type=int,
        default=None,
        help="gone: the web server (uvicorn) has no threads per process; accepted and ignored",
    )
    parser.add_argument(
        "--half-load",
        nargs="*",
        default=["e2ee-3"],
        choices=WORKLOADS,
        help="workloads whose latency is measured at half their saturation load "
        "(default e2ee-3; the flag alone: none)",
    )
    parser.add_argument(
        "--overload",
        nargs="*",
        default=["e2ee-3"],
        choices=WORKLOADS,
        help="workloads driven at 4x their saturation concurrency (default e2ee-3; "
        "the flag alone: none)",
    )
    parser.add_argument(
        "--scaling", type=int, nargs="*", default=[], help="web processes to compare, e.g. 1 2 4"
    )
    parser.add_argument("--rows", type=int, nargs="*", default=[], help="e.g. 10000 1000000")
    parser.add_argument(
        "--peer",
        choices=["sygnal"],
        help="also start this peer and drive the same APNs shapes against it, side by side",
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="--peer, --neighbours: medians of this many runs"
    )
    parser.add_argument(
        "--peer-concurrency", type=int, nargs="+", default=[16, 64, 128, 256], help="--peer"
    )
    parser.add_argument(
        "--peer-protocols",
        nargs="+",
        default=["zulip", "matrix"],
        choices=["zulip", "matrix"],
        help="--peer: the bouncer's sides compared with the peer (default both; one table each)",
    )
    parser.add_argument("--sygnal-archive", default=str(peers.SYGNAL_ARCHIVE))
    parser.add_argument(
        "--neighbours",
        action="store_true",
        help="a quiet server's latency alone and beside flooding servers (--peer sygnal: "
        "against Sygnal too)",
    )
    parser.add_argument("--neighbours-seconds", type=float, default=30)
    parser.add_argument(
        "--neighbours-lead",
        type=float,
        default=QUIET_LEAD_SECONDS,
        help="seconds the quiet server sends before each phase, not counted",
    )
    parser.add_argument(
        "--neighbours-flood",
        type=int,
        nargs="+",
        default=[64, 256],
        help="the flood's requests in flight, one phase each",
    )
    parser.add_argument(
        "--fakes-first",
        action="store_true",
        help="--neighbours, --peer: the fakes (and the quiet client) at a higher priority "
        "(nice -10) than the servers and the load generator, so that APNs answers (and the "
        "quiet server's clock) are on time however busy the machine is",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="--neighbours: the servers (and the quiet client) on the first CPU, the flood's "
        "clients and the fakes on the others, as if they ran on machines of their own",
    )
    parser.add_argument("--no-report", action="store_true", help="print only")
    args = parser.parse_args()
    if args.workloads is None:
        args.workloads = [] if args.peer or args.neighbours else WORKLOADS
    args.workloads = [
        name
        for workload in args.workloads
        for name in (["matrix-1", "matrix-10"] if workload == "matrix" else [workload])
    ]
    if args.runs < 1:
        parser.error("--runs wants 1 or more")
    if args.rows and (args.workloads or args.scaling):
        parser.error("--rows runs on its own (it grows the device table)")

    out: list[str] = []
    try:
        if args.neighbours:
            run_neighbours(args, out)
        elif args.peer:
            run_peer(args, out)
        if args.workloads:
            run_main(args, out)
        if args.scaling:
            out += run_scaling(args)
        if args.rows:
            out += run_rows(args)
    finally:
        # Whatever was measured is kept, also when a later part fails.
        if not args.no_report and out:
            results = ROOT / "bench" / "results"
            results.mkdir(exist_ok=True)
            path = results / f"{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}.md"
            path.write_text("\n".join(out) + "\n")
            print(f"\nReport written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
