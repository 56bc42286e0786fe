"""Registration transfer (FL 345): a server proves it owns a hostname to take over its registration.

The bouncer hands out a signed, time-limited secret; the server publishes it at
`https://<hostname>/api/v1/zulip-services/verify/<access_token>/`; the bouncer fetches it
from there and, when it matches, issues a new API key.
"""

import base64
import binascii
import logging
import re
import ssl

import httpx
from django.conf import settings
from django.core import signing
from django.db import transaction

from bouncer.errors import BouncerError
from registrations import ratelimit
from registrations.models import AuditLog, RemoteZulipServer
from registrations.services import new_api_key, validate_hostname

logger = logging.getLogger(__name__)

SALT = "remote_server_transfer"
SECRET_MAX_AGE_SECONDS = 10
FETCH_TIMEOUT_SECONDS = 5.0
FETCH_ATTEMPTS = 3
# Zulip's global limit on verify_challenge: each call makes the bouncer fetch a URL.
VERIFY_RATE_LIMIT = (10, 60)
ACCESS_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def _signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=SALT)


def prepare_transfer(*, hostname: str) -> str:
    validate_hostname(hostname)
    if not RemoteZulipServer.objects.filter(hostname=hostname).exists():
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


def _fetch_secret(hostname: str, access_token: str) -> object:
    url = f"https://{hostname}/api/v1/zulip-services/verify/{access_token}/"
    transport = httpx.HTTPTransport(verify=_client_context(), retries=FETCH_ATTEMPTS - 1)
    try:
        with httpx.Client(transport=transport, timeout=FETCH_TIMEOUT_SECONDS) as client:
            response = client.get(url)
    except httpx.TimeoutException:
        raise BouncerError(f"Timed out while connecting to {hostname}") from None
    except httpx.HTTPError as e:
        # TLS failures are ConnectError too; their text says which certificate check failed.
        raise BouncerError(f"Error connecting to {hostname}: {e}") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200:
        if (
            isinstance(body, dict)
            and body.get("code") == "REMOTE_SERVER_VERIFICATION_SECRET_NOT_PREPARED"
        ):
            raise BouncerError("The host reported it has no verification secret.")
        raise BouncerError(f"Error response received from {hostname}: {response.status_code}")
    if not isinstance(body, dict):
        raise BouncerError("The verification secret is malformed")
    return body.get("verification_secret")


def verify_transfer(*, hostname: str, access_token: str) -> tuple[str, str]:
    """Fetch and check the secret; on success the server gets a new key: (uuid, key)."""
    ratelimit.enforce("verify_challenge", limit=VERIFY_RATE_LIMIT)
    validate_hostname(hostname)
    if not ACCESS_TOKEN_RE.match(access_token):
        raise BouncerError("Invalid access_token")
    if not RemoteZulipServer.objects.filter(hostname=hostname).exists():
        raise BouncerError("Registration not found for this hostname")
    _check_secret(_fetch_secret(hostname, access_token), hostname)

    key = new_api_key()
    with transaction.atomic():
        server = (
            RemoteZulipServer.objects.select_for_update()
            .filter(hostname=hostname)
            .order_by("id")
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
