"""The APNs sender, on aioapns: persistent HTTP/2 connections per set of credentials.

aioapns gives us HTTP/2 framing, the JWT header and a connection pool that re-opens a
connection closed by GOAWAY or reset and retries its unanswered requests there. We add
what it lacks: a custom endpoint and CA (APNS_ENDPOINT, PUSH_CA_FILE), one JWT per key
instead of one per connection (new connections must not churn tokens:
TooManyProviderTokenUpdates), connections kept while idle, a timeout on every request,
a cap on requests in flight per app, and classification of every answer.
"""

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aioapns.common import NotificationRequest, NotificationResult, PushType
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsBaseConnectionPool,
    APNsCertConnectionPool,
    APNsKeyConnectionPool,
    APNsProductionClientProtocol,
    JWTAuthorizationHeaderProvider,
)
from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from django.conf import settings
from h2.events import ConnectionTerminated
from h2.exceptions import ProtocolError as H2ProtocolError

from delivery import credentials
from delivery.h2client import skip_outbound_checks
from delivery.outcomes import (
    CONNECTION_ERROR,
    NO_CREDENTIALS,
    TIMEOUT,
    SendResult,
    Verdict,
    classify_apns,
    is_known_apns_reason,
)

logger = logging.getLogger(__name__)

# Apple answers in tens of milliseconds; a stream unanswered after this is given up (and
# retried later by the batch): Apple sometimes never answers a stream.
REQUEST_TIMEOUT_SECONDS = 10.0
# Requests in flight per set of credentials (each app with its own key has its own cap).
MAX_IN_FLIGHT_PER_APP = 1000
MAX_CONNECTIONS = 4
# One retry on a fresh connection when a connection dies under a request (GOAWAY, reset).
MAX_CONNECTION_ATTEMPTS = 2
# Keep idle connections open: Apple treats rapid connect/disconnect as abuse.
IDLE_SECONDS = 600
CONFIG_LOG_INTERVAL_SECONDS = 60.0


@dataclass(frozen=True)
class ApnsMessage:
    token: str
    app_id: str
    payload: dict[str, Any]
    priority: int | None
    push_type: str | None
    expiration: int | None


def client_ssl_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.PUSH_CA_FILE:
        context.load_verify_locations(cafile=settings.PUSH_CA_FILE)
    context.set_alpn_protocols(["h2"])
    return context


class _SharedTokenKeyPool(APNsKeyConnectionPool):
    """aioapns' token pool, but every connection signs with the same JWT (renewed every
    30 minutes by aioapns' provider; Apple wants 20-60)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._auth = JWTAuthorizationHeaderProvider(
            key=self.key, key_id=self.key_id, team_id=self.team_id
        )

    async def create_connection(self) -> APNsBaseClientProtocol:
        factory = partial(
            self.protocol_class,
            self.apns_topic or "",
            self.loop,
            self.discard_connection,  # type: ignore[arg-type] # aioapns annotates it NoReturn
            self._auth,
        )
        return await self._create_connection(factory)


class _Protocol(APNsProductionClientProtocol):
    """aioapns' connection, made safe to use while Apple closes it.

    After a GOAWAY aioapns keeps the connection in its pool until the socket is gone, and a
    request sent on it in between dies with h2's ProtocolError, which its pool does not
    retry. Here a terminated connection reports itself busy (the pool skips it) and such an
    error is raised as ConnectionClosed, which the pool retries on a new connection.
    """

    INACTIVITY_TIME = IDLE_SECONDS
    terminated = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # aioapns builds its H2Connection with h2's defaults.
        skip_outbound_checks(self.conn.config)

    @property
    def is_busy(self) -> bool:
        return self.terminated or bool(super().is_busy)

    def on_connection_terminated(self, event: ConnectionTerminated) -> None:
        self.terminated = True
        super().on_connection_terminated(event)

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        if self.terminated:
            raise ConnectionClosed("connection terminated by the server")
        try:
            return await super().send_notification(request)
        except H2ProtocolError as e:
            self.terminated = True
            raise ConnectionClosed(str(e)) from None


def _protocol_for(endpoint: str) -> type[_Protocol]:
    parts = urlsplit(endpoint)
    host = parts.hostname or "api.push.apple.com"
    port = parts.port or 443
    return type("BouncerApnsProtocol", (_Protocol,), {"APNS_SERVER": host, "APNS_PORT": port})


def _pool(creds: credentials.ApnsCredentials) -> APNsBaseConnectionPool:
    common: dict[str, Any] = {
        # The topic is set per request (the device's app id); aioapns wants a default.
        "topic": "invalid.nonsense",
        "max_connections": MAX_CONNECTIONS,
        "max_connection_attempts": MAX_CONNECTION_ATTEMPTS,
        "ssl_context": client_ssl_context(),
    }
    pool: APNsBaseConnectionPool
    if creds.uses_token:
        assert creds.key_file is not None
        pool = _SharedTokenKeyPool(
            key=Path(creds.key_file).read_text(),
            key_id=creds.key_id,
            team_id=creds.team_id,
            **common,
        )
    else:
        assert creds.cert_file is not None
        pool = APNsCertConnectionPool(cert_file=creds.cert_file, **common)
    pool.protocol_class = _protocol_for(creds.endpoint)
    return pool


class _App:
    def __init__(self, creds: credentials.ApnsCredentials) -> None:
        self.creds = creds
        self.pool = _pool(creds)
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT_PER_APP)


class ApnsSender:
    def __init__(self, *, request_timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self.request_timeout = request_timeout
        self._apps: dict[credentials.ApnsCredentials, _App] = {}
        self._last_config_log: dict[str, float] = {}

    def _app(self, app_id: str) -> _App | SendResult:
        try:
            creds = credentials.apns_for(app_id)
            if creds is None:
                return self._config_fault(app_id, NO_CREDENTIALS, "no APNs credentials configured")
            app = self._apps.get(creds)
            if app is None:
                app = self._apps[creds] = _App(creds)
            return app
        except (credentials.CredentialsError, OSError, ssl.SSLError, ValueError) as e:
            return self._config_fault(app_id, "BadCredentials", str(e))

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
        for app in self._apps.values():
            app.pool.close()
        self._apps.clear()
        # TLS close_notify takes a few loop turns; let the transports finish closing.
        await asyncio.sleep(0.1)

    async def send(self, message: ApnsMessage) -> SendResult:
        app = self._app(message.app_id)
        if isinstance(app, SendResult):
            return app
        request = NotificationRequest(
            device_token=message.token,
            message=message.payload,
            time_to_live=(
                max(message.expiration - int(time.time()), 0)
                if message.expiration is not None
                else None
            ),
            priority=message.priority,
            push_type=PushType(message.push_type) if message.push_type else None,
            apns_topic=message.app_id,
        )
        started = time.monotonic()

        def result(verdict: Verdict, status: int | None, reason: str | None) -> SendResult:
            return SendResult(
                verdict=verdict,
                status=status,
                reason=reason,
                upstream_id=request.notification_id,
                retry_after=None,
                latency=time.monotonic() - started,
            )

        async with app.in_flight:
            try:
                answer = await asyncio.wait_for(
                    app.pool.send_notification(request), timeout=self.request_timeout
                )
            except TimeoutError:
                return result(Verdict.RETRY, None, TIMEOUT)
            except (ApnsConnectionError, MaxAttemptsExceeded, OSError, ssl.SSLError) as e:
                logger.warning("APNs (%s): %s: %s", app.creds.name, type(e).__name__, e)
                return result(Verdict.RETRY, None, CONNECTION_ERROR)
        status = int(answer.status) if str(answer.status).isdigit() else 0
        reason = answer.description
        if status != 200 and not is_known_apns_reason(reason):
            logger.warning(
                "APNs: unknown reason %r with status %s; using the default", reason, status
            )
        return result(classify_apns(status, reason), status, reason)
