"""Fake APNs and FCM on loopback, and settings that point the bouncer at them."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_django.fixtures import Settings

from tests.fakes.apns import FakeApns, SigningKey
from tests.fakes.fcm import FakeFcm, ServiceAccount
from tests.fakes.tls import loopback_tls


@pytest.fixture(scope="session")
def apns_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def fake_apns(apns_key: SigningKey) -> Iterator[FakeApns]:
    fake = FakeApns(keys=[apns_key]).start()
    yield fake
    fake.stop()


@pytest.fixture
def apns_settings(
    settings: Settings, fake_apns: FakeApns, apns_key: SigningKey, tmp_path: Path
) -> dict[str, str]:
    """The bouncer's APNs settings for the fake; also returned as environment variables."""
    key_file = tmp_path / "AuthKey.p8"
    key_file.write_text(apns_key.private_pem)
    env = {
        "APNS_TOKEN_KEY_FILE": str(key_file),
        "APNS_TOKEN_KEY_ID": apns_key.key_id,
        "APNS_TEAM_ID": apns_key.team_id,
        "APNS_ENDPOINT": fake_apns.endpoint,
        "PUSH_CA_FILE": str(loopback_tls().ca_file),
    }
    for name, value in env.items():
        setattr(settings, name, value)
    return env


@pytest.fixture(scope="session")
def service_account() -> ServiceAccount:
    return ServiceAccount.generate()


@pytest.fixture
def fake_fcm(service_account: ServiceAccount) -> Iterator[FakeFcm]:
    fake = FakeFcm(account=service_account).start()
    yield fake
    fake.stop()


@pytest.fixture
def fcm_settings(
    settings: Settings, fake_fcm: FakeFcm, service_account: ServiceAccount, tmp_path: Path
) -> dict[str, str]:
    credentials_file = tmp_path / "service-account.json"
    credentials_file.write_text(service_account.file_content(fake_fcm.token_uri))
    env = {
        "FCM_CREDENTIALS_FILE": str(credentials_file),
        "FCM_ENDPOINT": fake_fcm.endpoint,
        "PUSH_CA_FILE": str(loopback_tls().ca_file),
    }
    for name, value in env.items():
        setattr(settings, name, value)
    return env


@pytest.fixture
def in_process_delivery(settings: Settings) -> None:
    """Deliveries run in the test process, as under `make run` (no broker).

    The relay, senders, claims and outcome channel are the production code; only the hop
    through Redis to a worker process is skipped. Tests that need that hop start a real
    worker (tests/delivery/test_worker.py).
    """
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.REDIS_URL = ""
    settings.NOTIFY_WAIT_SECONDS = 5.0


@pytest.fixture
def upstreams(apns_settings: dict[str, str], fcm_settings: dict[str, str]) -> dict[str, str]:
    return {**apns_settings, **fcm_settings}
