"""The notify endpoints on the event loop (bouncer/asgi.py routes their paths here).

Each request is read, authorised (servers cached in-process), parsed with the same models and
rules as every other endpoint (bouncer/params.py), admitted or shed (delivery/fairness.py),
handed to its protocol app, and answered in Zulip's envelope (bouncer/errors.py), all on
the process's one event loop. Errors map as Django's middleware maps them for the rest.
"""

import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import psycopg
import psycopg_pool
from django.conf import settings
from django.db import InterfaceError, OperationalError

from bouncer import metrics
from bouncer.asgi_io import BodyTooLarge, Endpoint, Receive, Scope, Send, header, read_body, respond
from bouncer.errors import (
    TEMPORARILY_UNAVAILABLE,
    BouncerError,
    ErrorCode,
    MatrixError,
    error_body,
    matrix_error_body,
    service_unavailable,
    success_body,
)
from bouncer.overload import RETRY_AFTER_SECONDS, queued_seconds
from bouncer.params import Params, parse_form_data, parse_json_bytes, with_ignored
from delivery.fairness import RequestGate, SiblingSignal
from delivery.payloads import E2EENotifyParams, LegacyNotifyParams, TestNotificationParams
from legacy import notify as legacy_notify
from matrix import access
from matrix import notify as matrix_notify
from matrix.notification import InvalidNotification, parse_body
from registrations import notify as e2ee_notify
from registrations.auth import authenticate_server_async
from registrations.e2ee_views import RegisterDeviceParams, register_push_device_async
from registrations.lookups import ServerInfo

logger = logging.getLogger(__name__)

PREFIX = "/api/v1/remotes/"
# PostgreSQL unreachable or restarting: nothing was changed; the Zulip server retries.
_UNAVAILABLE = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg_pool.PoolTimeout,
)
OVERLOADED = "Push notification service overloaded, retry later"

gate = RequestGate(
    minimum=settings.BOUNCER_MIN_CONCURRENT_REQUESTS,
    maximum=settings.BOUNCER_MAX_CONCURRENT_REQUESTS,
    max_waiting_per_tenant=settings.BOUNCER_MAX_WAITING_PER_SERVER,
    max_wait=settings.BOUNCER_MAX_ADMISSION_WAIT_SECONDS,
    lag_target=settings.BOUNCER_LOOP_LAG_TARGET_SECONDS,
    isolation_lag_target=settings.BOUNCER_ISOLATION_LAG_TARGET_SECONDS,
    isolation_minimum=settings.BOUNCER_ISOLATION_MIN_CONCURRENT_REQUESTS,
    siblings=SiblingSignal.from_environment(),
)


class _ServerLabels:
    """Per-server metric labels, bounded: the busiest servers by name, the rest 'other'."""

    TOP = 20
    RECOMPUTE_EVERY = 1000

    def __init__(self) -> None:
        self._volume: Counter[str] = Counter()
        self._top: set[str] = set()
        self._seen = 0

    def label(self, tenant: str, devices: int) -> str:
        self._volume[tenant] += devices
        self._seen += 1
        if self._seen % self.RECOMPUTE_EVERY == 1 or (len(self._top) < self.TOP):
            self._top = {t for t, _ in self._volume.most_common(self.TOP)}
            if len(self._volume) > 100 * self.TOP:
                self._volume = Counter(dict(self._volume.most_common(self.TOP * 10)))
        return tenant if tenant in self._top else "other"


_labels = _ServerLabels()


async def _admit(tenant: str, devices: int) -> None:
    """Wait for this server's turn, or refuse the request with a quick 503."""
    label = _labels.label(tenant, devices)
    waits = gate.gate.in_use >= gate.gate.capacity or bool(gate.gate.waiting)
    if not await gate.enter(tenant):
        metrics.record_admission(server=label, decision="shed", deliveries=devices)
        logger.warning(
            "Overloaded: server %s has %d notifies waiting (%d in progress); answered 503",
            tenant,
            gate.gate.waiting_for(tenant),
            gate.in_progress,
        )
        raise service_unavailable(OVERLOADED, retry_after=RETRY_AFTER_SECONDS)
    metrics.record_admission(
        server=label, decision="queued" if waits else "admitted", deliveries=devices
    )


# An endpoint's error as its protocol answers it: status, body, headers, and whether the
# connection must close (a body left unread).
ErrorAnswer = tuple[int, bytes, Mapping[str, str], bool]


def _zulip_error(e: Exception, scope: Scope) -> ErrorAnswer:
    """Zulip's envelope, mapped as Django's middleware maps errors for the other endpoints."""
    if isinstance(e, BouncerError):
        return e.status, error_body(e), e.headers, False
    if isinstance(e, BodyTooLarge):
        error = BouncerError("Request body too large", code=ErrorCode.REQUEST_TOO_LARGE, status=413)
        return 413, error_body(error), {}, True
    if isinstance(e, _UNAVAILABLE):
        # PostgreSQL unreachable or restarting: nothing was sent (the look-ups come first).
        # The Zulip server retries.
        logger.error("Database unavailable on %s: %s", scope["path"], e)
        error = service_unavailable(TEMPORARILY_UNAVAILABLE, retry_after=10)
        return 503, error_body(error), error.headers, False
    logger.exception("Unhandled error on %s %s", scope["method"], scope["path"])
    error = BouncerError("Internal server error", code=ErrorCode.INTERNAL_SERVER_ERROR, status=500)
    return 500, error_body(error), {}, False


async def _serve(
    name: str,
    scope: Scope,
    send: Send,
    work: Callable[[], Awaitable[bytes]],
    answer_error: Callable[[Exception, Scope], ErrorAnswer] = _zulip_error,
) -> None:
    """Run an endpoint's work and answer: its success body, or its error as its protocol
    answers it (`answer_error`, called while the error is being handled)."""
    started = time.perf_counter()
    headers: Mapping[str, str] = {}
    close = False
    try:
        status, body = 200, await work()
    except Exception as e:  # noqa: BLE001 - every error gets an answer; answer_error logs
        status, body, headers, close = answer_error(e, scope)
    await respond(send, status, body, headers=headers.items(), close=close)
    metrics.record_request(endpoint=name, status=status, seconds=time.perf_counter() - started)


async def _authenticate(scope: Scope) -> ServerInfo:
    auth = header(scope, b"authorization")
    return await authenticate_server_async(auth.decode("latin-1") if auth else None)


def _json_endpoint[M: Params](
    name: str,
    model: type[M],
    handler: Callable[[ServerInfo, M], Awaitable[dict[str, Any] | None]],
    devices: Callable[[M], int],
) -> Endpoint:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        async def work() -> bytes:
            if scope["method"] != "POST":
                raise BouncerError(
                    "Method Not Allowed",
                    code=ErrorCode.METHOD_NOT_ALLOWED,
                    status=405,
                    headers={"Allow": "POST"},
                )
            _shed_if_queued_too_long(scope)
            raw = await read_body(receive, limit=settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
            server = await _authenticate(scope)
            params, ignored = parse_json_bytes(raw, model)
            tenant = str(server.id)
            await _admit(tenant, max(1, devices(params)))
            try:
                data = await handler(server, params)
            finally:
                gate.leave(tenant)
            return success_body(with_ignored(data or {}, ignored))

        await _serve(name, scope, send, work)

    return endpoint


def _plain_form(scope: Scope) -> bool:
    """A urlencoded UTF-8 form, as every Zulip server sends it. Anything else (multipart,
    another charset) is left to Django's parsers and their hostile-input handling."""
    content_type = (header(scope, b"content-type") or b"").decode("latin-1").lower()
    kind, _, parameters = content_type.partition(";")
    if kind.strip() != "application/x-www-form-urlencoded":
        return False
    charset = parameters.strip().removeprefix("charset=").strip('"') if parameters else "utf-8"
    return charset in ("utf-8", "utf8")


def _form_endpoint[M: Params](
    name: str,
    model: type[M],
    handler: Callable[[ServerInfo, M], Awaitable[dict[str, Any]]],
) -> Callable[[Endpoint], Endpoint]:
    """A form endpoint on the loop for plain forms; others go to `django` (its view)."""

    def bind(django: Endpoint) -> Endpoint:
        async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["method"] != "POST" or not _plain_form(scope):
                await django(scope, receive, send)
                return

            async def work() -> bytes:
                raw = await read_body(receive, limit=settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
                server = await _authenticate(scope)
                try:
                    # Undecodable bytes become U+FFFD, as Django's QueryDict makes them.
                    pairs = parse_qsl(
                        raw.decode("latin-1"),
                        keep_blank_values=True,
                        encoding="utf-8",
                        errors="replace",
                        max_num_fields=settings.DATA_UPLOAD_MAX_NUMBER_FIELDS,
                    )
                except ValueError:  # more fields than allowed
                    raise BouncerError("Too many parameters") from None
                params, ignored = parse_form_data(dict(pairs), model)
                return success_body(with_ignored(await handler(server, params), ignored))

            await _serve(name, scope, send, work)

        return endpoint

    return bind


def _shed_if_queued_too_long(scope: Scope) -> None:
    """The proxy's X-Request-Start stamp, as bouncer/overload.py reads it for Django."""
    stamp = header(scope, b"x-request-start")
    limit = settings.BOUNCER_MAX_QUEUE_SECONDS
    if stamp and limit > 0:
        waited = queued_seconds(stamp.decode("latin-1"), now=time.time())
        if waited is not None and waited > limit:
            metrics.SHED_REQUESTS.inc()
            raise service_unavailable(OVERLOADED, retry_after=RETRY_AFTER_SECONDS)


async def _e2ee(server: ServerInfo, params: E2EENotifyParams) -> dict[str, Any]:
    return await e2ee_notify.notify(server=server, params=params)


async def _legacy(server: ServerInfo, params: LegacyNotifyParams) -> dict[str, Any]:
    return await legacy_notify.notify(server=server, params=params)


async def _test(server: ServerInfo, params: TestNotificationParams) -> None:
    await legacy_notify.send_test_notification(server=server, params=params)


ROUTES: dict[str, Endpoint] = {
    PREFIX + "push/e2ee/notify": _json_endpoint(
        "api/v1/remotes/push/e2ee/notify", E2EENotifyParams, _e2ee, lambda p: len(p.push_requests)
    ),
    PREFIX + "push/notify": _json_endpoint(
        "api/v1/remotes/push/notify",
        LegacyNotifyParams,
        _legacy,
        lambda p: len(p.android_devices) + len(p.apple_devices),
    ),
    PREFIX + "push/test_notification": _json_endpoint(
        "api/v1/remotes/push/test_notification", TestNotificationParams, _test, lambda p: 1
    ),
}

# Form endpoints on the loop, bound to Django's application for the requests they leave to it.
FORM_ROUTES: dict[str, Callable[[Endpoint], Endpoint]] = {
    PREFIX + "push/e2ee/register": _form_endpoint(
        "api/v1/remotes/push/e2ee/register",
        RegisterDeviceParams,
        register_push_device_async,
    ),
}


# --- The Matrix Push Gateway API (matrix/): same loop, admission and engine; Matrix's shapes.

MATRIX_NOTIFY = "/_matrix/push/v1/notify"
# Sygnal's request bound (sygnal/http.py SizeLimitingRequest).
MATRIX_MAX_BODY_BYTES = 512 * 1024


def _matrix_error(e: Exception, scope: Scope) -> ErrorAnswer:
    """Matrix's `{errcode, error}` shape; a Zulip-side refusal (shed by admission, the broker
    down) becomes M_UNKNOWN with its status, so the homeserver retries on a 5xx."""
    if isinstance(e, MatrixError):
        return e.status, matrix_error_body(e), e.headers, False
    if isinstance(e, BodyTooLarge):
        error = MatrixError("Request body too large", errcode="M_TOO_LARGE", status=413)
        return 413, matrix_error_body(error), {}, True
    if isinstance(e, BouncerError):
        error = MatrixError(e.msg, errcode="M_UNKNOWN", status=e.status, headers=e.headers)
        return e.status, matrix_error_body(error), e.headers, False
    if isinstance(e, _UNAVAILABLE):
        logger.error("Database unavailable on %s: %s", scope["path"], e)
        error = MatrixError(TEMPORARILY_UNAVAILABLE, errcode="M_UNKNOWN", status=503)
        return 503, matrix_error_body(error), {"Retry-After": "10"}, False
    logger.exception("Unhandled error on %s %s", scope["method"], scope["path"])
    error = MatrixError("Internal server error", errcode="M_UNKNOWN", status=500)
    return 500, matrix_error_body(error), {}, False


async def _matrix_notify(scope: Scope, receive: Receive, send: Send) -> None:
    async def work() -> bytes:
        if scope["method"] != "POST":
            raise MatrixError(
                "Method not allowed",
                errcode="M_UNRECOGNIZED",
                status=405,
                headers={"Allow": "POST"},
            )
        forwarded = header(scope, b"x-forwarded-for")
        address = access.forwarded_address(
            (scope.get("client") or ("",))[0] or "",
            forwarded.decode("latin-1") if forwarded else None,
        )
        await access.check_async(address)
        _shed_if_queued_too_long(scope)
        raw = await read_body(receive, limit=MATRIX_MAX_BODY_BYTES)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise MatrixError("Expected JSON request body", errcode="M_NOT_JSON") from None
        try:
            notification = parse_body(body)
        except InvalidNotification as e:
            raise MatrixError(str(e)) from None
        tenant = f"matrix:{address}"
        await _admit(tenant, len(notification.devices))
        try:
            rejected = await matrix_notify.notify(n=notification, tenant=tenant)
        finally:
            gate.leave(tenant)
        return json.dumps({"rejected": rejected}).encode()

    await _serve(MATRIX_NOTIFY.lstrip("/"), scope, send, work, _matrix_error)


ROUTES[MATRIX_NOTIFY] = _matrix_notify
