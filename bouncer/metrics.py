"""Prometheus metrics (interface.md section 5), in multi-process mode (web and Celery processes).

With PROMETHEUS_MULTIPROC_DIR set (deploy/ sets it for every process), each process writes
its samples there and `/metrics` merges them; without it (make run, tests) the process's own
registry is served.
"""

import time
from collections.abc import Callable, Iterator

import redis
from django.conf import settings
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
LEGACY_TOKENS_RETIRED = Counter(
    "bouncer_legacy_tokens_retired_total",
    "Legacy tokens removed because the device moved to E2EE or its server is gone",
    ["reason"],
)


def record_delivery(*, provider: str, outcome: str, latency: float | None) -> None:
    NOTIFICATIONS.labels(provider=provider, outcome=outcome).inc()
    if latency is not None:
        UPSTREAM_SECONDS.labels(provider=provider).observe(latency)


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


def _endpoint(request: HttpRequest) -> str:
    try:
        return resolve(request.path_info).route or "other"
    except Resolver404:
        return "unknown"


class RequestMetricsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        endpoint = _endpoint(request)
        REQUESTS.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        REQUEST_SECONDS.labels(endpoint=endpoint).observe(time.perf_counter() - started)
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
    if settings.REDIS_URL:
        extra = CollectorRegistry()
        extra.register(QueueDepthCollector())
        body += generate_latest(extra)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


def serve_worker_metrics(bind: str) -> None:
    """A worker machine without a web process serves its samples itself (WORKER_METRICS_BIND):
    prometheus-client's own small HTTP server, in a daemon thread."""
    host, _, port = bind.rpartition(":")
    start_http_server(int(port), addr=host or "127.0.0.1", registry=_samples_registry())
