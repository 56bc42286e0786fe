"""As tests/registrations: fresh per-address rate-limit windows for every test."""

import pytest

from tests.registrations.conftest import clear_address_windows


@pytest.fixture(autouse=True)
def fresh_address_rate_limits() -> None:
    clear_address_windows()
