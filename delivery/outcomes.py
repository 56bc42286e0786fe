"""What an APNs or FCM answer means, decided once, and the retry policy (pure: no I/O).

Only three answers say a token is dead: APNs Unregistered / BadDeviceToken /
DeviceTokenNotForTopic and FCM UNREGISTERED. Everything else is transient (retried), a
fault of the bouncer's own configuration (token kept, operator alerted) or a message the
upstream refuses (token kept, not retried).
"""

import random
from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    DELIVERED = "delivered"
    TOKEN_DEAD = "token_dead"
    RETRY = "retry"
    CONFIG_FAULT = "config_fault"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class SendResult:
    verdict: Verdict
    status: int | None  # HTTP status from upstream; None when no answer arrived
    reason: str | None  # APNs reason, FCM errorCode, or our own name ("Timeout", ...)
    upstream_id: str | None  # apns-id or FCM message name
    retry_after: float | None
    latency: float  # seconds

    @classmethod
    def unanswered(cls, verdict: Verdict, reason: str, *, latency: float) -> "SendResult":
        """A result decided here, without an answer from Apple or Google."""
        return cls(
            verdict=verdict,
            status=None,
            reason=reason,
            upstream_id=None,
            retry_after=None,
            latency=latency,
        )


# Reasons we give ourselves when no upstream answer arrived.
TIMEOUT = "Timeout"
CONNECTION_ERROR = "ConnectionError"
NO_CREDENTIALS = "NoCredentials"


def _normalise(reason: str | None) -> str:
    # Apple's docs and wire disagree on some spellings (BadEnvironmentKeyIdInToken is sent as
    # BadEnvironmentKeyInToken): compare without case and without "Id".
    return (reason or "").replace("Id", "").replace("ID", "").lower()


_APNS_REASONS: dict[str, Verdict] = {
    _normalise(reason): verdict
    for reason, verdict in [
        # The token is dead: expire it and tell the Zulip server.
        ("Unregistered", Verdict.TOKEN_DEAD),  # 410: the app was removed
        ("ExpiredToken", Verdict.TOKEN_DEAD),  # 410: newer name for the same
        ("BadDeviceToken", Verdict.TOKEN_DEAD),  # 400: not a token of this environment
        ("DeviceTokenNotForTopic", Verdict.TOKEN_DEAD),  # 400: token of another app
        # Our credentials or app set-up are wrong: keep the token, alert the operator.
        ("BadCertificate", Verdict.CONFIG_FAULT),
        ("BadCertificateEnvironment", Verdict.CONFIG_FAULT),
        ("ExpiredProviderToken", Verdict.CONFIG_FAULT),
        ("InvalidProviderToken", Verdict.CONFIG_FAULT),
        ("MissingProviderToken", Verdict.CONFIG_FAULT),
        ("UnrelatedKeyIdInToken", Verdict.CONFIG_FAULT),
        ("BadEnvironmentKeyIdInToken", Verdict.CONFIG_FAULT),
        ("Forbidden", Verdict.CONFIG_FAULT),
        ("MissingTopic", Verdict.CONFIG_FAULT),
        ("TopicDisallowed", Verdict.CONFIG_FAULT),
        ("BadTopic", Verdict.CONFIG_FAULT),
        # Transient: Apple asks to slow down or is unwell.
        ("TooManyRequests", Verdict.RETRY),  # 429: this token gets too many
        ("TooManyProviderTokenUpdates", Verdict.RETRY),  # 429: our JWT churns; next one is fine
        ("InternalServerError", Verdict.RETRY),  # 500
        ("ServiceUnavailable", Verdict.RETRY),  # 503
        ("Shutdown", Verdict.RETRY),  # 503: the server is going away; reconnect
        ("IdleTimeout", Verdict.RETRY),  # 400: the connection idled; a new one works
        # The message itself is refused: retrying the same bytes cannot help.
        ("PayloadTooLarge", Verdict.REJECTED),
        ("PayloadEmpty", Verdict.REJECTED),
        ("BadCollapseId", Verdict.REJECTED),
        ("BadExpirationDate", Verdict.REJECTED),
        ("BadMessageId", Verdict.REJECTED),
        ("BadPriority", Verdict.REJECTED),
        ("DuplicateHeaders", Verdict.REJECTED),
        ("InvalidPushType", Verdict.REJECTED),
        ("MissingDeviceToken", Verdict.REJECTED),
        ("BadPath", Verdict.REJECTED),
        ("MethodNotAllowed", Verdict.REJECTED),
    ]
}

_FCM_CODES: dict[str, Verdict] = {
    "UNREGISTERED": Verdict.TOKEN_DEAD,  # 404: the app instance is gone
    "SENDER_ID_MISMATCH": Verdict.CONFIG_FAULT,  # 403: our project is not the token's
    "THIRD_PARTY_AUTH_ERROR": Verdict.CONFIG_FAULT,  # 401: APNs/web-push credential in Firebase
    "APNS_AUTH_ERROR": Verdict.CONFIG_FAULT,  # older name of the same
    "PERMISSION_DENIED": Verdict.CONFIG_FAULT,  # 403: the service account lacks the role
    "UNAUTHENTICATED": Verdict.CONFIG_FAULT,  # 401: our OAuth token is refused
    "QUOTA_EXCEEDED": Verdict.RETRY,  # 429: wait at least a minute
    "RESOURCE_EXHAUSTED": Verdict.RETRY,
    "UNAVAILABLE": Verdict.RETRY,  # 503
    "INTERNAL": Verdict.RETRY,  # 500
    "INVALID_ARGUMENT": Verdict.REJECTED,  # 400: malformed message (or token: kept, as Zulip)
    "NOT_FOUND": Verdict.REJECTED,
}


def _by_status(status: int) -> Verdict:
    """The named default for an unknown reason: decided by the HTTP status class."""
    if status == 200:
        return Verdict.DELIVERED
    if status == 429 or status >= 500:
        return Verdict.RETRY
    if status in (401, 403):
        return Verdict.CONFIG_FAULT
    return Verdict.REJECTED


# A VoIP (PushKit) push's answers that mean something else than an alert's.
_APNS_VOIP_REASONS: dict[str, Verdict] = {
    _normalise(reason): verdict
    for reason, verdict in [
        # The header is right (the sender sets "voip" itself): the app or its key is not
        # enabled for VoIP pushes, which only the operator can fix. Keep the token.
        ("InvalidPushType", Verdict.CONFIG_FAULT),
    ]
}


def classify_apns(status: int, reason: str | None, *, push_type: str | None = None) -> Verdict:
    if status == 200:
        return Verdict.DELIVERED
    key = _normalise(reason)
    if push_type == "voip" and key in _APNS_VOIP_REASONS:
        return _APNS_VOIP_REASONS[key]
    return _APNS_REASONS.get(key) or _by_status(status)


def classify_fcm(status: int, error_code: str | None) -> Verdict:
    if status == 200:
        return Verdict.DELIVERED
    return _FCM_CODES.get((error_code or "").upper()) or _by_status(status)


def is_known_apns_reason(reason: str | None) -> bool:
    return _normalise(reason) in _APNS_REASONS


def is_known_fcm_code(error_code: str | None) -> bool:
    return (error_code or "").upper() in _FCM_CODES


# --- Retry policy --------------------------------------------------------------------------

RETRY_BASE_SECONDS = 2.0
RETRY_MAX_SECONDS = 240.0  # stays below the broker's visibility timeout (300 s)
# Google: after QUOTA_EXCEEDED wait at least a minute before the first retry.
QUOTA_MIN_SECONDS = 60.0
MAX_ATTEMPTS = 12


def next_retry_delay(
    *, verdict_reason: str | None, attempt: int, retry_after: float | None
) -> float:
    """Exponential backoff, jittered over the upper half of the step.

    Retry-After and FCM's quota floor win when they ask for longer.
    """
    ceiling = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** max(attempt - 1, 0))
    delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - spreading load, not a secret
    if retry_after is not None:
        delay = max(delay, retry_after)
    if (verdict_reason or "").upper() in ("QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED"):
        delay = max(delay, QUOTA_MIN_SECONDS)
    return delay


def give_up(*, attempt: int, now: float, give_up_at: float) -> bool:
    """Whether a failed attempt is the last: the window (or expiration) is over."""
    return attempt >= MAX_ATTEMPTS or now >= give_up_at
