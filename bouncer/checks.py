"""System checks: a misconfigured deployment fails at start, not on the first notification."""

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning
from django.db import DatabaseError


def _decodes_to_32_bytes(value: str) -> bool:
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


@register()
def check_key_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if not _decodes_to_32_bytes(settings.BOUNCER_KEY_ENCRYPTION_KEY):
        errors.append(
            Error(
                "BOUNCER_KEY_ENCRYPTION_KEY must be 32 bytes in standard base64.",
                id="bouncer.E001",
            )
        )
    for public, private in settings.PUSH_REGISTRATION_ENCRYPTION_KEYS.items():
        if not (_decodes_to_32_bytes(public) and _decodes_to_32_bytes(private)):
            # Name the public half only: the private one must never reach a log.
            errors.append(
                Error(
                    f"PUSH_REGISTRATION_ENCRYPTION_KEYS: the pair for {public[:44]!r} is not "
                    "two 32-byte base64 keys.",
                    id="bouncer.E002",
                )
            )
    return errors


@register()
def check_push_credentials(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    from delivery.credentials import check_credentials

    return [Error(problem, id="bouncer.E003") for problem in check_credentials()]


@register()
def check_some_push_credentials(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """A warning, not an error: `make run` and a new install start without credentials, and
    every delivery is then refused (counted as config_fault) until they are configured."""
    from delivery.credentials import CredentialsError, default_apns, fcm_credentials_file

    warnings: list[CheckMessage] = []
    try:
        has_apns = default_apns() is not None or bool(settings.PUSH_APPS_FILE)
    except CredentialsError:
        has_apns = True  # configured, but wrongly: bouncer.E003 says how
    if not has_apns:
        warnings.append(
            CheckWarning(
                "No APNs credentials: every delivery to an iPhone is refused.",
                hint="Set APNS_TOKEN_KEY_FILE, APNS_TOKEN_KEY_ID and APNS_TEAM_ID (or "
                "APNS_CERT_FILE, or PUSH_APPS_FILE); docs/credentials.md. "
                "manage.py push_check tests them.",
                id="bouncer.W001",
            )
        )
    if not fcm_credentials_file():
        warnings.append(
            CheckWarning(
                "No FCM credentials: every delivery to an Android phone is refused.",
                hint="Set FCM_CREDENTIALS_FILE to the service-account JSON; "
                "docs/credentials.md. manage.py push_check tests it.",
                id="bouncer.W002",
            )
        )
    return warnings


@register()
def check_redis_for_outcomes(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    if settings.CELERY_BROKER_URL and not settings.REDIS_URL:
        return [
            Error(
                "CELERY_BROKER_URL is not Redis, and REDIS_URL is not set: delivery outcomes, "
                "claims and rate limits need Redis (set REDIS_URL=redis://...).",
                id="bouncer.E005",
            )
        ]
    return []


@register()
def check_delivery_timeouts(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    from delivery.relay import BATCH_TIMEOUT_SECONDS

    timeout = settings.DELIVERY_BATCH_TIMEOUT_SECONDS
    if 0 < timeout < min(settings.DELIVERY_CLAIM_SECONDS, BATCH_TIMEOUT_SECONDS):
        return []
    return [
        Error(
            f"DELIVERY_BATCH_TIMEOUT_SECONDS ({timeout:g}) must be above 0 and below "
            f"DELIVERY_CLAIM_SECONDS ({settings.DELIVERY_CLAIM_SECONDS}) and "
            f"{BATCH_TIMEOUT_SECONDS} s: a batch still sending when its claims lapse can be "
            "sent twice, and one cut short by the relay loses its retries.",
            id="bouncer.E006",
        )
    ]


@register(Tags.database)
def check_bouncer_keys_open(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """Runs with `migrate` (bouncer-migrate.service) and `check --database default` only:
    Django calls database checks from every command, with `databases` set for those two. The
    key commands (bouncer_keys) must keep working while this fails, to repair it."""
    if not databases or not _decodes_to_32_bytes(settings.BOUNCER_KEY_ENCRYPTION_KEY):
        return []  # E001 already says so
    from registrations.keys import unopenable_keys

    try:
        broken = unopenable_keys()
    except DatabaseError:
        return []  # before the first migration there is nothing to open
    return [
        Error(
            f"Bouncer key pair {public} cannot be opened with BOUNCER_KEY_ENCRYPTION_KEY: it "
            "is not the key that sealed it (restored without the right key?).",
            id="bouncer.E004",
        )
        for public in broken
    ]
