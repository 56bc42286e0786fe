"""Zulip's error codes as wire API: one enum, one exception, one renderer.

Every error the bouncer answers goes through `error_response`, so each one has the
envelope a Zulip server parses: `{"result": "error", "msg": ..., "code": ..., **data}`.
A Zulip server only reads `msg` and `code` (zerver/lib/remote_server.py), and it
treats any status other than exactly 200 as a failure, so success bodies come from
`success_response` with status 200.
"""

import json
import logging
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

from django.core.exceptions import (
    BadRequest,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
)
from django.core.handlers.wsgi import LimitedStream
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError

logger = logging.getLogger(__name__)


class ErrorCode(StrEnum):
    BAD_REQUEST = "BAD_REQUEST"
    REQUEST_VARIABLE_MISSING = "REQUEST_VARIABLE_MISSING"
    UNAUTHORIZED = "UNAUTHORIZED"
    INVALID_ZULIP_SERVER = "INVALID_ZULIP_SERVER"
    HOSTNAME_ALREADY_IN_USE_BOUNCER_ERROR = "HOSTNAME_ALREADY_IN_USE_BOUNCER_ERROR"
    REMOTE_SERVER_DEACTIVATED = "REMOTE_SERVER_DEACTIVATED"
    REGISTRATION_CLOSED = "REGISTRATION_CLOSED"
    RATE_LIMIT_HIT = "RATE_LIMIT_HIT"
    MISSING_REMOTE_REALM = "MISSING_REMOTE_REALM"
    REMOTE_REALM_SERVER_MISMATCH_ERROR = "REMOTE_REALM_SERVER_MISMATCH_ERROR"
    INVALID_BOUNCER_PUBLIC_KEY = "INVALID_BOUNCER_PUBLIC_KEY"
    REQUEST_EXPIRED = "REQUEST_EXPIRED"
    INVALID_REMOTE_PUSH_DEVICE_TOKEN = "INVALID_REMOTE_PUSH_DEVICE_TOKEN"
    REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"


class BouncerError(Exception):
    """An error answered to the caller: code, message, HTTP status and extra fields."""

    def __init__(
        self,
        msg: str,
        *,
        code: ErrorCode = ErrorCode.BAD_REQUEST,
        status: int = 400,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(msg)
        self.msg = msg
        self.code = code
        self.status = status
        self.data = dict(data or {})
        self.headers = dict(headers or {})


def unauthorized(msg: str) -> BouncerError:
    """Zulip re-wraps every server-authentication failure as a 401 UnauthorizedError."""
    return BouncerError(
        msg,
        code=ErrorCode.UNAUTHORIZED,
        status=401,
        headers={"WWW-Authenticate": 'Basic realm="zulip"'},
    )


TEMPORARILY_UNAVAILABLE = "Push notification service temporarily unavailable, retry later"


def service_unavailable(msg: str, *, retry_after: int) -> BouncerError:
    """A bouncer-side fault the Zulip server should retry later (it does, on any 5xx)."""
    return BouncerError(
        msg,
        code=ErrorCode.SERVICE_UNAVAILABLE,
        status=503,
        headers={"Retry-After": str(retry_after)},
    )


def missing_remote_realm() -> BouncerError:
    return BouncerError(
        "Organization not registered", code=ErrorCode.MISSING_REMOTE_REALM, status=403
    )


def remote_realm_server_mismatch() -> BouncerError:
    return BouncerError(
        "Your organization is registered to a different Zulip server. "
        "Please contact Zulip support for assistance in resolving this issue.",
        code=ErrorCode.REMOTE_REALM_SERVER_MISMATCH_ERROR,
        status=403,
    )


def _json_bytes(body: Mapping[str, Any]) -> bytes:
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate echoed from the request (a parameter's name): escaped, the answer
        # is still valid JSON; unescaped it could not be sent at all.
        return json.dumps(body, separators=(",", ":")).encode()


def error_body(error: BouncerError) -> bytes:
    body: dict[str, Any] = {"result": "error", "msg": error.msg, "code": str(error.code)}
    body.update(error.data)
    return _json_bytes(body)


def success_body(data: Mapping[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"result": "success", "msg": ""}
    body.update(data or {})
    return _json_bytes(body)


def error_response(error: BouncerError) -> HttpResponse:
    response = HttpResponse(error_body(error), status=error.status, content_type="application/json")
    for name, value in error.headers.items():
        response[name] = value
    return response


def success_response(data: Mapping[str, Any] | None = None) -> HttpResponse:
    return HttpResponse(success_body(data), status=200, content_type="application/json")


# An answer that leaves more of the request body unread than this closes the connection.
# The server (uvicorn) would otherwise read and discard whatever the client still sends, of
# any size, to keep the connection alive: a 401 to a 1 GB upload would cost the whole gigabyte.
# Below it, the server's own draining is cheaper than a new connection. Only under the ASGI
# server (a2wsgi puts "asgi.scope" in the environ and passes the header on): WSGI servers
# refuse hop-by-hop headers from the application (wsgiref, under runserver, answers 500) and
# drain or close by themselves.
UNREAD_BODY_CLOSE_BYTES = 64 * 1024


def unread_body_bytes(request: HttpRequest) -> int:
    """How much of the declared request body the application has not read."""
    stream = getattr(request, "_stream", None)
    if isinstance(stream, LimitedStream):
        return max(0, int(stream.limit) - int(getattr(stream, "_pos", 0)))
    return 0


def is_api_path(path: str) -> bool:
    return path.startswith("/api/")


class BouncerErrorMiddleware:
    """Renders BouncerError everywhere, and every other API failure, in Zulip's envelope."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self._envelope(request, self.get_response(request))
        if "asgi.scope" in request.META and unread_body_bytes(request) > UNREAD_BODY_CLOSE_BYTES:
            response["Connection"] = "close"
        return response

    def _envelope(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if is_api_path(request.path) and response.status_code in (404, 405):
            if response.get("Content-Type", "").startswith("application/json"):
                return response
            if response.status_code == 404:
                return error_response(
                    BouncerError("Endpoint not found", code=ErrorCode.NOT_FOUND, status=404)
                )
            allowed = response.get("Allow", "")
            error = BouncerError(
                "Method Not Allowed", code=ErrorCode.METHOD_NOT_ALLOWED, status=405
            )
            if allowed:
                error.headers["Allow"] = allowed
            return error_response(error)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, BouncerError):
            return error_response(exception)
        if isinstance(exception, RequestDataTooBig):
            return error_response(
                BouncerError("Request body too large", code=ErrorCode.REQUEST_TOO_LARGE, status=413)
            )
        if isinstance(exception, TooManyFieldsSent):
            return error_response(BouncerError("Too many parameters"))
        if isinstance(exception, MultiPartParserError):
            # A multipart body without a boundary, or one Django cannot parse.
            return error_response(BouncerError("Malformed multipart/form-data body"))
        if isinstance(exception, BadRequest | SuspiciousOperation | UnicodeDecodeError):
            # Django's own refusals of a request (a form in a charset it cannot decode, a
            # malformed header): the caller's fault, and nothing was done yet.
            logger.info("Bad request on %s %s: %s", request.method, request.path, exception)
            return error_response(BouncerError("Malformed request"))
        if is_api_path(request.path) and isinstance(exception, OperationalError | InterfaceError):
            # PostgreSQL unreachable or restarting: not a bug, and nothing was changed (each
            # request's writes are atomic). The Zulip server retries; Django reconnects by
            # itself on a later request.
            logger.error(
                "Database unavailable on %s %s: %s", request.method, request.path, exception
            )
            return error_response(service_unavailable(TEMPORARILY_UNAVAILABLE, retry_after=10))
        if is_api_path(request.path):
            # A genuine bug: log it with its traceback and answer in the envelope, so the
            # Zulip server treats it as a bouncer-side failure and retries later.
            logger.exception("Unhandled error on %s %s", request.method, request.path)
            return error_response(
                BouncerError(
                    "Internal server error", code=ErrorCode.INTERNAL_SERVER_ERROR, status=500
                )
            )
        return None


# --- The Matrix Push Gateway API's errors (matrix/) ----------------------------------------


class MatrixError(Exception):
    """An error answered to a homeserver in Matrix's shape: {"errcode", "error"}."""

    def __init__(
        self,
        error: str,
        *,
        errcode: str = "M_BAD_JSON",
        status: int = 400,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.error = error
        self.errcode = errcode
        self.status = status
        self.data = dict(data or {})
        self.headers = dict(headers or {})


def matrix_error_body(error: MatrixError) -> bytes:
    return _json_bytes({"errcode": error.errcode, "error": error.error, **error.data})


def matrix_error_response(error: MatrixError) -> HttpResponse:
    response = HttpResponse(
        matrix_error_body(error), status=error.status, content_type="application/json"
    )
    for name, value in error.headers.items():
        response[name] = value
    return response
