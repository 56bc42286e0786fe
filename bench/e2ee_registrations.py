"""Sealed-box E2EE registrations per second: the crypto limit, then end to end over HTTP.

    .venv/bin/python bench/e2ee_registrations.py [--requests 3000] [--concurrency 16 64] [--runs 3]

Starts PostgreSQL, Redis and gunicorn (deploy/gunicorn.conf.py) itself; the load generator
is this process (asyncio + httpx), sending pre-sealed registrations as a Zulip server would.
"""

import argparse
import asyncio
import secrets
import statistics
import time
import uuid
from typing import Any

import httpx
from harness import percentile, setup_django, stack


def crypto_limit(seconds: float = 2.0) -> float:
    from nacl.public import PrivateKey, SealedBox

    from registrations.sealing import seal_registration

    private = PrivateKey.generate()
    public = __import__("base64").b64encode(bytes(private.public_key)).decode()
    sealed = __import__("base64").b64decode(
        seal_registration(
            {
                "token": "ab" * 32,
                "token_kind": "apns",
                "ios_app_id": "org.zulip.Zulip",
                "timestamp": int(time.time()),
            },
            public,
        )
    )
    box = SealedBox(private)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        box.decrypt(sealed)
        count += 1
    return count / (time.perf_counter() - started)


async def drive(
    url: str, auth: tuple[str, str], forms: list[dict[str, str]], concurrency: int
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    for form in forms:
        queue.put_nowait(form)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30, auth=auth) as client:

        async def one_client() -> None:
            nonlocal errors
            while not queue.empty():
                form = queue.get_nowait()
                started = time.perf_counter()
                response = await client.post(url, data=form)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "per_second": len(forms) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--web-workers", type=int, default=2)
    args = parser.parse_args()

    limits = [crypto_limit() for _ in range(3)]
    print(f"crypto limit: {statistics.median(limits):,.0f} sealed-box decryptions/s on one core")

    with stack(with_worker=False, web_workers=args.web_workers, web_threads=8) as s:
        setup_django(s)
        from registrations import keys, sealing
        from registrations.models import RemoteRealm, RemoteZulipServer

        server_key = secrets.token_hex(32)
        server = RemoteZulipServer(uuid=uuid.uuid4(), hostname="bench.example.org")
        server.set_api_key(server_key)
        server.save()
        realm = RemoteRealm.objects.create(server=server, uuid=uuid.uuid4(), remote_id=2)
        public = keys.generate_key().public_key
        url = f"{s.web_url}/api/v1/remotes/push/e2ee/register"
        for concurrency in args.concurrency:
            results = []
            for run in range(args.runs):
                forms = []
                for _ in range(args.requests):
                    token = secrets.token_hex(32)
                    payload = {
                        "token": token,
                        "token_kind": "apns",
                        "ios_app_id": "org.zulip.Zulip",
                        "timestamp": int(time.time()),
                    }
                    forms.append(
                        {
                            "realm_uuid": str(realm.uuid),
                            "token_id": sealing.token_id_b64(sealing.token_id_int(token)),
                            "encrypted_push_registration": sealing.seal_registration(
                                payload, public
                            ),
                            "bouncer_public_key": public,
                        }
                    )
                results.append(
                    asyncio.run(drive(url, (str(server.uuid), server_key), forms, concurrency))
                )
                r = results[-1]
                print(
                    f"  run {run + 1} c={concurrency}: {r['per_second']:,.0f}/s "
                    f"p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms errors {r['errors']}"
                )
            print(
                f"E2EE registrations over HTTP, concurrency {concurrency}: "
                f"median {statistics.median(r['per_second'] for r in results):,.0f}/s, "
                f"p50 {statistics.median(r['p50_ms'] for r in results):.1f} ms, "
                f"p99 {statistics.median(r['p99_ms'] for r in results):.1f} ms, "
                f"errors {sum(r['errors'] for r in results)}"
            )


if __name__ == "__main__":
    main()
