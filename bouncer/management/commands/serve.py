"""`manage.py serve --bind HOST:PORT [--workers N]`: the production web server.

uvicorn (uvloop, httptools) serving `bouncer.asgi:application`: the notify endpoints run on
each process's event loop, beside the HTTP/2 connections to APNs and FCM; everything else is
Django, in a thread pool of the same process. One process per core (`--workers`); SIGTERM
stops accepting, lets in-flight requests finish (up to GRACEFUL_SECONDS), then exits.
"""

import os
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

# A Zulip server gives up on a request after 15 s; nothing in flight outlives that by much.
GRACEFUL_SECONDS = 20
# Connections waiting in the kernel for the process to accept them.
BACKLOG = 4096


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise CommandError(f"--bind wants HOST:PORT, not {bind!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class Command(BaseCommand):
    help = "Serve the bouncer with its production web server (uvicorn, one process per core)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default=os.environ.get("BOUNCER_BIND", "127.0.0.1:8000"))
        parser.add_argument(
            "--workers",
            type=int,
            default=int(os.environ.get("BOUNCER_WEB_WORKERS", "0")) or os.cpu_count() or 1,
            help="web processes (default: one per core)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = parse_bind(options["bind"])
        workers = max(1, int(options["workers"]))
        if settings.PROMETHEUS_MULTIPROC_DIR:
            os.makedirs(settings.PROMETHEUS_MULTIPROC_DIR, exist_ok=True)
        uvicorn.run(
            "bouncer.asgi:application",
            host=host,
            port=port,
            workers=workers if workers > 1 else None,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            interface="asgi3",
            backlog=BACKLOG,
            timeout_graceful_shutdown=GRACEFUL_SECONDS,
            # One line per request is the access log nginx already writes; the bouncer logs
            # what it did (deliveries, refusals) itself.
            access_log=False,
            server_header=False,
            date_header=False,
            proxy_headers=False,
            log_config=None,
        )
