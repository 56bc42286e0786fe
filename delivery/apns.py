"""The APNs sender: HTTP/2 to Apple through delivery/h2client.py, one client per identity.

The same small HTTP/2 client as FCM's: persistent connections (Apple treats rapid
connect/disconnect as abuse), as many streams per connection as Apple's SETTINGS allow,
flow control obeyed, a request whose connection broke before the answer sent once more on
another connection, a connection that cannot be used closed and replaced at once, a timeout
on every request. An error about one stream ends that stream only.

Token authentication signs one ES256 JWT per key, renewed every TOKEN_RENEW_SECONDS
(Apple: at least hourly, at most every 20 minutes, or TooManyProviderTokenUpdates); a
certificate identity presents its certificate in the TLS handshake.
"""

import asyncio
import json
import logging
import re
import ssl
import time
import uuid
from pathlib import Path

import jwt

from delivery import credentials
from delivery.h2client import ConnectionFailed, H2Client, StreamFailed
from delivery.outcomes import (
    CONNECTION_ERROR,
    NO_CREDENTIALS,
    TIMEOUT,
    SendResult,
    Verdict,
    classify_apns,
    is_known_apns_reason,
)
from delivery.types import Delivery

logger = logging.getLogger(__name__)

# Apple answers in tens of milliseconds; a stream unanswered after this is given up (and
# retried later by the batch): Apple sometimes never answers a stream.
REQUEST_TIMEOUT_SECONDS = 10.0
# Connections per identity; each carries up to Apple's MAX_CONCURRENT_STREAMS (~1,000).
MAX_CONNECTIONS = 4
TOKEN_RENEW_SECONDS = 30 * 60
# Apple's answer to a token of the other environment (as to a malformed one).
WRONG_ENVIRONMENT = "BadDeviceToken"
# Tokens whose environment a process remembers (either-environment apps): a sandbox token of
# such an app costs one extra request only when it is not among these.
TOKEN_ENVIRONMENTS_KEPT = 10_000
CONFIG_LOG_INTERVAL_SECONDS = 60.0
# A device token goes into :path; anything but hex (as registration enforces) never does.
_TOKEN = re.compile(r"[0-9A-Fa-f]{1,200}")


class _ProviderToken:
    """The JWT every connection of one .p8 key presents."""

    def __init__(self, *, key: str, key_id: str, team_id: str) -> None:
        self.key = key
        self.key_id = key_id
        self.team_id = team_id
        self._header = b""
        self._issued = -float(TOKEN_RENEW_SECONDS)

    def header(self) -> bytes:
        now = time.monotonic()
        if now - self._issued >= TOKEN_RENEW_SECONDS:
            token = jwt.encode(
                {"iss": self.team_id, "iat": int(time.time())},
                self.key,
                algorithm="ES256",
                headers={"kid": self.key_id},
            )
            self._header = f"bearer {token}".encode()
            self._issued = now
        return self._header


class _App:
    def __init__(self, creds: credentials.ApnsCredentials) -> None:
        self.creds = creds
        self.token: _ProviderToken | None = None
        if creds.uses_token:
            assert creds.key_file is not None
            self.token = _ProviderToken(
                key=Path(creds.key_file).read_text(),
                key_id=creds.key_id or "",
                team_id=creds.team_id or "",
            )
            self.token.header()  # a key that cannot sign fails here, as a configuration fault
        self.client = H2Client(
            creds.endpoint,
            ssl_context=credentials.client_ssl_context(
                None if creds.uses_token else creds.cert_file
            ),
            max_connections=MAX_CONNECTIONS,
        )


class ApnsSender:
    provider = "apns"

    def __init__(self, *, request_timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self.request_timeout = request_timeout
        self._apps: dict[credentials.ApnsCredentials, _App] = {}
        self._last_config_log: dict[str, float] = {}
        # Token (lower case) -> the origin that last took it, for either-environment apps;
        # insertion-ordered, the oldest dropped first.
        self._token_endpoint: dict[str, str] = {}

    def _app(self, app_id: str) -> _App | SendResult:
        try:
            creds = credentials.apns_for(app_id)
            if creds is None:
                return self._config_fault(app_id, NO_CREDENTIALS, "no APNs credentials configured")
            app = self._apps.get(creds)
            if app is None:
                app = self._apps[creds] = _App(creds)
            return app
        except (
            credentials.CredentialsError,
            OSError,
            ssl.SSLError,
            ValueError,
            jwt.PyJWTError,
        ) as e:
            return self._config_fault(app_id, "BadCredentials", f"{type(e).__name__}: {e}")

    def _config_fault(self, app_id: str, reason: str, detail: str) -> SendResult:
        # One line per app per minute: an operator needs to see it, not drown in it.
        now = time.monotonic()
        if now - self._last_config_log.get(app_id, -CONFIG_LOG_INTERVAL_SECONDS) >= (
            CONFIG_LOG_INTERVAL_SECONDS
        ):
            self._last_config_log[app_id] = now
            logger.error(
                "APNs: cannot deliver for app %s: %s; deliveries fail until this is fixed",
                app_id,
                detail,
            )
        return SendResult.unanswered(Verdict.CONFIG_FAULT, reason, latency=0.0)

    async def close(self) -> None:
        apps, self._apps = list(self._apps.values()), {}
        for app in apps:
            await app.client.aclose()

    def _headers(self, app: _App, delivery: Delivery, apns_id: str) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"apns-id", apns_id.encode()),
            (b"apns-topic", (delivery.topic or delivery.app_id).encode()),
        ]
        if app.token is not None:
            headers.append((b"authorization", app.token.header()))
        if delivery.priority is not None:
            headers.append((b"apns-priority", delivery.priority.encode()))
        if delivery.push_type:
            headers.append((b"apns-push-type", delivery.push_type.encode()))
        if delivery.expiration is not None:
            headers.append((b"apns-expiration", str(delivery.expiration).encode()))
        return headers

    async def send(self, delivery: Delivery) -> SendResult:
        started = time.monotonic()
        if not _TOKEN.fullmatch(delivery.token):
            return SendResult.unanswered(Verdict.TOKEN_DEAD, "BadDeviceToken", latency=0.0)
        app = self._app(delivery.app_id)
        if isinstance(app, SendResult):
            return app
        if app.creds.other_endpoint is None:
            return await self._post(app, delivery, started)
        return await self._post_either_environment(app, delivery, started)

    async def _post_either_environment(
        self, app: _App, delivery: Delivery, started: float
    ) -> SendResult:
        """An app whose tokens may come from either environment: Apple's BadDeviceToken also
        means "a token of the other environment" (upstreams.md), so the token is dead only
        when both say so. The environment that last took a token is tried first."""
        token = delivery.token.lower()
        first, second = app, self._sibling(app)
        if self._token_endpoint.get(token) == second.creds.endpoint:
            first, second = second, first
        result = await self._post(first, delivery, started)
        if result.reason == WRONG_ENVIRONMENT:
            result = await self._post(second, delivery, started)
            first = second
        if result.reason != WRONG_ENVIRONMENT and result.status is not None:
            self._remember(token, first.creds.endpoint)
        return result

    def _sibling(self, app: _App) -> _App:
        creds = app.creds.in_other_environment()
        sibling = self._apps.get(creds)
        if sibling is None:
            sibling = self._apps[creds] = _App(creds)
        return sibling

    def _remember(self, token: str, endpoint: str) -> None:
        self._token_endpoint.pop(token, None)
        self._token_endpoint[token] = endpoint
        if len(self._token_endpoint) > TOKEN_ENVIRONMENTS_KEPT:
            del self._token_endpoint[next(iter(self._token_endpoint))]

    async def _post(self, app: _App, delivery: Delivery, started: float) -> SendResult:
        apns_id = str(uuid.uuid4())

        def result(verdict: Verdict, status: int | None, reason: str | None) -> SendResult:
            return SendResult(
                verdict=verdict,
                status=status,
                reason=reason,
                upstream_id=apns_id,
                retry_after=None,
                latency=time.monotonic() - started,
            )

        try:
            async with asyncio.timeout(self.request_timeout):
                response = await app.client.post(
                    f"/3/device/{delivery.token}",
                    self._headers(app, delivery, apns_id),
                    delivery.payload.encode(),
                )
        except TimeoutError:
            return result(Verdict.RETRY, None, TIMEOUT)
        except StreamFailed as e:
            # Refused on our side before Apple saw it (h2 would not frame it): the message,
            # not the connection, is at fault.
            logger.warning("APNs (%s): stream refused locally: %s", app.creds.name, e)
            return result(Verdict.REJECTED, None, "LocalProtocolError")
        except (ConnectionFailed, OSError, ssl.SSLError) as e:
            logger.warning("APNs (%s): %s: %s", app.creds.name, type(e).__name__, e)
            return result(Verdict.RETRY, None, CONNECTION_ERROR)
        status = response.status
        if status == 200:
            return result(Verdict.DELIVERED, 200, None)
        reason = _reason(response.content)
        if not is_known_apns_reason(reason):
            logger.warning(
                "APNs: unknown reason %r with status %s; using the default", reason, status
            )
        return result(classify_apns(status, reason, push_type=delivery.push_type), status, reason)


def _reason(content: bytes) -> str | None:
    try:
        answer = json.loads(content)
    except ValueError:
        return None
    reason = answer.get("reason") if isinstance(answer, dict) else None
    return reason if isinstance(reason, str) else None
