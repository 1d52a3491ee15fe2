"""The chaos report goes to the end-of-run summary, so `make test` prints its figures."""

from __future__ import annotations

from typing import Any

reports: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not reports:
        return
    terminalreporter.section("chaos")
    for text in reports:
        for line in text.splitlines():
            terminalreporter.write_line(line)
