"""System checks: a misconfigured deployment fails at start, not on the first notification."""

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register
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
