"""Notifications per second through the whole path: HTTP -> Celery -> fake APNs.

    .venv/bin/python bench/e2ee_notify.py [--devices 3] [--concurrency 16 64] [--seconds 15]

Each request is an E2EE notify for `--devices` APNs devices, as a Zulip server sends it;
the fake APNs (TLS HTTP/2, JWT verified) answers after --latency-ms. The limit is measured
in the same run: aioapns (our sender) straight to the same fake, same latency, with the
same number of notifications in flight.
"""

import argparse
import asyncio
import secrets
import statistics
import time
import uuid
from typing import Any

import httpx
from harness import Stack, delivered_at_fake, percentile, setup_django, stack


async def drive(
    s: Stack, auth: tuple[str, str], bodies: list[dict[str, Any]], concurrency: int, seconds: float
) -> dict[str, Any]:
    url = f"{s.web_url}/api/v1/remotes/push/e2ee/notify"
    latencies: list[float] = []
    sent = errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30, auth=auth) as client:

        async def one_client(n: int) -> None:
            nonlocal sent, errors
            i = n
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.post(url, json=bodies[i % len(bodies)])
                latencies.append(time.perf_counter() - started)
                i += concurrency
                if response.status_code != 200:
                    errors += 1
                else:
                    sent += response.json()["apple_successfully_sent_count"]

        before = delivered_at_fake(s)
        started = time.perf_counter()
        await asyncio.gather(*(one_client(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
    await asyncio.sleep(1.5)  # the fake writes its count every second
    delivered = delivered_at_fake(s) - before
    return {
        "reported_per_second": sent / elapsed,
        "delivered_per_second": delivered / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
    }


async def raw_limit(s: Stack, tokens: list[str], in_flight: int, seconds: float) -> float:
    """Our APNs sender alone, straight to the same fake: the ceiling for the bouncer."""
    from delivery.apns import ApnsMessage, ApnsSender

    sender = ApnsSender()
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop(n: int) -> None:
        nonlocal done
        i = n
        while time.perf_counter() < deadline:
            await sender.send(
                ApnsMessage(
                    token=tokens[i % len(tokens)],
                    app_id="org.zulip.Zulip",
                    payload={"push_key_id": 1, "encrypted_data": "abc"},
                    priority=10,
                    push_type="alert",
                    expiration=None,
                )
            )
            done += 1
            i += in_flight

    started = time.perf_counter()
    await asyncio.gather(*(loop(n) for n in range(in_flight)))
    rate = done / (time.perf_counter() - started)
    await sender.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-ms", default="40-40")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with stack(apns_latency_ms=args.latency_ms, celery_processes=args.workers) as s:
        setup_django(s)
        from registrations import sealing
        from registrations.models import RemoteRealm, RemoteZulipServer
        from tests.conftest import add_e2ee_devices

        key = secrets.token_hex(32)
        server = RemoteZulipServer(uuid=uuid.uuid4(), hostname="bench.example.org")
        server.set_api_key(key)
        server.save()
        realm = RemoteRealm.objects.create(server=server, uuid=uuid.uuid4(), remote_id=2)
        tokens = [secrets.token_hex(32) for _ in range(3000)]
        add_e2ee_devices(realm, tokens)
        bodies = [
            {
                "realm_uuid": str(realm.uuid),
                "push_requests": [
                    {
                        "token_id": sealing.token_id_b64(sealing.token_id_int(t)),
                        "http_headers": {"apns_priority": 10, "apns_push_type": "alert"},
                        "payload": {"push_key_id": 1, "encrypted_data": "x" * 200},
                    }
                    for t in tokens[i : i + args.devices]
                ],
            }
            for i in range(0, len(tokens) - args.devices, args.devices)
        ]
        auth = (str(server.uuid), key)
        asyncio.run(drive(s, auth, bodies, 4, 2))  # warm up connections
        for concurrency in args.concurrency:
            runs = [
                asyncio.run(drive(s, auth, bodies, concurrency, args.seconds))
                for _ in range(args.runs)
            ]
            limit = [
                asyncio.run(raw_limit(s, tokens, concurrency * args.devices, args.seconds / 2))
                for _ in range(args.runs)
            ]
            delivered = statistics.median(r["delivered_per_second"] for r in runs)
            reported = statistics.median(r["reported_per_second"] for r in runs)
            print(
                f"{args.devices} devices/request, {concurrency} requests in flight, "
                f"APNs latency {args.latency_ms} ms, {args.workers} worker process(es): "
                f"delivered {delivered:,.0f}/s (answered as sent {reported:,.0f}/s), "
                f"notify p50 {statistics.median(r['p50_ms'] for r in runs):.0f} ms "
                f"p99 {statistics.median(r['p99_ms'] for r in runs):.0f} ms, "
                f"errors {sum(r['errors'] for r in runs)}; "
                f"raw sender limit {statistics.median(limit):,.0f}/s "
                f"-> {delivered / statistics.median(limit):.0%} of the limit"
            )
        print("CPU seconds:", {k: round(v, 1) for k, v in s.cpu_seconds().items()})


if __name__ == "__main__":
    main()
