"""Liveness and readiness probes (interface.md section 5)."""

import logging
from functools import cache

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET
from kombu import Connection
from kombu.exceptions import OperationalError

logger = logging.getLogger(__name__)


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@cache
def probe_redis(url: str) -> redis.Redis:
    """A client for quick looks at Redis (/ready, the queue-depth gauge): 2 s at most."""
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def _database_ok() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as e:
        logger.warning("Readiness: database unavailable: %s", e)
        return "database unavailable"
    return None


def _broker_ok() -> str | None:
    if not settings.CELERY_BROKER_URL:
        return None  # tasks run in-process (make run): nothing to reach
    if settings.CELERY_BROKER_URL == settings.REDIS_URL:
        return _redis_ok("broker unavailable")
    try:
        with Connection(settings.CELERY_BROKER_URL, connect_timeout=2) as broker:
            broker.ensure_connection(max_retries=1, timeout=2)
    except (OSError, OperationalError) as e:
        logger.warning("Readiness: broker unavailable: %s", e)
        return "broker unavailable"
    return _redis_ok("redis unavailable")


def _redis_ok(failure: str) -> str | None:
    try:
        probe_redis(settings.REDIS_URL).ping()
    except redis.RedisError as e:
        logger.warning("Readiness: %s: %s", failure, e)
        return failure
    return None


@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    failures = [f for f in (_database_ok(), _broker_ok()) if f]
    if failures:
        return JsonResponse({"status": "unavailable", "failed": failures}, status=503)
    return JsonResponse({"status": "ok"})
