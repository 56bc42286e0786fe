"""A broken MATRIX_APPS_FILE fails the start, as Sygnal refuses to start with one."""

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Error
from django.core.checks import register as register_check


def check_matrix_apps(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    from matrix.config import check_apps

    return [Error(problem, id="matrix.E001") for problem in check_apps()]


def register() -> None:
    register_check(check_matrix_apps)
