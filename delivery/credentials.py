"""Where the APNs and FCM credentials come from, checked at start.

The common case uses Zulip's setting names (APNS_TOKEN_KEY_FILE + APNS_TOKEN_KEY_ID +
APNS_TEAM_ID, or APNS_CERT_FILE; FCM_CREDENTIALS_FILE). Several iOS apps, each with its own
key or certificate and environment, and further Firebase projects, are described in
PUSH_APPS_FILE, a JSON file:

    {"apns": {
        "org.zulip.Zulip":   {"token_key_file": "/etc/bouncer/AuthKey_ABC.p8",
                              "key_id": "ABC1234567", "team_id": "TEAM123456"},
        "com.example.chat":  {"cert_file": "/etc/bouncer/example.pem", "sandbox": true}
     },
     "fcm": {
        "com.example.android": {"service_account_file": "/etc/bouncer/example-fcm.json"}
    }}

An iOS app listed there uses its own entry; any other app uses the settings' credentials. A
VoIP app id (`<bundle>.voip`, PushKit's topic) not listed itself uses its bundle's entry.
Each entry may also set "endpoint" (otherwise, for sandbox apps APNS_SANDBOX_ENDPOINT, then
APNS_ENDPOINT, or Apple's host for its environment), and "either_environment": true when the
app's tokens may come from both environments (a token its own environment calls
BadDeviceToken is then tried in the other before it counts as dead).

An "fcm" entry is one Firebase project's service account ("project_id" optional: the
account's own; "endpoint" optional: FCM_ENDPOINT). Zulip's protocols name no Android app (a
Zulip server sends no app id for FCM tokens), so Zulip's Android devices always use
FCM_CREDENTIALS_FILE; an "fcm" entry serves the deliveries whose app id names it (a Matrix
`type: gcm` app refers to one with `fcm_app`).

A protocol app with apps of its own (Matrix: MATRIX_APPS_FILE) registers a resolver for a
prefix of the delivery's app id (`register_resolver`); an app id with that prefix is that
resolver's alone, and never falls back to the settings' credentials.
"""

import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings

from delivery.types import VOIP_SUFFIX

APNS_PRODUCTION = "https://api.push.apple.com"
APNS_SANDBOX = "https://api.sandbox.push.apple.com"


@dataclass(frozen=True)
class ApnsCredentials:
    """One APNs identity: a .p8 token key or a certificate, an environment, an endpoint."""

    name: str  # "default" or the app id it was configured for; appears in logs
    endpoint: str
    key_file: str | None = None
    key_id: str | None = None
    team_id: str | None = None
    cert_file: str | None = None
    # The other environment's origin, for an app whose tokens may come from either
    # (development and distribution builds of one bundle id); None: one environment only.
    other_endpoint: str | None = None

    @property
    def uses_token(self) -> bool:
        return self.key_file is not None

    def in_other_environment(self) -> "ApnsCredentials":
        """The same identity, sent to the other environment (which in turn names this one)."""
        assert self.other_endpoint is not None
        return replace(self, endpoint=self.other_endpoint, other_endpoint=self.endpoint)


@dataclass(frozen=True)
class FcmAccount:
    """One FCM project's service account, for an app that is not the settings' project."""

    name: str  # the app it was configured for; appears in logs
    credentials_file: str  # empty: none configured (deliveries are configuration faults)
    project_id: str | None = None  # otherwise the service account's own
    endpoint: str | None = None  # otherwise FCM_ENDPOINT


class CredentialsError(Exception):
    pass


ApnsResolver = Callable[[str], ApnsCredentials | None]
FcmResolver = Callable[[str], FcmAccount]
_apns_resolvers: dict[str, ApnsResolver] = {}
_fcm_resolvers: dict[str, FcmResolver] = {}


def register_resolver(prefix: str, *, apns: ApnsResolver, fcm: FcmResolver) -> None:
    """App ids starting with `prefix` get their credentials from these (given the rest)."""
    _apns_resolvers[prefix] = apns
    _fcm_resolvers[prefix] = fcm


def apns_endpoint(*, sandbox: bool) -> str:
    """The origin of an environment: for sandbox APNS_SANDBOX_ENDPOINT when set; then
    APNS_ENDPOINT when set; else Apple's host for the environment."""
    return _endpoint(sandbox)


def _endpoint(sandbox: bool, override: str | None = None) -> str:
    if override:
        return override.rstrip("/")
    if sandbox and settings.APNS_SANDBOX_ENDPOINT:
        return settings.APNS_SANDBOX_ENDPOINT.rstrip("/")
    if settings.APNS_ENDPOINT:
        return settings.APNS_ENDPOINT.rstrip("/")
    return APNS_SANDBOX if sandbox else APNS_PRODUCTION


def _from_entry(name: str, entry: dict[str, Any]) -> ApnsCredentials:
    sandbox = bool(entry.get("sandbox", False))
    endpoint = _endpoint(sandbox, entry.get("endpoint"))
    other = _endpoint(not sandbox) if entry.get("either_environment") else None
    if entry.get("token_key_file"):
        missing = [k for k in ("key_id", "team_id") if not entry.get(k)]
        if missing:
            raise CredentialsError(f"PUSH_APPS_FILE: {name} needs {' and '.join(missing)}")
        return ApnsCredentials(
            name=name,
            endpoint=endpoint,
            key_file=str(entry["token_key_file"]),
            key_id=str(entry["key_id"]),
            team_id=str(entry["team_id"]),
            other_endpoint=other,
        )
    if entry.get("cert_file"):
        return ApnsCredentials(
            name=name, endpoint=endpoint, cert_file=str(entry["cert_file"]), other_endpoint=other
        )
    raise CredentialsError(f"PUSH_APPS_FILE: {name} needs token_key_file or cert_file")


def default_apns() -> ApnsCredentials | None:
    if settings.APNS_TOKEN_KEY_FILE:
        if not (settings.APNS_TOKEN_KEY_ID and settings.APNS_TEAM_ID):
            raise CredentialsError("APNS_TOKEN_KEY_FILE needs APNS_TOKEN_KEY_ID and APNS_TEAM_ID")
        return ApnsCredentials(
            name="default",
            endpoint=_endpoint(settings.APNS_SANDBOX),
            key_file=settings.APNS_TOKEN_KEY_FILE,
            key_id=settings.APNS_TOKEN_KEY_ID,
            team_id=settings.APNS_TEAM_ID,
        )
    if settings.APNS_CERT_FILE:
        return ApnsCredentials(
            name="default",
            endpoint=_endpoint(settings.APNS_SANDBOX),
            cert_file=settings.APNS_CERT_FILE,
        )
    return None


def _fcm_entry(name: str, entry: Any) -> FcmAccount:
    if not isinstance(entry, dict) or not entry.get("service_account_file"):
        raise CredentialsError(f"PUSH_APPS_FILE: fcm app {name} needs service_account_file")
    project_id, endpoint = entry.get("project_id"), entry.get("endpoint")
    return FcmAccount(
        name=name,
        credentials_file=str(entry["service_account_file"]),
        project_id=str(project_id) if project_id else None,
        endpoint=str(endpoint).rstrip("/") if endpoint else None,
    )


@dataclass(frozen=True)
class AppsFile:
    apns: dict[str, ApnsCredentials]
    fcm: dict[str, FcmAccount]


def push_apps() -> AppsFile:
    """PUSH_APPS_FILE's apps (none when it is unset); raises CredentialsError."""
    if not settings.PUSH_APPS_FILE:
        return AppsFile(apns={}, fcm={})
    return _apps_file(
        settings.PUSH_APPS_FILE, settings.APNS_ENDPOINT, settings.APNS_SANDBOX_ENDPOINT
    )


@cache
def _apps_file(path: str, *endpoints: str | None) -> AppsFile:
    # `endpoints` are part of the cache key: the entries' endpoints derive from them.
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CredentialsError(f"PUSH_APPS_FILE {path}: {e}") from None
    apns = data.get("apns", {}) if isinstance(data, dict) else None
    fcm = data.get("fcm", {}) if isinstance(data, dict) else None
    if not isinstance(apns, dict) or not isinstance(fcm, dict):
        raise CredentialsError(
            f'PUSH_APPS_FILE {path}: expected {{"apns": {{app_id: {{...}}}}, '
            f'"fcm": {{app_id: {{...}}}}}}'
        )
    return AppsFile(
        apns={name: _from_entry(name, entry) for name, entry in apns.items()},
        fcm={name: _fcm_entry(name, entry) for name, entry in fcm.items()},
    )


def apns_for(app_id: str) -> ApnsCredentials | None:
    """The credentials that sign for `app_id`, or None when there are none."""
    for prefix, resolve in _apns_resolvers.items():
        if app_id.startswith(prefix):
            return resolve(app_id.removeprefix(prefix))
    if settings.PUSH_APPS_FILE:
        apps = push_apps().apns
        # A PushKit token's app id is its bundle's plus ".voip": the same app, whose key or
        # (VoIP Services) certificate signs for both topics.
        entry = apps.get(app_id) or apps.get(app_id.removesuffix(VOIP_SUFFIX))
        if entry is not None:
            return entry
    return default_apns()


def fcm_credentials_file() -> str | None:
    return settings.FCM_CREDENTIALS_FILE or None


def fcm_for(app_id: str) -> FcmAccount | None:
    """A named app's own FCM account; None: the settings' (FCM_CREDENTIALS_FILE)."""
    for prefix, resolve in _fcm_resolvers.items():
        if app_id.startswith(prefix):
            return resolve(app_id.removeprefix(prefix))
    if app_id and settings.PUSH_APPS_FILE:
        try:
            return push_apps().fcm.get(app_id)
        except CredentialsError:
            # Named but unreadable: a configuration fault, never the settings' project
            # (whose tokens these are not).
            return FcmAccount(name=app_id, credentials_file="")
    return None


def push_apps_fcm(name: str) -> FcmAccount | None:
    """PUSH_APPS_FILE's "fcm" entry `name`, for protocols whose apps refer to one."""
    return push_apps().fcm.get(name)


def _readable(label: str, path: str | None) -> list[str]:
    if path is None:
        return []
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        return [f"{label}: cannot read {path} ({e.strerror})"]
    return []


def check_credentials() -> list[str]:
    """Problems an operator must fix; empty when every configured file is readable."""
    problems: list[str] = []
    fcm_accounts: list[tuple[str, str]] = []
    try:
        configured = [default_apns()]
        apps = push_apps()
        configured += list(apps.apns.values())
        fcm_accounts += [
            (f"FCM service account for {a.name}", a.credentials_file) for a in apps.fcm.values()
        ]
    except CredentialsError as e:
        return [str(e)]
    for creds in filter(None, configured):
        problems += _readable(f"APNs key for {creds.name}", creds.key_file)
        problems += _readable(f"APNs certificate for {creds.name}", creds.cert_file)
    fcm = fcm_credentials_file()
    if fcm:
        fcm_accounts.insert(0, ("FCM_CREDENTIALS_FILE", fcm))
    for label, path in fcm_accounts:
        problems += _service_account_problems(label, path)
    problems += _readable("PUSH_CA_FILE", settings.PUSH_CA_FILE or None)
    return problems


def _service_account_problems(label: str, path: str) -> list[str]:
    unreadable = _readable(label, path)
    if unreadable:
        return unreadable
    try:
        info = json.loads(Path(path).read_text())
        missing = [k for k in ("client_email", "private_key", "project_id") if k not in info]
    except ValueError:
        missing = ["valid JSON"]
    return [f"{label} {path} lacks {', '.join(missing)}"] if missing else []


def client_ssl_context(cert_file: str | None = None) -> ssl.SSLContext:
    """TLS for the providers (APNs, FCM and its OAuth endpoint): the system's CAs plus
    PUSH_CA_FILE; with `cert_file`, an APNs certificate identity presented in the handshake."""
    context = ssl.create_default_context()
    if settings.PUSH_CA_FILE:
        context.load_verify_locations(cafile=settings.PUSH_CA_FILE)
    if cert_file:
        context.load_cert_chain(cert_file)
    return context
