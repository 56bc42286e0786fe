"""The browser tests' screenshots, listed at the end of the run wherever pytest captured output."""

from pathlib import Path

import pytest

SCREENSHOTS: list[Path] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SCREENSHOTS:
        terminalreporter.section("browser screenshots")
        for path in SCREENSHOTS:
            terminalreporter.write_line(str(path))
