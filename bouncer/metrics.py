"""Prometheus metrics (interface.md section 5), in multi-process mode (web and Celery processes).

With PROMETHEUS_MULTIPROC_DIR set (deploy/ sets it for every process), each process writes
its samples there and `/metrics` merges them; without it (make run, tests) the process's own
registry is served.
"""

import functools
import platform
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import django
import redis
from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bouncer.health import probe_redis

REQUESTS = Counter(
    "bouncer_http_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"]
)
REQUEST_SECONDS = Histogram(
    "bouncer_http_request_seconds",
    "HTTP request duration by endpoint",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)
NOTIFICATIONS = Counter(
    "bouncer_notifications_total",
    "Device deliveries by provider and outcome",
    ["provider", "outcome"],
)
UPSTREAM_SECONDS = Histogram(
    "bouncer_upstream_latency_seconds",
    "APNs/FCM response time",
    ["provider"],
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10),
)
SHED_REQUESTS = Counter(
    "bouncer_shed_requests_total",
    "Requests answered 503 at once because they waited too long in the queue (overload)",
)
DELIVERY_LOG_ROWS_DROPPED = Counter(
    "bouncer_delivery_log_rows_dropped_total",
    "Delivery log rows dropped: the database unavailable when they were written, or the buffer "
    "full meanwhile",
)
ADMISSION = Counter(
    "bouncer_admission_total",
    "Notify requests admitted at once, after waiting their turn (queued), or refused (shed),"
    " per server (the busiest by id, the rest 'other')",
    ["server", "decision"],
)
ADMITTED_DELIVERIES = Counter(
    "bouncer_admitted_deliveries_total",
    "Deliveries in admitted notify requests, per server (the busiest by name, the rest 'other')",
    ["server"],
)
LEGACY_TOKENS_RETIRED = Counter(
    "bouncer_legacy_tokens_retired_total",
    "Legacy tokens removed because the device moved to E2EE or its server is gone",
    ["reason"],
)


@functools.cache
def _child[M: (Counter, Histogram)](metric: M, *values: str) -> M:
    # labels() takes a lock and builds a key on every call; on the notify path a handful of
    # calls per request add up. The label sets here are small and fixed.
    return metric.labels(*values)


def record_delivery(*, provider: str, outcome: str, latency: float | None) -> None:
    _child(NOTIFICATIONS, provider, outcome).inc()
    if latency is not None:
        _child(UPSTREAM_SECONDS, provider).observe(latency)


def record_request(*, endpoint: str, status: int, seconds: float) -> None:
    _child(REQUESTS, endpoint, str(status)).inc()
    _child(REQUEST_SECONDS, endpoint).observe(seconds)


def record_admission(*, server: str, decision: str, deliveries: int) -> None:
    _child(ADMISSION, server, decision).inc()
    if decision != "shed":
        _child(ADMITTED_DELIVERIES, server).inc(deliveries)


class QueueDepthCollector(Collector):
    """Celery's queue length, read from the broker at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("bouncer_queue_depth", "Tasks waiting in the Celery queue")
        # Readable only when the broker is Redis (a RabbitMQ queue is watched in RabbitMQ).
        if settings.REDIS_URL and settings.REDIS_URL == settings.CELERY_BROKER_URL:
            try:
                gauge.add_metric([], float(probe_redis(settings.REDIS_URL).llen("celery")))
            except redis.RedisError:
                return
            yield gauge


@dataclass(frozen=True)
class CredentialState:
    """One set of provider credentials the bouncer is configured with, and whether it loads."""

    provider: str
    app: str  # "default", or the app id PUSH_APPS_FILE gives its own credentials
    loaded: bool
    problem: str = ""


def _readable(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        return f"cannot read {path} ({e.strerror})"
    return ""


def credential_states() -> list[CredentialState]:
    """Default APNs, each app of PUSH_APPS_FILE, and FCM: configured and readable or not. The
    files are only opened, never shown."""
    from delivery import credentials

    states: list[CredentialState] = []
    try:
        configured = {"default": credentials.default_apns()}
        # The apps file as delivery reads it (parsed once per process, cached there).
        apps = credentials.push_apps()
        configured.update(apps.apns)
    except credentials.CredentialsError as e:
        return [CredentialState(provider="apns", app="default", loaded=False, problem=str(e))]
    for app, creds in configured.items():
        if creds is None:
            states.append(CredentialState("apns", app, loaded=False, problem="not configured"))
            continue
        problem = _readable(creds.key_file or creds.cert_file or "")
        states.append(CredentialState("apns", app, loaded=not problem, problem=problem))
    fcm = credentials.fcm_credentials_file()
    problem = _readable(fcm) if fcm else "not configured"
    states.append(CredentialState("fcm", "default", loaded=not problem, problem=problem))
    for app, account in apps.fcm.items():
        problem = _readable(account.credentials_file)
        states.append(CredentialState("fcm", app, loaded=not problem, problem=problem))
    return states


def _version() -> str:
    try:
        with (settings.BASE_DIR / "pyproject.toml").open("rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


VERSION = _version()


class InventoryCollector(Collector):
    """What the bouncer serves, counted at scrape time: one GROUP BY per table, and the
    credential files opened (not parsed). Without the database, only the build and the
    credentials are reported."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from legacy.models import RemotePushDeviceToken
        from registrations.models import RemotePushDevice, RemoteRealm, RemoteZulipServer

        build = GaugeMetricFamily(
            "bouncer_build_info",
            "The running bouncer's version",
            labels=["version", "python", "django"],
        )
        build.add_metric([VERSION, platform.python_version(), django.get_version()], 1)
        yield build

        loaded = GaugeMetricFamily(
            "bouncer_credentials_loaded",
            "1 when a provider's credentials for an app are configured and readable",
            labels=["provider", "app"],
        )
        for state in credential_states():
            loaded.add_metric([state.provider, state.app], 1 if state.loaded else 0)
        yield loaded

        try:
            servers = GaugeMetricFamily(
                "bouncer_servers", "Registered Zulip servers by state", labels=["state"]
            )
            counts = dict(
                RemoteZulipServer.objects.values_list("deactivated").annotate(n=Count("id"))
            )
            for deactivated, label in ((False, "active"), (True, "deactivated")):
                servers.add_metric([label], counts.get(deactivated, 0))
            realms = GaugeMetricFamily(
                "bouncer_realms", "Realms (organizations) by state", labels=["state"]
            )
            counts = dict(RemoteRealm.objects.values_list("deactivated").annotate(n=Count("id")))
            for deactivated, label in ((False, "active"), (True, "deactivated")):
                realms.add_metric([label], counts.get(deactivated, 0))
            devices = GaugeMetricFamily(
                "bouncer_devices",
                "Registered devices by protocol and kind (E2EE: not expired)",
                labels=["protocol", "kind"],
            )
            e2ee = dict(
                RemotePushDevice.objects.filter(expired_time__isnull=True)
                .values_list("token_kind")
                .annotate(n=Count("device_id"))
            )
            for kind in RemotePushDevice.Kind:
                devices.add_metric(["e2ee", kind.value], e2ee.get(kind.value, 0))
            legacy = dict(RemotePushDeviceToken.objects.values_list("kind").annotate(n=Count("id")))
            for legacy_kind, name in (
                (RemotePushDeviceToken.Kind.APNS, "apns"),
                (RemotePushDeviceToken.Kind.FCM, "fcm"),
            ):
                devices.add_metric(["legacy", name], legacy.get(legacy_kind.value, 0))
        except DatabaseError:
            return
        yield from (servers, realms, devices)


# The bouncer's own endpoints (Zulip's API and the probes) each get their label; anything
# else (the admin, static files, unknown paths) is "other", so that no path a client makes
# up can create a new time series.
_PROBES = frozenset({"health", "ready", "metrics"})


def _endpoint(request: HttpRequest) -> str:
    try:
        route = resolve(request.path_info).route
    except Resolver404:
        return "other"
    if route.startswith("api/v1/remotes/") or route in _PROBES:
        return route
    return "other"


class RequestMetricsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        record_request(
            endpoint=_endpoint(request),
            status=response.status_code,
            seconds=time.perf_counter() - started,
        )
        return response


def _samples_registry() -> CollectorRegistry:
    """This machine's samples: every process's in multi-process mode, else this one's."""
    if settings.PROMETHEUS_MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    body = generate_latest(_samples_registry())
    extra = CollectorRegistry()
    extra.register(InventoryCollector())
    if settings.REDIS_URL:
        extra.register(QueueDepthCollector())
    body += generate_latest(extra)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


def serve_worker_metrics(bind: str) -> None:
    """A worker machine without a web process serves its samples itself (WORKER_METRICS_BIND):
    prometheus-client's own small HTTP server, in a daemon thread."""
    host, _, port = bind.rpartition(":")
    start_http_server(int(port), addr=host or "127.0.0.1", registry=_samples_registry())
