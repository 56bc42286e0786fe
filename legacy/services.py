"""Legacy (pre-E2EE) token registration use cases (spec part 1 section 3)."""

import logging
import uuid

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from bouncer.errors import BouncerError
from legacy.models import RemotePushDeviceToken
from registrations.models import TOKEN_MAX_LENGTH, RemoteRealm, RemoteZulipServer
from registrations.realms import find_realm
from registrations.sealing import APNS_APP_ID_RE, token_format_error

logger = logging.getLogger(__name__)

Kind = RemotePushDeviceToken.Kind

# The most legacy tokens one user (of one server, by user id or uuid) may have: a phone has
# one, a user a few phones; past this a registration is refused (400) instead of letting one
# server grow a user's notify fan-out without bound. A token the user already has is
# re-registered as usual.
MAX_TOKENS_PER_USER = 100


def validate_token(token: str, kind: int) -> None:
    """Zulip's validate_bouncer_token_request."""
    if kind not in (Kind.APNS, Kind.FCM):
        raise BouncerError("Invalid token type")
    if not token or len(token) > TOKEN_MAX_LENGTH:
        raise BouncerError("Empty or invalid length token")
    if kind == Kind.APNS and token_format_error(token, "apns") is not None:
        raise BouncerError("Invalid APNS token")
    if kind == Kind.FCM and token_format_error(token, "fcm") is not None:
        raise BouncerError("Invalid FCM token")


def validate_ios_app_id(ios_app_id: str | None) -> None:
    if ios_app_id is not None and not APNS_APP_ID_RE.match(ios_app_id):
        raise BouncerError("ios_app_id has invalid format")


def parse_user_uuid(user_uuid: str | None) -> uuid.UUID | None:
    if user_uuid is None:
        return None
    try:
        return uuid.UUID(user_uuid)
    except ValueError:
        raise BouncerError("Invalid user_uuid") from None


def _realm(
    *, server: RemoteZulipServer, realm_uuid: str | None, user_uuid: uuid.UUID | None
) -> RemoteRealm | None:
    if realm_uuid is None:
        return None
    if user_uuid is None:
        # Zulip asserts this (a 500 there); servers that send realm_uuid always send user_uuid.
        raise BouncerError("Missing user_uuid")
    return find_realm(server=server, realm_uuid=realm_uuid, required=False)


def token_match(token: str, kind: int) -> Q:
    # APNs tokens are hex: the same token may arrive in either case (Zulip compares lower()).
    if kind == Kind.APNS:
        return Q(kind=kind, token__iexact=token)
    return Q(kind=kind, token=token)


def user_match(*, user_id: int | None, user_uuid: uuid.UUID | None) -> Q:
    query = Q(pk__in=[])
    if user_uuid is not None:
        query |= Q(user_uuid=user_uuid)
    if user_id is not None:
        query |= Q(user_id=user_id)
    return query


def register_token(
    *,
    server: RemoteZulipServer,
    token: str,
    kind: int,
    user_id: int | None,
    user_uuid: str | None,
    realm_uuid: str | None,
    ios_app_id: str | None,
) -> None:
    validate_token(token, kind)
    validate_ios_app_id(ios_app_id)
    if kind == Kind.APNS and ios_app_id is None:
        raise BouncerError("Missing ios_app_id")
    if user_id is None and user_uuid is None:
        raise BouncerError("Missing user_id or user_uuid")
    parsed_uuid = parse_user_uuid(user_uuid)
    realm = _realm(server=server, realm_uuid=realm_uuid, user_uuid=parsed_uuid)
    with transaction.atomic():
        users_tokens = RemotePushDeviceToken.objects.filter(server=server).filter(
            user_match(user_id=user_id, user_uuid=parsed_uuid)
        )
        if (
            users_tokens.count() >= MAX_TOKENS_PER_USER
            and not users_tokens.filter(token_match(token, kind)).exists()
        ):
            raise BouncerError(f"Too many push tokens for this user (limit: {MAX_TOKENS_PER_USER})")
        if user_id is not None and parsed_uuid is not None:
            # Both identities: the uuid-only row replaces any id-only row (Zulip's rule).
            RemotePushDeviceToken.objects.filter(server=server, user_id=user_id).filter(
                token_match(token, kind)
            ).delete()
            user_id = None
        # ON CONFLICT DO NOTHING: a repeated registration changes nothing, even concurrently.
        RemotePushDeviceToken.objects.bulk_create(
            [
                RemotePushDeviceToken(
                    server=server,
                    user_id=user_id,
                    user_uuid=parsed_uuid,
                    remote_realm=realm,
                    kind=kind,
                    token=token,
                    ios_app_id=ios_app_id,
                    created=timezone.now(),
                )
            ],
            ignore_conflicts=True,
        )


def unregister_token(
    *,
    server: RemoteZulipServer,
    token: str,
    kind: int,
    user_id: int | None,
    user_uuid: str | None,
    realm_uuid: str | None,
) -> None:
    validate_token(token, kind)
    if user_id is None and user_uuid is None:
        raise BouncerError("Missing user_id or user_uuid")
    parsed_uuid = parse_user_uuid(user_uuid)
    _realm(server=server, realm_uuid=realm_uuid, user_uuid=parsed_uuid)
    deleted, _ = (
        RemotePushDeviceToken.objects.filter(server=server)
        .filter(token_match(token, kind))
        .filter(user_match(user_id=user_id, user_uuid=parsed_uuid))
        .delete()
    )
    if deleted == 0:
        raise BouncerError("Token does not exist")


def unregister_all_tokens(
    *,
    server: RemoteZulipServer,
    user_id: int | None,
    user_uuid: str | None,
    realm_uuid: str | None,
) -> None:
    if user_id is None and user_uuid is None:
        raise BouncerError("Missing user_id or user_uuid")
    parsed_uuid = parse_user_uuid(user_uuid)
    _realm(server=server, realm_uuid=realm_uuid, user_uuid=parsed_uuid)
    RemotePushDeviceToken.objects.filter(server=server).filter(
        user_match(user_id=user_id, user_uuid=parsed_uuid)
    ).delete()
