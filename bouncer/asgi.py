"""The web server's application (`manage.py serve`): the hot endpoints on the event loop,
everything else Django in a thread pool.

A notify request is read, authorised, looked up, sent and answered on the process's one
event loop, beside the HTTP/2 connections to APNs and FCM (delivery/relay.py): no thread
hand-off, no Django request handler (which alone costs more CPU than the rest of a one-device
notify). Django keeps everything else (registration, analytics, admin, probes, metrics) as a
WSGI application run by a2wsgi in a pool of threads.
"""

import asyncio
import gc
import logging
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bouncer.settings")
django.setup()

from a2wsgi import WSGIMiddleware  # noqa: E402 - Django must be set up first
from django.conf import settings  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

from bouncer.asgi_io import Endpoint, Receive, Scope, Send  # noqa: E402

logger = logging.getLogger(__name__)

# Django's threads: registration, analytics, admin. The notify path does not use them.
DJANGO_THREADS = 16
# Tracked objects allocated (less those freed) between two collections of the youngest.
GC_YOUNG_THRESHOLD = 50_000


def _hot_routes(django: Endpoint) -> dict[str, Endpoint]:
    from bouncer.endpoints import FORM_ROUTES, ROUTES

    return {**ROUTES, **{path: bind(django) for path, bind in FORM_ROUTES.items()}}


class Application:
    def __init__(self) -> None:
        # a2wsgi types the ASGI messages as TypedDicts; ours are plain mappings, and Django's
        # WSGI handler returns its response object (an iterable of bytes).
        self.django: Endpoint = WSGIMiddleware(  # type: ignore[assignment]
            get_wsgi_application(),  # type: ignore[arg-type]
            workers=DJANGO_THREADS,
        )
        self.routes = _hot_routes(self.django)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.routes.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
            else:
                await self.django(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        from bouncer.asyncdb import close_database
        from bouncer.endpoints import gate
        from delivery import attemptlog
        from delivery.fairness import LagMonitor
        from delivery.relay import attach_relay
        from registrations import lookups

        await receive()  # lifespan.startup
        relay = attach_relay(asyncio.get_running_loop())
        lag = LagMonitor(gate)
        lag.start()
        watcher = asyncio.create_task(lookups.watch_changes())
        # What start-up built (Django, the models, the routes: ~110,000 objects) lives as long
        # as the process. Left to the collector, each full collection walks all of it: rare
        # (one a minute or two under load), but 60-80 ms with the event loop stopped, which
        # delays every request in flight and is enough to move a p99. Frozen: ~5 ms.
        gc.collect()
        gc.freeze()
        # A collection of the youngest objects came every 700 more of them tracked, ~12 a
        # second under a flood, and each walked the notifies waiting for their turn (alive
        # for up to a second or two): the collector took 4.5% of a web process's CPU at 64
        # notifies in flight and 6.7% at 256 (bench/README.md). Almost nothing here is freed
        # only by the collector: at 50,000 it did not run in a minute and a half of flood.
        gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown: in-flight requests have finished
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await lag.stop()
        await relay.aclose()
        await close_database()
        # The delivery log rows this process still buffers.
        await asyncio.to_thread(attemptlog.stop)
        if settings.PROMETHEUS_MULTIPROC_DIR:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
        await send({"type": "lifespan.shutdown.complete"})


application = Application()
