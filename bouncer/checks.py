"""System checks: a misconfigured deployment fails at start, not on the first notification."""

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, register


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
