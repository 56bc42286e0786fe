"""`manage.py serve --bind HOST:PORT [--workers N]`: the production web server.

uvicorn (uvloop, httptools) serving `bouncer.asgi:application`: the notify endpoints run on
each process's event loop, beside the HTTP/2 connections to APNs and FCM; everything else is
Django, in a thread pool of the same process. One process per core (`--workers`); SIGTERM
stops accepting, lets in-flight requests finish (up to GRACEFUL_SECONDS), then exits.
"""

import contextlib
import os
import shutil
import socket
import sys
import tempfile
from typing import Any, cast

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from delivery.fairness import SiblingSignal

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
        config = uvicorn.Config(
            "bouncer.asgi:application",
            host=host,
            port=port,
            workers=workers,
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
        if workers == 1:
            config.load_app()
            server = uvicorn.Server(config)
            with contextlib.suppress(KeyboardInterrupt):
                server.run()
            if not server.started:
                sys.exit(STARTUP_FAILURE)
            return
        try:
            reuse_port_socket(host, port).close()  # the address is free (or ours to share)
        except OSError as e:
            raise CommandError(f"cannot listen on {options['bind']}: {e}") from None
        # The workers' shared flag for isolating a quiet Zulip server (delivery/fairness.py
        # SiblingSignal): they inherit the environment.
        shared = tempfile.mkdtemp(prefix="bouncer-serve-")
        os.environ[SiblingSignal.ENV] = os.path.join(shared, "isolating")
        try:
            with contextlib.suppress(KeyboardInterrupt):
                # uvicorn's supervisor: restarts a worker that dies or stops answering its pings.
                Multiprocess(config, sockets=[cast(socket.socket, OwnListener(host, port))]).run()
        finally:
            shutil.rmtree(shared, ignore_errors=True)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to the address with SO_REUSEPORT, not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class OwnListener:
    """What the supervisor hands each worker in place of a shared listening socket: in the
    worker it becomes the worker's own socket on the same address (SO_REUSEPORT), so the
    kernel spreads new connections evenly across workers. On one shared socket the worker
    that happened to wake first took most of them: 42 and 22 of a load generator's 64
    keep-alive connections, one process then at its limit while the other idled."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def __reduce__(self) -> tuple[Any, ...]:
        return (reuse_port_socket, (self.host, self.port))
