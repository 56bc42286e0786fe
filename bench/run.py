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
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx
from harness import ROOT, Stack, percentile, setup_django, stack
from workloads import Request, Tenant

WORKLOADS = ["e2ee-1", "e2ee-3", "e2ee-10", "legacy-2", "register", "mixed", "floor"]


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
    """A non-200 answer as the report counts it: status and Zulip's error code, if any."""
    try:
        code = response.json().get("code", "")
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
) -> tuple[int, list[float], Counter[str], float]:
    """Closed loop (`concurrency` clients) or open loop (`rate` requests per second).

    `stamp`: each request carries `X-Request-Start` with the time it was sent, as nginx adds
    it in front of the bouncer (deploy/nginx/bouncer.conf), so that load shedding can work.
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
            url = s.web_url + path if path.startswith("/") else base + path
            headers = {"X-Request-Start": f"t={time.time():.3f}"} if stamp else None
            try:
                response = await client.request(
                    method, url, auth=auth, json=body, data=form, headers=headers
                )
            except httpx.HTTPError as e:
                errors[type(e).__name__] += 1
                return
            finally:
                idle.append(client)
            latencies.append(time.perf_counter() - started)
            done += 1
            if response.status_code != 200:
                errors[error_label(response)] += 1

        started = time.perf_counter()
        deadline = started + seconds
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
        elapsed = time.perf_counter() - started
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
) -> None:
    # Every process forked the same request stream; each takes every shares-th request, so
    # no two send the same one (a sealed registration stays a new device).
    mine = itertools.islice(requests, share, None, shares)
    results.put(
        asyncio.run(
            drive(s, mine, concurrency=concurrency, rate=rate, seconds=seconds, stamp=stamp)
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
) -> Point:
    time.sleep(0.5)  # whatever came before (a raw-limit run) has been counted
    delivered_before = s.delivered()
    meter = CpuMeter(s)
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

    def __init__(self, s: Stack) -> None:
        self.s = s
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
            for group, roles in CPU_GROUPS.items()
        }

    @staticmethod
    def _load_generator() -> float:
        """This process and its client processes (forked, finished and joined by then)."""
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            total += usage.ru_utime + usage.ru_stime
        return total


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # without guest time, which user time already counts
    return total - idle, total


async def _raw_limit(
    s: Stack, tenants: list[Tenant], in_flight: int, seconds: float
) -> tuple[float, dict[str, float]]:
    """Our senders alone, straight to the fakes: the ceiling the bouncer is compared with."""
    from delivery.apns import ApnsMessage, ApnsSender
    from delivery.fcm import FcmMessage, FcmSender

    apns, fcm = ApnsSender(), FcmSender()
    tokens = [t for tenant in tenants for t in tenant.e2ee_tokens]
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
                    ApnsMessage(
                        token=token,
                        app_id="org.zulip.Zulip",
                        payload=payload,
                        priority=10,
                        push_type="alert",
                        expiration=None,
                    )
                )
            else:
                await fcm.send(
                    FcmMessage(
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
    s: Stack, tenants: list[Tenant], in_flight: int, seconds: float
) -> tuple[float, dict[str, float]]:
    """Notifications per second, and the CPU by group while they were sent."""
    return asyncio.run(_raw_limit(s, tenants, in_flight, seconds))


def requests_for(workload: str, tenants: list[Tenant], public_key: str) -> Iterator[Request]:
    import workloads

    if workload.startswith("e2ee-"):
        return workloads.e2ee_notify(tenants, int(workload.split("-")[1]))
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
    if workload.startswith("e2ee-"):
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
    rest = cpu["machine"] - sum(cpu[group] for group in named)
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
            point.limit, point.limit_cpu = raw_limit(s, tenants, concurrency * devices, seconds / 2)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="*", default=WORKLOADS, choices=WORKLOADS)
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
    parser.add_argument("--no-report", action="store_true", help="print only")
    args = parser.parse_args()
    if args.rows and (args.workloads or args.scaling):
        parser.error("--rows runs on its own (it grows the device table)")

    out: list[str] = []
    try:
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
