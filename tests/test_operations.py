"""Operational surface: probes and start-up checks."""

import os
import subprocess
import sys

import pytest
from django.test import Client
from pytest_django.fixtures import Settings as SettingsWrapper

from tests.services import free_port


def test_health_answers_while_the_process_is_up() -> None:
    response = Client().get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_ready_answers_200_when_database_and_broker_answer() -> None:
    response = Client().get("/ready")
    assert response.status_code == 200, response.content


@pytest.mark.django_db
def test_ready_names_the_broker_when_it_cannot_be_reached(settings: SettingsWrapper) -> None:
    settings.REDIS_URL = settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"
    response = Client().get("/ready")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "failed": ["broker unavailable"]}


@pytest.mark.django_db
def test_ready_checks_a_rabbitmq_broker_and_redis_apart(settings: SettingsWrapper) -> None:
    settings.CELERY_BROKER_URL = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    response = Client().get("/ready")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "failed": ["broker unavailable"]}


def test_a_rabbitmq_broker_without_redis_fails_the_start_up_checks() -> None:
    env = dict(os.environ, CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:5672//")
    env.pop("REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "bouncer.E005" in result.stderr
    env["REDIS_URL"] = os.environ["CELERY_BROKER_URL"]
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_a_malformed_key_encryption_key_fails_the_start_up_checks() -> None:
    env = dict(os.environ, BOUNCER_KEY_ENCRYPTION_KEY="not-a-key")
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "bouncer.E001" in result.stderr
    assert "not-a-key" not in result.stderr + result.stdout


@pytest.mark.django_db
def test_metrics_count_requests_and_deliveries_in_prometheus_format() -> None:
    from bouncer.metrics import record_delivery

    Client().get("/health")
    record_delivery(provider="apns", outcome="delivered", latency=0.04)
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert 'bouncer_http_requests_total{endpoint="health",status="200"}' in text
    assert 'bouncer_notifications_total{outcome="delivered",provider="apns"}' in text
    assert "bouncer_upstream_latency_seconds_bucket" in text
    assert "bouncer_queue_depth" in text
