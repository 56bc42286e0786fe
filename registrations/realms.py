"""Finding the remote realm a request names, with Zulip's answers for unknown and foreign ones."""

import logging
import uuid
from datetime import timedelta

from django.utils import timezone

from bouncer import rows
from bouncer.errors import BouncerError, missing_remote_realm, remote_realm_server_mismatch
from registrations.models import RemoteRealm, RemoteZulipServer

logger = logging.getLogger(__name__)

# last_request_datetime is for operators; a write per request would cost more than it tells.
LAST_REQUEST_RESOLUTION = timedelta(seconds=30)


def parse_realm_uuid(realm_uuid: str) -> uuid.UUID:
    try:
        return uuid.UUID(realm_uuid)
    except ValueError:
        raise BouncerError("Invalid realm_uuid") from None


def usable_realm(
    *, realm_uuid: uuid.UUID, owner_id: int | None, server_id: int, required: bool
) -> bool:
    """Zulip's answers for a realm a request names: 403 if another server owns it; unknown
    (`owner_id` None): 403 if required, else False (logged). True: the server's own realm."""
    if owner_id is None:
        if required:
            raise missing_remote_realm()
        logger.info("Received request for unknown realm %s, server %s", realm_uuid, server_id)
        return False
    if owner_id != server_id:
        logger.warning("Realm %s of server %s named by server %s", realm_uuid, owner_id, server_id)
        raise remote_realm_server_mismatch()
    return True


def find_realm(*, server: RemoteZulipServer, realm_uuid: str, required: bool) -> RemoteRealm | None:
    """The realm, 403 if another server owns it; unknown: 403 if required, else None (logged)."""
    parsed = parse_realm_uuid(realm_uuid)
    realm = rows.get_by(RemoteRealm, "uuid", parsed)
    owner = realm.server_id if realm is not None else None
    if not usable_realm(realm_uuid=parsed, owner_id=owner, server_id=server.pk, required=required):
        return None
    assert realm is not None
    touch_last_request(realm)
    return realm


def touch_last_request(row: RemoteRealm | RemoteZulipServer) -> None:
    """Record a request's time on a server or realm, at most every LAST_REQUEST_RESOLUTION."""
    now = timezone.now()
    last = row.last_request_datetime
    if last is None or now - last >= LAST_REQUEST_RESOLUTION:
        type(row).objects.filter(pk=row.pk).update(last_request_datetime=now)
        row.last_request_datetime = now
