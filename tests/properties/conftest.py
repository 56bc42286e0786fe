"""The property suite's harness: hypothesis profiles, the invariant, and the examples count.

The invariant, for every request: the answer is 2xx or 4xx, never 5xx, in Zulip's envelope
(`{"result", "msg"}`, plus `"code"` on errors); and a refused (4xx) request changed no row.
The one column a refused request may change is a server's or realm's
`last_request_datetime`: authentication records the time of an authenticated server's
request before its parameters are parsed, as Zulip does.

Profiles: the normal suite runs PROPERTY_EXAMPLES examples per endpoint, derandomized (the
same examples on every run, so CI is stable) and without hypothesis's example database.
`make fuzz` sets BOUNCER_FUZZ_EXAMPLES, which raises the number and draws new random
examples on each run.
"""

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from _pytest.terminal import TerminalReporter
from django.db.models import Model
from django.test import Client
from hypothesis import HealthCheck
from hypothesis.configuration import set_hypothesis_home_dir
from pytest_django.fixtures import Settings

from legacy.models import RemotePushDeviceToken
from registrations.models import (
    AuditLog,
    BouncerKeyPair,
    RemotePushDevice,
    RemoteRealm,
    RemoteZulipServer,
)
from tests.conftest import API
from tests.properties.strategies import Request
from tests.registrations.conftest import clear_address_windows

# Hypothesis keeps caches (constants, Unicode tables) where its example database would be:
# outside the checkout, so that running the suite leaves nothing in it, and in the same place
# on every run, since rebuilding the Unicode tables costs half a minute.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "bouncer-hypothesis")

PROPERTY_EXAMPLES = 200
FUZZ_EXAMPLES = int(os.environ.get("BOUNCER_FUZZ_EXAMPLES") or 0)

hypothesis.settings.register_profile(
    "bouncer-properties",
    max_examples=FUZZ_EXAMPLES or PROPERTY_EXAMPLES,
    derandomize=not FUZZ_EXAMPLES,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
hypothesis.settings.load_profile("bouncer-properties")

TRIED: Counter[str] = Counter()
ACCEPTED: Counter[str] = Counter()
SERVER_ERRORS: Counter[str] = Counter()

# What each table holds, for the before/after comparison (request times excluded, see above).
SNAPSHOT_EXCLUDED = {"last_request_datetime"}
TABLES: list[type[Model]] = [
    RemoteZulipServer,
    RemoteRealm,
    RemotePushDevice,
    RemotePushDeviceToken,
    AuditLog,
    BouncerKeyPair,
]


def snapshot() -> dict[str, list[tuple[Any, ...]]]:
    rows = {}
    for model in TABLES:
        names = [f.attname for f in model._meta.concrete_fields if f.name not in SNAPSHOT_EXCLUDED]
        rows[model.__name__] = list(model._default_manager.order_by("pk").values_list(*names))
    return rows


def send(endpoint: str, request: Request, *, auth: str | None = None) -> Any:
    extra: dict[str, Any] = {}
    if auth is not None:
        extra["HTTP_AUTHORIZATION"] = auth
    path = API + endpoint + (f"?{request.query}" if request.query else "")
    kwargs: dict[str, Any] = {"data": request.body}
    if request.content_type is not None:
        kwargs["content_type"] = request.content_type
    return Client().generic(request.method, path, **kwargs, **extra)


def check(endpoint: str, response: Any, before: dict[str, Any]) -> None:
    """The invariant; counts the example (and a server error, before failing on it)."""
    TRIED[endpoint] += 1
    if response.status_code >= 500:
        SERVER_ERRORS[endpoint] += 1
    assert response.status_code < 500, response.content[:2000]
    assert 200 <= response.status_code < 300 or 400 <= response.status_code < 500
    body = json.loads(response.content)
    assert isinstance(body, dict)
    assert isinstance(body.get("msg"), str)
    if response.status_code >= 400:
        assert body["result"] == "error"
        assert isinstance(body.get("code"), str)
        assert snapshot() == before, f"a refused request changed rows: {response.content!r}"
    else:
        assert response.status_code == 200
        assert body["result"] == "success"
        ACCEPTED[endpoint] += 1


@pytest.fixture(autouse=True)
def unlimited(settings: Settings) -> Iterator[None]:
    """Rate limits out of the way: every example should reach the code under test."""
    settings.BOUNCER_RATE_LIMIT = (10**9, 60)
    settings.BOUNCER_ANONYMOUS_RATE_LIMIT = (10**9, 60)
    settings.BOUNCER_VERIFY_RATE_LIMIT = (10**9, 60)
    settings.BOUNCER_AUTH_FAILURE_RATE_LIMIT = (10**9, 60)
    clear_address_windows()
    yield
    clear_address_windows()


# The server (and its realm) every example talks as: fixed, so that the strategies naming them
# are built once per module, not per example.
SERVER_UUID = "8a0a6d26-4b5e-4c55-9f4a-0c1f7b2b9e11"
SERVER_KEY = "f" * 64
SERVER_HOSTNAME = "zulip.properties.example.net"
REALM_UUID = "1d1bd0f8-2f0c-4d6e-8f9b-77a5b0c1d2e3"


@pytest.fixture
def known_server(db: None) -> RemoteZulipServer:
    server = RemoteZulipServer(
        uuid=SERVER_UUID,
        hostname=SERVER_HOSTNAME,
        contact_email="admin@zulip.properties.example.net",
        last_api_feature_level=483,
    )
    server.set_api_key(SERVER_KEY)
    server.save()
    RemoteRealm.objects.create(server=server, uuid=REALM_UUID, remote_id=2, host="chat.example.net")
    return server


def reactivate(server: RemoteZulipServer) -> None:
    """Undo an example's successful deactivation, so that the next one reaches the endpoint."""
    RemoteZulipServer.objects.filter(pk=server.pk).update(deactivated=False, deactivated_at=None)


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if not TRIED:
        return
    terminalreporter.section("property examples")
    for endpoint in sorted(TRIED):
        terminalreporter.write_line(
            f"{endpoint:34} {TRIED[endpoint]:6d} examples "
            f"({ACCEPTED[endpoint]} accepted, {TRIED[endpoint] - ACCEPTED[endpoint]} refused), "
            f"{SERVER_ERRORS[endpoint]} server errors"
        )
