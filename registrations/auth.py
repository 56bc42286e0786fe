"""HTTP Basic authentication of Zulip servers, exactly as zilencer/auth.py answers it."""

import base64
import binascii
import logging
import uuid

from django.conf import settings
from django.http import HttpRequest

from bouncer import rows
from bouncer.errors import BouncerError, unauthorized
from registrations import lookups, ratelimit
from registrations.lookups import ServerInfo
from registrations.models import RemoteZulipServer
from registrations.realms import touch_last_request

logger = logging.getLogger(__name__)

DEACTIVATED_MESSAGE = (
    "The mobile push notification service registration for your server has been deactivated"
)


def _credentials(request: HttpRequest) -> tuple[str, str]:
    return credentials_from(request.META.get("HTTP_AUTHORIZATION"))


def credentials_from(header: str | None) -> tuple[str, str]:
    """(role, key) from an Authorization header, or Zulip's 400/401 answers."""
    if header is None:
        raise unauthorized("Missing authorization header for basic auth")
    try:
        auth_type, encoded = header.split()
        if auth_type.lower() != "basic":
            raise BouncerError("This endpoint requires HTTP basic authentication.")
        role, api_key = base64.b64decode(encoded, validate=True).decode().split(":")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise unauthorized("Invalid authorization header for basic auth") from None
    return role, api_key


def not_registered_message(role: str) -> str:
    return (
        f"Zulip server auth failure: {role} is not registered -- "
        "did you run `manage.py register_server`?"
    )


def key_mismatch_message(role: str) -> str:
    return f"Zulip server auth failure: key does not match role {role}"


def find_server(role: str) -> RemoteZulipServer | None:
    try:
        server_uuid = uuid.UUID(role)
    except ValueError:
        return None
    return rows.get_by(RemoteZulipServer, "uuid", server_uuid)


def authenticate_server(request: HttpRequest) -> RemoteZulipServer:
    """The server a request comes from, or the 400/401/429 Zulip answers instead.

    Failed authentications are counted per source address; past
    BOUNCER_AUTH_FAILURE_RATE_LIMIT a failure is answered 429 instead of 401 until the window
    ends. Only failures are counted, so a successful request costs no extra round trip to
    Redis, and a server that shares its address with a guesser keeps working."""
    try:
        server = _authenticate(request)
    except BouncerError as e:
        if e.status == 401:
            address = ratelimit.client_address(request)
            verdict = ratelimit.hit(
                f"auth_failures:{address}", limit=settings.BOUNCER_AUTH_FAILURE_RATE_LIMIT
            )
            if not verdict.allowed:
                logger.warning("Authentication failures from %s past the limit", address)
                raise ratelimit.rate_limited(verdict.retry_after) from None
        raise
    ratelimit.enforce(f"server:{server.pk}")
    touch_last_request(server)
    return server


def _authenticate(request: HttpRequest) -> RemoteZulipServer:
    role, api_key = _credentials(request)
    if "@" in role:
        raise BouncerError("Must validate with valid Zulip server API key")
    server = find_server(role)
    if server is None:
        raise unauthorized(not_registered_message(role))
    if not server.api_key_matches(api_key):
        raise unauthorized(key_mismatch_message(role))
    if server.deactivated:
        raise unauthorized(DEACTIVATED_MESSAGE)
    return server


async def authenticate_server_async(header: str | None) -> ServerInfo:
    """`authenticate_server` for the event loop: the same answers, from the server cache."""
    role, api_key = credentials_from(header)
    if "@" in role:
        raise BouncerError("Must validate with valid Zulip server API key")
    try:
        server_uuid = uuid.UUID(role)
    except ValueError:
        raise unauthorized(not_registered_message(role)) from None
    server = await lookups.server_by_uuid(server_uuid)
    if server is None:
        raise unauthorized(not_registered_message(role))
    if not server.key_matches(api_key):
        raise unauthorized(key_mismatch_message(role))
    if server.deactivated:
        raise unauthorized(DEACTIVATED_MESSAGE)
    await ratelimit.enforce_async(f"server:{server.id}")
    lookups.touch_last_request(lookups.server_table(), server.id)
    return server
