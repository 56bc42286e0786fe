"""The operator's admin pages in a real browser: Debian's Chromium driven by Playwright, against
the bouncer served on loopback (pytest-django's live server: the project's WSGI application in
a thread), with what each page shows asserted and a screenshot of it kept.

Screenshots go to this run's temporary directory; their paths are printed.
"""

import re
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import Page, expect, sync_playwright
from pytest_django.fixtures import Settings
from pytest_django.live_server_helper import LiveServer

from delivery.models import DeliveryAttempt
from registrations import keys, services
from registrations.models import RemoteZulipServer
from tests.browser.conftest import SCREENSHOTS
from tests.conftest import ZulipServer, add_e2ee_devices, make_server

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Chromium missing: make test installs it (apt chromium)"
    ),
]


def log_attempts(server_id: int, outcome: str, reason: str, count: int, **fields: object) -> None:
    DeliveryAttempt.objects.bulk_create(
        DeliveryAttempt(
            batch_id=uuid.uuid4(),
            server_id=server_id,
            device_id=100 + i,
            protocol="e2ee",
            provider=str(fields.get("provider", "apns")),
            app_id=str(fields.get("app_id", "org.zulip.Zulip")),
            outcome=outcome,
            upstream_status=fields.get("status"),  # type: ignore[misc]
            reason=reason,
            latency_ms=40,
            created=timezone.now() - timedelta(minutes=5 + i),
        )
        for i in range(count)
    )


@pytest.fixture
def operator_data(transactional_db: None, settings: Settings, tmp_path: Path) -> ZulipServer:
    """Two servers' worth of deliveries, one silent server, a key, devices, APNs and FCM
    credentials (files the overview only opens): what an operator sees on a working day."""
    for name in ("AuthKey.p8", "service-account.json"):
        (tmp_path / name).write_text("not read by the overview")
    settings.APNS_TOKEN_KEY_FILE = str(tmp_path / "AuthKey.p8")
    settings.APNS_TOKEN_KEY_ID = "ABC123DEFG"
    settings.APNS_TEAM_ID = "TEAM123456"
    settings.FCM_CREDENTIALS_FILE = str(tmp_path / "service-account.json")
    busy = make_server(hostname="chat.example.org")
    realm = busy.add_realm()
    add_e2ee_devices(realm, [secrets.token_hex(32) for _ in range(4)])
    other = make_server(hostname="other.example.org")
    quiet = make_server(hostname="quiet.example.org")
    RemoteZulipServer.objects.filter(pk=quiet.row.pk).update(
        last_request_datetime=timezone.now() - timedelta(days=4)
    )
    RemoteZulipServer.objects.filter(pk__in=[busy.row.pk, other.row.pk]).update(
        last_request_datetime=timezone.now()
    )
    keys.generate_key()
    log_attempts(busy.row.pk, "delivered", "", 12, status=200)
    log_attempts(busy.row.pk, "token_dead", "Unregistered", 2, status=410)
    log_attempts(busy.row.pk, "retry", "ServiceUnavailable", 3, status=503)
    log_attempts(busy.row.pk, "delivered", "", 5, provider="fcm", app_id="", status=200)
    log_attempts(other.row.pk, "config_fault", "InvalidProviderToken", 1, status=403)
    services.deactivate_server(server=other.row)
    get_user_model().objects.create_superuser("operator", "", "a-test-password")
    return busy


@contextmanager
def logged_in_page(live_server: LiveServer) -> Iterator[Page]:
    with sync_playwright() as playwright:
        # Debian's Chromium; running as root in a container needs --no-sandbox.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{live_server.url}/admin/login/?next=/admin/")
            page.fill("#id_username", "operator")
            page.fill("#id_password", "a-test-password")
            page.click('input[type="submit"]')
            expect(page.locator("#site-name")).to_be_visible()
            yield page
        finally:
            browser.close()


def screenshot(page: Page, directory: Path, name: str) -> Path:
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SCREENSHOTS.append(path)
    return path


@pytest.fixture
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def test_the_overview_shows_deliveries_failures_silent_servers_keys_and_credentials(
    live_server: LiveServer, operator_data: ZulipServer, shots: Path
) -> None:
    with logged_in_page(live_server) as page:
        page.click("#overview-link a")
        expect(page).to_have_url(re.compile(r"/admin/overview/$"))
        apns = page.locator('tr.app-row[data-provider="apns"][data-app="org.zulip.Zulip"]')
        expect(apns.locator('[data-window="hour"][data-outcome="delivered"]')).to_have_text("12")
        expect(apns.locator('[data-window="day"][data-outcome="retry"]')).to_have_text("3")
        expect(apns.locator('[data-window="day"][data-outcome="token_dead"]')).to_have_text("2")
        fcm = page.locator('tr.app-row[data-provider="fcm"]')
        expect(fcm.locator('[data-window="day"][data-outcome="delivered"]')).to_have_text("5")
        expect(apns.locator("svg.sparkline polyline")).to_have_count(1)
        failures = page.locator("#failures")
        expect(failures).to_contain_text("ServiceUnavailable")
        expect(failures).to_contain_text("InvalidProviderToken")
        silent = page.locator("#silent-servers")
        expect(silent).to_contain_text("quiet.example.org")
        expect(silent).not_to_contain_text("chat.example.org")
        expect(page.locator("#keys")).to_contain_text("active")
        for provider in ("apns", "fcm"):
            credential = page.locator(f'tr.credential[data-provider="{provider}"]')
            expect(credential).to_contain_text("yes")
        path = screenshot(page, shots, "overview")
    assert path.stat().st_size > 10_000


def test_a_servers_page_links_to_its_records_and_failures(
    live_server: LiveServer, operator_data: ZulipServer, shots: Path
) -> None:
    with logged_in_page(live_server) as page:
        page.goto(f"{live_server.url}/admin/registrations/remotezulipserver/")
        listing = page.locator("#result_list")
        expect(listing).to_contain_text("chat.example.org")
        row = listing.locator("tr", has_text="other.example.org")
        expect(row.locator("td.field-status")).to_contain_text("deactivated")
        expect(
            listing.locator("tr", has_text="chat.example.org").locator("td.field-status")
        ).to_have_text("active")
        page.click("text=chat.example.org")
        related = page.locator(".field-related")
        expect(related).to_contain_text("1 realm")
        expect(related).to_contain_text("4 E2EE devices")
        expect(related).to_contain_text("3 failed deliveries in the last day")
        expect(page.locator(".field-deactivated")).to_have_count(0)  # said by "status"
        screenshot(page, shots, "server")
        related.locator("a", has_text="failed deliveries").click()
        rows = page.locator("#result_list tbody tr")
        expect(rows).to_have_count(3)
        expect(page.locator("#result_list")).to_contain_text("ServiceUnavailable")


def test_the_delivery_attempts_list_filters_by_server(
    live_server: LiveServer, operator_data: ZulipServer, shots: Path
) -> None:
    with logged_in_page(live_server) as page:
        page.goto(f"{live_server.url}/admin/delivery/deliveryattempt/")
        table = page.locator("#result_list")
        expect(table).to_contain_text("chat.example.org")
        expect(table).to_contain_text("other.example.org")
        # The server filter in the sidebar (Django's filters are links in a <details>).
        page.locator("#changelist-filter a", has_text="other.example.org").click()
        expect(page.locator("#result_list tbody tr")).to_have_count(1)
        expect(page.locator("#result_list")).to_contain_text("InvalidProviderToken")
        expect(page.locator("#result_list")).not_to_contain_text("chat.example.org")
        # Hostnames link to the server's page.
        page.locator("#result_list a", has_text="other.example.org").click()
        expect(page.locator(".field-status")).to_contain_text("deactivated")
        screenshot(page, shots, "delivery-attempts-to-server")
