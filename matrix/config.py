"""The Matrix push gateway's apps: MATRIX_APPS_FILE, in Sygnal's YAML format.

A Sygnal operator brings their configuration as it is: the file is a whole Sygnal config or
just its `apps:` mapping (only `apps:` is read); each entry is `app_id` (or a glob such as
`com.example.*`, as Sygnal matches them) to

    type: apns   keyfile + key_id + team_id + topic, or certfile (topic from the certificate);
                 platform production|sandbox; push_type; convert_device_token_to_hex (true);
                 send_badge_counts (true)
    type: gcm    api_version: v1, project_id, service_account_file; send_badge_counts (true)

One key of our own, ignored by Sygnal: a gcm app may name `fcm_app`, an "fcm" entry of
PUSH_APPS_FILE, instead of `project_id` + `service_account_file`, so that one Firebase
project's account is configured once for every protocol.

Relative paths are relative to the file. Two keys of our own, ignored by Sygnal, configure
device channels (docs/matrix.md): `channels` (the ids a device may enable, optionally with a
description) and `channel_types` (a notification's `type` to the channel it belongs to).

Deliveries name their app as `matrix:<name in the file>`; delivery/credentials.py resolves
that name here, so the senders use each app's own key, topic and environment.
"""

import logging
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from django.conf import settings

from delivery import credentials
from delivery.types import Provider, compact_json

logger = logging.getLogger(__name__)

APP_PREFIX = "matrix:"
# Sygnal's accepted push types (aioapns.PushType); anything else is refused at start.
APNS_PUSH_TYPES = frozenset({"alert", "background", "voip", "complication", "fileprovider", "mdm"})
_UNDERSTOOD = {
    Provider.APNS: {
        "type",
        "platform",
        "certfile",
        "team_id",
        "key_id",
        "keyfile",
        "topic",
        "push_type",
        "convert_device_token_to_hex",
        "send_badge_counts",
        "inflight_request_limit",
    },
    Provider.FCM: {
        "type",
        "api_key",
        "api_version",
        "fcm_options",
        "max_connections",
        "project_id",
        "service_account_file",
        "send_badge_counts",
        "inflight_request_limit",
    },
}
_CHANNEL_KEYS = {"channels", "channel_types"}
_OWN_FCM_KEYS = {"fcm_app"}


class MatrixConfigError(Exception):
    pass


@dataclass(frozen=True)
class Channel:
    id: str
    description: str = ""


@dataclass(frozen=True)
class MatrixApp:
    name: str  # the key in `apps:`, possibly a glob
    provider: Provider
    send_badge_counts: bool = True
    # APNs
    apns: credentials.ApnsCredentials | None = None
    topic: str = ""
    push_type: str | None = None
    convert_device_token_to_hex: bool = True
    # FCM
    fcm: credentials.FcmAccount | None = None
    fcm_app: str = ""  # PUSH_APPS_FILE's "fcm" entry that sends, instead of `fcm`
    fcm_options: str | None = None  # JSON text: Sygnal's fcm_options, merged into the message
    # Device channels
    channels: tuple[Channel, ...] = ()
    channel_types: tuple[tuple[str, str], ...] = ()
    pattern: re.Pattern[str] | None = field(default=None, compare=False)

    @property
    def delivery_app_id(self) -> str:
        return APP_PREFIX + self.name

    def channel_for_type(self, event_type: str | None) -> str | None:
        if event_type is None:
            return None
        return dict(self.channel_types).get(event_type)

    def has_channel(self, channel_id: str) -> bool:
        return any(c.id == channel_id for c in self.channels)


def _glob(name: str) -> re.Pattern[str] | None:
    """Sygnal's app-id globs (matrix_common.regex.glob_to_regex): `*` and `?`, whole id."""
    if "*" not in name and "?" not in name:
        return None
    body = re.escape(name).replace(r"\*", ".*?").replace(r"\?", ".")
    return re.compile(rf"\A{body}\Z")


def _get[T](entry: dict[str, Any], name: str, key: str, kind: type[T], default: T) -> T:
    if key not in entry or entry[key] is None:
        return default
    value = entry[key]
    if not isinstance(value, kind):
        raise MatrixConfigError(f"apps.{name}.{key} must be a {kind.__name__}")
    return value


def _path(base: Path, value: str) -> str:
    return str((base / value) if not Path(value).is_absolute() else Path(value))


def _topic_from_certificate(path: str) -> str:
    """The bundle id a certificate is for (its subject's UID), as aioapns takes it."""
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise MatrixConfigError(f"cannot read the certificate {path}: {type(e).__name__}") from e
    uids = cert.subject.get_attributes_for_oid(NameOID.USER_ID)
    if not uids:
        raise MatrixConfigError(f"the certificate {path} names no topic (UID); set topic")
    return str(uids[0].value)


def _channels(name: str, entry: dict[str, Any]) -> tuple[tuple[Channel, ...], tuple[Any, ...]]:
    raw = entry.get("channels") or []
    if not isinstance(raw, list):
        raise MatrixConfigError(f"apps.{name}.channels must be a list")
    channels: list[Channel] = []
    for item in raw:
        if isinstance(item, str):
            channels.append(Channel(id=item))
        elif isinstance(item, dict) and isinstance(item.get("id"), str):
            channels.append(Channel(id=item["id"], description=str(item.get("description", ""))))
        else:
            raise MatrixConfigError(f"apps.{name}.channels: each is an id or {{id, description}}")
    types = entry.get("channel_types") or {}
    if not isinstance(types, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in types.items()
    ):
        raise MatrixConfigError(f"apps.{name}.channel_types must map event types to channel ids")
    ids = {c.id for c in channels}
    unknown = sorted(set(types.values()) - ids)
    if unknown:
        raise MatrixConfigError(f"apps.{name}.channel_types names unknown channels {unknown}")
    return tuple(channels), tuple(sorted(types.items()))


def _apns_app(name: str, entry: dict[str, Any], base: Path) -> MatrixApp:
    platform = _get(entry, name, "platform", str, "production")
    if platform in ("", "production", "prod"):
        sandbox = False
    elif platform == "sandbox":
        sandbox = True
    else:
        raise MatrixConfigError(f"apps.{name}.platform must be production or sandbox")
    push_type = _get(entry, name, "push_type", str, "") or None
    if push_type is not None and push_type not in APNS_PUSH_TYPES:
        raise MatrixConfigError(f"apps.{name}.push_type {push_type!r} is not an APNs push type")
    endpoint = credentials.apns_endpoint(sandbox=sandbox)
    certfile = _get(entry, name, "certfile", str, "")
    keyfile = _get(entry, name, "keyfile", str, "")
    topic = _get(entry, name, "topic", str, "")
    if certfile:
        creds = credentials.ApnsCredentials(
            name=f"matrix {name}", endpoint=endpoint, cert_file=_path(base, certfile)
        )
        topic = topic or _topic_from_certificate(creds.cert_file or "")
    elif keyfile:
        missing = [k for k in ("key_id", "team_id", "topic") if not entry.get(k)]
        if missing:
            raise MatrixConfigError(f"apps.{name} needs {', '.join(missing)} with keyfile")
        creds = credentials.ApnsCredentials(
            name=f"matrix {name}",
            endpoint=endpoint,
            key_file=_path(base, keyfile),
            key_id=_get(entry, name, "key_id", str, ""),
            team_id=_get(entry, name, "team_id", str, ""),
        )
    else:
        raise MatrixConfigError(f"apps.{name} needs certfile or keyfile")
    channels, channel_types = _channels(name, entry)
    return MatrixApp(
        name=name,
        provider=Provider.APNS,
        send_badge_counts=_get(entry, name, "send_badge_counts", bool, True),
        apns=creds,
        topic=topic,
        push_type=push_type,
        convert_device_token_to_hex=_get(entry, name, "convert_device_token_to_hex", bool, True),
        channels=channels,
        channel_types=channel_types,
        pattern=_glob(name),
    )


def _gcm_app(name: str, entry: dict[str, Any], base: Path) -> MatrixApp:
    version = _get(entry, name, "api_version", str, "legacy")
    if version != "v1":
        # Google shut the legacy API down in 2024; Sygnal's default is still "legacy".
        raise MatrixConfigError(f"apps.{name}: only api_version v1 is supported (FCM HTTP v1)")
    project_id = _get(entry, name, "project_id", str, "")
    account_file = _get(entry, name, "service_account_file", str, "")
    fcm_app = _get(entry, name, "fcm_app", str, "")
    if fcm_app and (project_id or account_file):
        raise MatrixConfigError(
            f"apps.{name}: fcm_app names the account; drop project_id and service_account_file"
        )
    if not fcm_app and (not project_id or not account_file):
        raise MatrixConfigError(
            f"apps.{name} needs project_id and service_account_file (or fcm_app)"
        )
    options = _get(entry, name, "fcm_options", dict, {})
    try:
        options_json = compact_json(options) if options else None
    except (TypeError, ValueError):
        # YAML's sets, dates, NaN: nothing FCM's JSON could carry.
        raise MatrixConfigError(f"apps.{name}.fcm_options must be plain JSON") from None
    channels, channel_types = _channels(name, entry)
    return MatrixApp(
        name=name,
        provider=Provider.FCM,
        send_badge_counts=_get(entry, name, "send_badge_counts", bool, True),
        fcm=None
        if fcm_app
        else credentials.FcmAccount(
            name=f"matrix {name}",
            credentials_file=_path(base, account_file),
            project_id=project_id,
        ),
        fcm_app=fcm_app,
        fcm_options=options_json,
        channels=channels,
        channel_types=channel_types,
        pattern=_glob(name),
    )


def parse_apps(text: str, *, base: Path) -> dict[str, MatrixApp]:
    """The apps of a Sygnal config (or of a bare `apps:` file); raises MatrixConfigError."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MatrixConfigError(f"not YAML: {e}") from None
    apps = data.get("apps") if isinstance(data, dict) else None
    if not isinstance(apps, dict):
        raise MatrixConfigError("expected a top-level `apps:` mapping")
    parsed: dict[str, MatrixApp] = {}
    for name, entry in apps.items():
        if not isinstance(name, str) or not isinstance(entry, dict):
            raise MatrixConfigError(f"apps.{name} must be a mapping")
        kind = entry.get("type")
        if kind == "apns":
            app = _apns_app(name, entry, base)
        elif kind == "gcm":
            app = _gcm_app(name, entry, base)
        else:
            raise MatrixConfigError(f"apps.{name}.type must be apns or gcm, not {kind!r}")
        unknown = set(entry) - _UNDERSTOOD[app.provider] - _CHANNEL_KEYS - _OWN_FCM_KEYS
        if unknown:
            # As Sygnal does: a key it does not know is reported, not fatal.
            logger.warning("MATRIX_APPS_FILE: apps.%s: keys not understood: %s", name, unknown)
        parsed[name] = app
    return parsed


@cache
def _load(path: str, *apns_endpoints: str | None) -> dict[str, MatrixApp]:
    # The endpoints are part of the key: APNS_ENDPOINT and APNS_SANDBOX_ENDPOINT change what
    # the entries point at.
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as e:
        raise MatrixConfigError(f"cannot read {path} ({e.strerror})") from None
    return parse_apps(text, base=file.parent)


def apps() -> dict[str, MatrixApp]:
    """The configured apps (none when MATRIX_APPS_FILE is unset); raises MatrixConfigError."""
    if not settings.MATRIX_APPS_FILE:
        return {}
    return _load(settings.MATRIX_APPS_FILE, settings.APNS_ENDPOINT, settings.APNS_SANDBOX_ENDPOINT)


def find_app(app_id: str) -> MatrixApp | None:
    """The app that serves `app_id`: the exact entry, else the one glob that matches it
    (none, or several globs: unknown, as Sygnal treats an ambiguous id)."""
    configured = apps()
    exact = configured.get(app_id)
    if exact is not None:
        return exact
    matches = [a for a in configured.values() if a.pattern and a.pattern.match(app_id)]
    return matches[0] if len(matches) == 1 else None


def check_apps() -> list[str]:
    """Problems an operator must fix before the gateway starts (a Django system check)."""
    try:
        configured = apps()
    except MatrixConfigError as e:
        return [f"MATRIX_APPS_FILE: {e}"]
    problems = []
    for app in configured.values():
        for label, path in (
            ("keyfile", app.apns.key_file if app.apns else None),
            ("certfile", app.apns.cert_file if app.apns else None),
            ("service_account_file", app.fcm.credentials_file if app.fcm else None),
        ):
            if path and not Path(path).is_file():
                problems.append(f"MATRIX_APPS_FILE: apps.{app.name}.{label}: cannot read {path}")
        if app.fcm_app and _push_apps_fcm(app.fcm_app) is None:
            problems.append(
                f"MATRIX_APPS_FILE: apps.{app.name}.fcm_app: PUSH_APPS_FILE has no fcm app "
                f"{app.fcm_app!r}"
            )
    return problems


def _push_apps_fcm(name: str) -> credentials.FcmAccount | None:
    try:
        return credentials.push_apps_fcm(name)
    except credentials.CredentialsError:
        return None  # reported by the credentials check


def _apns_credentials(name: str) -> credentials.ApnsCredentials | None:
    try:
        app = apps().get(name)
    except MatrixConfigError:
        return None
    return app.apns if app is not None else None


def _fcm_account(name: str) -> credentials.FcmAccount:
    try:
        app = apps().get(name)
    except MatrixConfigError:
        app = None
    account = None
    if app is not None:
        account = _push_apps_fcm(app.fcm_app) if app.fcm_app else app.fcm
    if account is None:
        # Gone from the file since the delivery was made: a configuration fault, never the
        # settings' project (whose tokens these are not).
        return credentials.FcmAccount(name=f"matrix {name}", credentials_file="")
    return account


def register() -> None:
    credentials.register_resolver(APP_PREFIX, apns=_apns_credentials, fcm=_fcm_account)
