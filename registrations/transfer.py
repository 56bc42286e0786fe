"""Registration transfer (FL 345): a server proves it owns a hostname to take over its registration.

The bouncer hands out a signed, time-limited secret; the server publishes it at
`https://<hostname>/api/v1/zulip-services/verify/<access_token>/`; the bouncer fetches it
from there and, when it matches, issues a new API key.
"""

import base64
import binascii
import ipaddress
import logging
import re
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core import signing
from django.db import transaction

from bouncer.errors import BouncerError
from bouncer.params import loads
from registrations import ratelimit
from registrations.models import AuditLog, RemoteZulipServer
from registrations.services import new_api_key, validate_hostname

logger = logging.getLogger(__name__)

SALT = "remote_server_transfer"
SECRET_MAX_AGE_SECONDS = 10
# One deadline for the whole fetch (name resolution, connection, TLS, answer): a Zulip server
# answers at once, and a request thread must not wait on a slow or hostile host.
FETCH_DEADLINE_SECONDS = 4.0
# The answer is a JSON envelope around a ~150-character secret.
FETCH_BODY_LIMIT_BYTES = 4096
# \Z, not $: $ also matches before a trailing newline, which would end up in the URL.
ACCESS_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}\Z")

# Zulip's messages: the same few words whatever happened, so that the endpoint tells a caller
# nothing about hosts or networks beyond "it did not work"; the log has the details.
CONNECTION_ERROR = "Connection error occurred while communicating with the host."
TLS_ERROR = "SSL error occurred while communicating with the host."
TIMEOUT_ERROR = "The request timed out while communicating with the host."

# Name resolution has no timeout of its own; it runs here so the deadline covers it. A few
# threads: a resolver that hangs for everyone makes later calls time out, not pile up threads.
_resolver = ThreadPoolExecutor(max_workers=4, thread_name_prefix="transfer-dns")


def _signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=SALT)


def prepare_transfer(*, hostname: str) -> str:
    validate_hostname(hostname)
    # Deactivated servers no longer hold their hostname (Zulip's rule).
    if not RemoteZulipServer.objects.filter(hostname=hostname, deactivated=False).exists():
        raise BouncerError(f"{hostname} not yet registered")
    return base64.b16encode(_signer().sign(hostname).encode()).decode()


def _check_secret(secret: object, hostname: str) -> None:
    if not isinstance(secret, str):
        raise BouncerError("The verification secret is malformed")
    try:
        signed = base64.b16decode(secret).decode()
    except (binascii.Error, ValueError):
        raise BouncerError("The verification secret is malformed") from None
    try:
        signed_hostname = _signer().unsign(signed, max_age=SECRET_MAX_AGE_SECONDS)
    except signing.SignatureExpired:
        raise BouncerError("The verification secret has expired") from None
    except signing.BadSignature:
        raise BouncerError("The verification secret is invalid") from None
    if signed_hostname != hostname:
        raise BouncerError("The verification secret is for a different hostname")


def _client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.PUSH_CA_FILE:
        context.load_verify_locations(cafile=settings.PUSH_CA_FILE)
    return context


class FetchFailed(Exception):
    """The secret could not be fetched; `msg` is what the caller is told."""

    def __init__(self, msg: str, detail: str) -> None:
        super().__init__(detail)
        self.msg = msg


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchFailed(TIMEOUT_ERROR, "deadline passed")
    return left


def _address(host: str, port: int, deadline: float) -> str:
    """The address to connect to: the first the name resolves to, all of them public unless
    BOUNCER_TRANSFER_ALLOW_PRIVATE_HOSTS (else any host could make the bouncer fetch from its
    own network). Connecting to the checked address, not the name again, means a second
    resolution cannot point elsewhere."""
    future = _resolver.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=_remaining(deadline))
    except FutureTimeout:
        raise FetchFailed(TIMEOUT_ERROR, "name resolution timed out") from None
    except (OSError, UnicodeError) as e:
        raise FetchFailed(CONNECTION_ERROR, f"name resolution failed: {e}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise FetchFailed(CONNECTION_ERROR, "no address")
    if not settings.BOUNCER_TRANSFER_ALLOW_PRIVATE_HOSTS:
        refused = [a for a in addresses if not a.is_global or a.is_multicast]
        if refused:
            raise FetchFailed(CONNECTION_ERROR, f"non-public address {refused[0]} refused")
    return str(addresses[0])


def _fetch_secret(hostname: str, access_token: str) -> object:
    try:
        return _fetch(hostname, access_token)
    except FetchFailed as e:
        logger.info("Transfer verification of %s failed: %s", hostname, e)
        raise BouncerError(e.msg) from None


def _fetch(hostname: str, access_token: str) -> object:
    deadline = time.monotonic() + FETCH_DEADLINE_SECONDS
    try:
        parts = urlsplit(f"https://{hostname}")
        host, port = parts.hostname, parts.port or 443
    except ValueError as e:
        raise FetchFailed(CONNECTION_ERROR, f"unusable hostname: {e}") from None
    if not host:
        raise FetchFailed(CONNECTION_ERROR, "no host")
    address = _address(host, port, deadline)
    literal = f"[{address}]" if ":" in address else address
    path = f"/api/v1/zulip-services/verify/{access_token}/"
    try:
        # No retries and no redirects: one answer from the host itself, within the deadline.
        with httpx.Client(
            verify=_client_context(), timeout=_remaining(deadline), follow_redirects=False
        ) as client:
            request = client.build_request(
                "GET",
                f"https://{literal}:{port}{path}",
                headers={"Host": hostname},
                # TLS names the host (SNI) and the certificate is checked against it, while
                # the connection goes to the address checked above.
                extensions={"sni_hostname": host},
            )
            response = client.send(request, stream=True)
            try:
                body = _read_capped(response, deadline)
            finally:
                response.close()
    except httpx.TimeoutException as e:
        raise FetchFailed(TIMEOUT_ERROR, repr(e)) from None
    except httpx.ConnectError as e:
        tls = isinstance(e.__context__, ssl.SSLError) or "SSL" in str(e)
        raise FetchFailed(TLS_ERROR if tls else CONNECTION_ERROR, repr(e)) from None
    except httpx.HTTPError as e:
        raise FetchFailed(CONNECTION_ERROR, repr(e)) from None
    try:
        parsed = loads(body)
    except ValueError:
        parsed = None
    if response.status_code != 200:
        if (
            isinstance(parsed, dict)
            and parsed.get("code") == "REMOTE_SERVER_VERIFICATION_SECRET_NOT_PREPARED"
        ):
            raise BouncerError("The host reported it has no verification secret.")
        raise FetchFailed(
            f"Error response received from the host: {response.status_code}",
            f"status {response.status_code}",
        )
    if not isinstance(parsed, dict):
        raise BouncerError("The verification secret is malformed")
    return parsed.get("verification_secret")


def _read_capped(response: httpx.Response, deadline: float) -> bytes:
    body = b""
    for chunk in response.iter_raw():
        body += chunk
        if len(body) > FETCH_BODY_LIMIT_BYTES:
            raise FetchFailed(CONNECTION_ERROR, "answer larger than the limit")
        _remaining(deadline)
    return body


def verify_rate_limit(*, address: str, hostname: str) -> None:
    """Each verification makes the bouncer fetch a URL: limited per source address and per
    hostname, so that one caller can neither use the bouncer against a host nor use up
    everyone's verifications (a single limit for all callers did both)."""
    limit = settings.BOUNCER_VERIFY_RATE_LIMIT
    ratelimit.enforce(f"verify_challenge:address:{address}", limit=limit)
    ratelimit.enforce(f"verify_challenge:hostname:{ratelimit.digest(hostname)}", limit=limit)


def verify_transfer(*, hostname: str, access_token: str, address: str) -> tuple[str, str]:
    """Fetch and check the secret; on success the active server with this hostname gets a new
    key: (uuid, key)."""
    validate_hostname(hostname)
    verify_rate_limit(address=address, hostname=hostname)
    if not ACCESS_TOKEN_RE.match(access_token):
        raise BouncerError("Invalid access_token")
    if not RemoteZulipServer.objects.filter(hostname=hostname, deactivated=False).exists():
        raise BouncerError("Registration not found for this hostname")
    _check_secret(_fetch_secret(hostname, access_token), hostname)

    key = new_api_key()
    with transaction.atomic():
        server = (
            RemoteZulipServer.objects.select_for_update()
            .filter(hostname=hostname, deactivated=False)
            .first()
        )
        if server is None:
            raise BouncerError("Registration not found for this hostname")
        server.set_api_key(key)
        server.save(update_fields=["api_key_hash", "last_updated"])
        AuditLog.objects.create(
            server=server, event_type=AuditLog.Event.REMOTE_SERVER_REGISTRATION_TRANSFERRED
        )
    logger.info("Registration of %s transferred to a new key", hostname)
    return str(server.uuid), key
