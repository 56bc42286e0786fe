"""`/metrics` as Prometheus scrapes it: bounded labels, the build, and what the bouncer serves."""

import tomllib
from pathlib import Path

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from pytest_django.fixtures import Settings as SettingsWrapper

from legacy.models import RemotePushDeviceToken
from registrations.models import RemoteRealm
from tests.conftest import ZulipServer, add_e2ee_devices, make_server

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape, by name and sorted labels."""
    response = Client().get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def endpoints(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    return {
        dict(labels)["endpoint"]
        for name, labels in samples
        if name == "bouncer_http_requests_total"
    }


def test_only_the_bouncers_own_endpoints_get_their_own_label(
    admin_client: Client, zulip_server: ZulipServer
) -> None:
    zulip_server.post_form("server/analytics/status", {})
    admin_client.get("/admin/registrations/remotezulipserver/")
    admin_client.get("/admin/nothing/")
    Client().get("/made-up-path-1")
    Client().get("/static/made-up.css")
    labels = endpoints(scrape())
    assert "other" in labels
    assert "api/v1/remotes/server/analytics/status" in labels
    # Every label is an API route or a probe: no admin page, no path a client invented.
    assert all(
        label == "other"
        or label.startswith("api/v1/remotes/")
        or label in {"health", "ready", "metrics"}
        for label in labels
    ), labels
    assert not any("admin" in label or "made-up" in label for label in labels), labels


def test_the_build_is_reported_with_the_projects_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    builds = [labels for name, labels in scrape() if name == "bouncer_build_info"]
    assert len(builds) == 1
    assert dict(builds[0])["version"] == version


def test_servers_realms_and_devices_are_counted_at_scrape_time(
    zulip_server: ZulipServer, realm: RemoteRealm
) -> None:
    before = scrape()
    make_server(deactivated=True)
    add_e2ee_devices(realm, ["aa" * 32, "bb" * 32])
    RemotePushDeviceToken.objects.create(
        server=zulip_server.row, user_id=1, kind=RemotePushDeviceToken.Kind.FCM, token="t" * 40
    )
    after = scrape()

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before[key]

    assert grew("bouncer_servers", state="deactivated") == 1
    assert grew("bouncer_servers", state="active") == 0
    assert after[("bouncer_realms", (("state", "active"),))] >= 1
    assert grew("bouncer_devices", protocol="e2ee", kind="apns") == 2
    assert grew("bouncer_devices", protocol="e2ee", kind="fcm") == 0
    assert grew("bouncer_devices", protocol="legacy", kind="fcm") == 1


def test_credentials_loaded_says_which_apps_can_send(
    settings: SettingsWrapper, tmp_path: Path
) -> None:
    key = tmp_path / "AuthKey.p8"
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot shown\n-----END PRIVATE KEY-----\n")
    apps = tmp_path / "apps.json"
    apps.write_text(
        '{"apns": {"com.example.chat": {"cert_file": "%s"}}}' % (tmp_path / "missing.pem")
    )
    settings.APNS_TOKEN_KEY_FILE = str(key)
    settings.APNS_TOKEN_KEY_ID = "ABC1234567"
    settings.APNS_TEAM_ID = "TEAM123456"
    settings.PUSH_APPS_FILE = str(apps)
    settings.FCM_CREDENTIALS_FILE = ""
    samples = scrape()
    loaded = {
        (dict(labels)["provider"], dict(labels)["app"]): value
        for (name, labels), value in samples.items()
        if name == "bouncer_credentials_loaded"
    }
    assert loaded == {
        ("apns", "default"): 1,
        ("apns", "com.example.chat"): 0,  # its certificate cannot be read
        ("fcm", "default"): 0,  # not configured
    }
    body = Client().get("/metrics").content.decode()
    assert "not shown" not in body
