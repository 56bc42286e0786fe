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


def find_realm(*, server: RemoteZulipServer, realm_uuid: str, required: bool) -> RemoteRealm | None:
    """The realm, 403 if another server owns it; unknown: 403 if required, else None (logged)."""
    try:
        parsed = uuid.UUID(realm_uuid)
    except ValueError:
        raise BouncerError("Invalid realm_uuid") from None
    realm = rows.get_by(RemoteRealm, "uuid", parsed)
    if realm is None:
        if required:
            raise missing_remote_realm()
        logger.info("Received request for unknown realm %s, server %s", parsed, server.pk)
        return None
    if realm.server_id != server.pk:
        logger.warning(
            "Realm %s of server %s named by server %s", parsed, realm.server_id, server.pk
        )
        raise remote_realm_server_mismatch()
    touch_last_request(realm)
    return realm


def touch_last_request(row: RemoteRealm | RemoteZulipServer) -> None:
    """Record a request's time on a server or realm, at most every LAST_REQUEST_RESOLUTION."""
    now = timezone.now()
    last = row.last_request_datetime
    if last is None or now - last >= LAST_REQUEST_RESOLUTION:
        type(row).objects.filter(pk=row.pk).update(last_request_datetime=now)
        row.last_request_datetime = now
