"""What a Zulip server makes of the bouncer's answers (zerver/lib/remote_server.py and
`POST /mobile_push/e2ee/test_notification`), so tests can assert the code a phone gets.

A transcription of Zulip's mapping (spec part 1 section 6), not of our code.
"""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PhoneError:
    code: str
    status: int
    msg: str


NO_ACTIVE_PUSH_DEVICE = PhoneError("NO_ACTIVE_PUSH_DEVICE", 400, "No active registered push device")
FAILED_TO_CONNECT_BOUNCER = PhoneError(
    "FAILED_TO_CONNECT_BOUNCER",
    502,
    "Network error while connecting to Zulip push notification service.",
)
INTERNAL_SERVER_ERROR_ON_BOUNCER = PhoneError(
    "INTERNAL_SERVER_ERROR_ON_BOUNCER",
    502,
    "Internal server error on Zulip push notification service, retry later.",
)
ADMIN_ACTION_REQUIRED = PhoneError(
    "ADMIN_ACTION_REQUIRED",
    403,
    "Push notification configuration issue on server, contact the server administrator "
    "or retry later.",
)


def e2ee_test_notification_result(
    *, status: int | None, body: Any, requested_token_ids: list[str]
) -> PhoneError | None:
    """The error a phone's E2EE test notification gets, or None for success.

    `status` None means the bouncer could not be reached (timeout, TLS, connection).
    """
    if status is None:
        return FAILED_TO_CONNECT_BOUNCER  # PushNotificationBouncerRetryLaterError
    if status >= 500:
        return INTERNAL_SERVER_ERROR_ON_BOUNCER  # PushNotificationBouncerServerError
    if status >= 400:
        code = body.get("code")
        if code in (
            "MISSING_REMOTE_REALM",
            "INVALID_ZULIP_SERVER",
            "PUSH_NOTIFICATIONS_DISALLOWED",
        ):
            return ADMIN_ACTION_REQUIRED
        # Anything else is a JsonableError carrying the bouncer's message.
        return PhoneError("BAD_REQUEST", 400, body["msg"])
    if status != 200:
        return ADMIN_ACTION_REQUIRED  # "unexpected status code": PushNotificationBouncerError
    for key in (
        "apple_successfully_sent_count",
        "android_successfully_sent_count",
        "delete_token_ids",
        "realm_push_status",
    ):
        if key not in body:
            raise AssertionError(f"a Zulip server would reject this answer: no {key}")
    if set(requested_token_ids) <= set(body["delete_token_ids"]):
        return NO_ACTIVE_PUSH_DEVICE
    return None
