"""The FCM HTTP v1 sender: one persistent HTTP/2 connection, OAuth from a service account.

Sends go through delivery/h2client.py, the small client on the `h2` state machine that
APNs uses too: through httpx, and then through httpcore directly, an FCM send cost several
times an APNs send on the notify path, and a GOAWAY failed the streams FCM had not
processed instead of sending them again (bench/README.md).

google-auth signs the service-account assertion and tracks the access token's expiry; its
bundled transports need `requests` or `aiohttp`, so a small httpx transport stands in, and
the (blocking) refresh runs off the event loop, one at a time.
"""

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import google.auth.exceptions
import google.auth.transport
import httpx
from django.conf import settings
from google.oauth2 import service_account

from delivery import credentials
from delivery.h2client import ConnectionFailed, H2Client, StreamFailed
from delivery.outcomes import (
    CONNECTION_ERROR,
    NO_CREDENTIALS,
    TIMEOUT,
    SendResult,
    Verdict,
    classify_fcm,
    is_known_fcm_code,
)
from delivery.types import Delivery, compact_json

logger = logging.getLogger(__name__)

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
REQUEST_TIMEOUT_SECONDS = 10.0
OAUTH_TIMEOUT_SECONDS = 10.0
MAX_IN_FLIGHT = 1000
CONFIG_LOG_INTERVAL_SECONDS = 60.0
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


class _Response(google.auth.transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class HttpxAuthRequest(google.auth.transport.Request):
    """google-auth's transport interface over a (blocking) httpx client."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _Response:
        try:
            response = self.client.request(
                method, url, content=body, headers=headers, timeout=timeout or OAUTH_TIMEOUT_SECONDS
            )
        except httpx.HTTPError as e:
            raise google.auth.exceptions.TransportError(str(e)) from e  # type: ignore[no-untyped-call] # google-auth is untyped here
        return _Response(response)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


def _with_options(delivery: Delivery) -> str:
    """The message with an app's further members; as Sygnal merges its `fcm_options`, the
    priority goes into `android` and token and data are the delivery's own."""
    message = json.loads(delivery.fcm_options or "{}")
    android = message.get("android")
    message["android"] = {
        **(android if isinstance(android, dict) else {}),
        "priority": delivery.priority or "high",
    }
    message["token"] = delivery.token
    message["data"] = json.loads(delivery.payload)
    return compact_json({"message": message})


def _error_code(content: bytes) -> str | None:
    answer = _json(content)
    error = answer.get("error", {}) if isinstance(answer, dict) else None
    if not isinstance(error, dict):
        return None
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("@type") == FCM_ERROR_TYPE:
            code = detail.get("errorCode")
            if isinstance(code, str):
                return code
    status = error.get("status")
    return status if isinstance(status, str) else None


class FcmSender:
    provider = "fcm"

    def __init__(
        self,
        *,
        request_timeout: float = REQUEST_TIMEOUT_SECONDS,
        account: credentials.FcmAccount | None = None,
    ) -> None:
        self.request_timeout = request_timeout
        # None: the settings' project. Otherwise one app's own project (a sender per account,
        # kept in `_accounts` of the settings' sender, which routes by the delivery's app id).
        self._account = account
        self._accounts: dict[credentials.FcmAccount, FcmSender] = {}
        self._credentials: service_account.Credentials | None = None
        self._loaded_from: str | None = None
        self._project_id = ""
        self._client: H2Client | None = None
        self._path_prefix = ""
        self._auth_client: httpx.Client | None = None
        self._refresh_lock: asyncio.Lock | None = None
        self._in_flight: asyncio.Semaphore | None = None
        self._last_config_log = -CONFIG_LOG_INTERVAL_SECONDS

    def _config_fault(self, reason: str, detail: str, started: float) -> SendResult:
        now = time.monotonic()
        if now - self._last_config_log >= CONFIG_LOG_INTERVAL_SECONDS:
            self._last_config_log = now
            logger.error("FCM: cannot deliver: %s; deliveries fail until this is fixed", detail)
        return SendResult.unanswered(
            Verdict.CONFIG_FAULT, reason, latency=time.monotonic() - started
        )

    async def _load(self) -> service_account.Credentials | str:
        """The service account, or why there is none."""
        if self._account is not None:
            path: str | None = self._account.credentials_file or None
            if path is None:
                return f"no FCM service account configured for {self._account.name}"
        else:
            path = credentials.fcm_credentials_file()
        if self._credentials is not None and path == self._loaded_from:
            return self._credentials
        await self._drop_connection()  # the settings changed: drop the old account's connections
        if not path:
            return "FCM_CREDENTIALS_FILE is not set"
        try:
            creds: service_account.Credentials = (
                service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call] # google-auth is untyped here
                    path, scopes=[SCOPE]
                )
            )
        except (OSError, ValueError, KeyError) as e:
            # Never the file's content: it holds the private key.
            return f"cannot load the service account in {path} ({type(e).__name__})"
        origin = (self._account.endpoint if self._account else None) or settings.FCM_ENDPOINT
        endpoint = urlsplit(origin)
        try:
            client = H2Client(
                f"{endpoint.scheme}://{endpoint.netloc}",
                ssl_context=credentials.client_ssl_context(),
                connect_timeout=self.request_timeout,
            )
        except ValueError:
            return f"the FCM endpoint must be an https URL, not {origin!r}"
        self._client = client
        self._path_prefix = endpoint.path.rstrip("/")
        self._credentials = creds
        self._loaded_from = path
        self._project_id = (
            self._account.project_id if self._account and self._account.project_id else None
        ) or (creds.project_id or "")
        context = credentials.client_ssl_context()
        self._auth_client = httpx.Client(http2=True, verify=context, timeout=OAUTH_TIMEOUT_SECONDS)
        self._refresh_lock = asyncio.Lock()
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        return creds

    async def _access_token(self, creds: service_account.Credentials) -> str:
        assert self._refresh_lock is not None
        assert self._auth_client is not None
        if not creds.valid:
            async with self._refresh_lock:
                if not creds.valid:
                    request = HttpxAuthRequest(self._auth_client)
                    await asyncio.to_thread(creds.refresh, request)
        return str(creds.token)

    async def close(self) -> None:
        accounts, self._accounts = list(self._accounts.values()), {}
        for sender in accounts:
            await sender.close()
        await self._drop_connection()

    async def _drop_connection(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._auth_client is not None:
            self._auth_client.close()
            self._auth_client = None
        self._credentials = None

    async def send(self, delivery: Delivery) -> SendResult:
        if self._account is None and delivery.app_id:
            account = credentials.fcm_for(delivery.app_id)
            if account is not None:
                sender = self._accounts.get(account)
                if sender is None:
                    sender = FcmSender(request_timeout=self.request_timeout, account=account)
                    self._accounts[account] = sender
                return await sender.send(delivery)
        started = time.monotonic()
        creds = await self._load()
        if isinstance(creds, str):
            return self._config_fault(NO_CREDENTIALS, creds, started)

        def result(
            verdict: Verdict,
            status: int | None,
            reason: str | None,
            name: str | None = None,
            retry_after: float | None = None,
        ) -> SendResult:
            return SendResult(
                verdict=verdict,
                status=status,
                reason=reason,
                upstream_id=name,
                retry_after=retry_after,
                latency=time.monotonic() - started,
            )

        try:
            token = await self._access_token(creds)
        except google.auth.exceptions.TransportError as e:
            logger.warning("FCM: OAuth token endpoint unreachable: %s", e)
            return result(Verdict.RETRY, None, CONNECTION_ERROR)
        except google.auth.exceptions.RefreshError as e:
            return self._config_fault("OAuthRefused", f"the OAuth token was refused ({e})", started)

        assert self._client is not None
        assert self._in_flight is not None
        path = f"{self._path_prefix}/v1/projects/{self._project_id}/messages:send"
        # The data object is already JSON text (shared by every device of a request).
        body = (
            f'{{"message":{{"token":{compact_json(delivery.token)},'
            f'"android":{{"priority":{compact_json(delivery.priority or "high")}}},'
            f'"data":{delivery.payload}}}}}'
            if delivery.fcm_options is None
            else _with_options(delivery)
        )
        headers = [
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
        ]
        async with self._in_flight:
            try:
                async with asyncio.timeout(self.request_timeout):
                    response = await self._client.post(path, headers, body.encode())
            except TimeoutError:
                return result(Verdict.RETRY, None, TIMEOUT)
            except StreamFailed as e:
                logger.warning("FCM: stream refused locally: %s", e)
                return result(Verdict.REJECTED, None, "LocalProtocolError")
            except (ConnectionFailed, OSError, ssl.SSLError) as e:
                logger.warning("FCM: %s: %s", type(e).__name__, e)
                return result(Verdict.RETRY, None, CONNECTION_ERROR)
        status = response.status
        if status == 200:
            answer = _json(response.content)
            name = answer.get("name") if isinstance(answer, dict) else None
            return result(Verdict.DELIVERED, 200, None, name if isinstance(name, str) else None)
        code = _error_code(response.content)
        if status == 401 and code != "THIRD_PARTY_AUTH_ERROR":
            # Our access token was refused: fetch a new one before the next request.
            creds.token = None
        if not is_known_fcm_code(code):
            logger.warning("FCM: unknown error %r with status %s", code, status)
        raw_retry_after = response.headers.get(b"retry-after")
        retry_after = raw_retry_after.decode("latin-1") if raw_retry_after else None
        return result(
            classify_fcm(status, code),
            status,
            code,
            retry_after=_retry_after(retry_after),
        )
