"""What `mc-hub doctor` and `mc-sidecar doctor` share: findings, running checks, output.

A check is a function (plain or async) returning one `Finding` or several. Each says
ok, warn or fail, what it saw, and for anything but ok the cause and the exact fix,
so the troubleshooting guide's by-hand steps become one command. A check that itself
crashes is a failed finding (the rest still run). `--json` prints the same findings
as data; the exit code is 1 when anything failed, else 0 (warnings do not fail).
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from missioncontrol.version import VERSION


class Verdict(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    """One check's verdict. `check` is a stable dotted name (scripts key on it)."""

    check: str
    verdict: Verdict
    summary: str  # what was seen, one line
    cause: str = ""  # why it is a problem (warn/fail)
    fix: str = ""  # the exact thing to do (warn/fail)
    data: dict[str, Any] = field(default_factory=dict)  # figures for --json

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["verdict"] = self.verdict.value
        return out


def ok(check: str, summary: str, **data: Any) -> Finding:
    return Finding(check, Verdict.OK, summary, data=data)


def warn(check: str, summary: str, cause: str, fix: str, **data: Any) -> Finding:
    return Finding(check, Verdict.WARN, summary, cause, fix, data)


def fail(check: str, summary: str, cause: str, fix: str, **data: Any) -> Finding:
    return Finding(check, Verdict.FAIL, summary, cause, fix, data)


CheckResult = Finding | Sequence[Finding]
Check = Callable[[], CheckResult | Awaitable[CheckResult]]


@dataclass(frozen=True)
class Report:
    program: str
    findings: tuple[Finding, ...]

    @property
    def failed(self) -> bool:
        return any(f.verdict is Verdict.FAIL for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def by_check(self, check: str) -> list[Finding]:
        return [f for f in self.findings if f.check == check]

    def verdict(self, check: str) -> Verdict:
        """The worst verdict among the findings of `check` (KeyError if it did not run)."""
        found = self.by_check(check)
        if not found:
            raise KeyError(f"no finding for check {check!r}")
        order = [Verdict.OK, Verdict.WARN, Verdict.FAIL]
        return max((f.verdict for f in found), key=order.index)

    def as_json(self) -> str:
        counts = {v.value: sum(f.verdict is v for f in self.findings) for v in Verdict}
        return json.dumps(
            {
                "program": self.program,
                "version": VERSION,
                "ok": not self.failed,
                "counts": counts,
                "findings": [f.as_dict() for f in self.findings],
            },
            indent=2,
        )

    def as_text(self) -> str:
        lines = [f"{self.program} {VERSION} doctor"]
        marks = {Verdict.OK: "ok  ", Verdict.WARN: "WARN", Verdict.FAIL: "FAIL"}
        for finding in self.findings:
            lines.append(f"  {marks[finding.verdict]}  {finding.check}: {finding.summary}")
            if finding.verdict is not Verdict.OK:
                if finding.cause:
                    lines.append(f"        cause: {finding.cause}")
                if finding.fix:
                    lines.append(f"        fix:   {finding.fix}")
        failed = sum(f.verdict is Verdict.FAIL for f in self.findings)
        warned = sum(f.verdict is Verdict.WARN for f in self.findings)
        lines.append(
            f"{len(self.findings)} checks: {failed} failed, {warned} warnings"
            if failed or warned
            else f"{len(self.findings)} checks: all ok"
        )
        return "\n".join(lines)


async def run_checks(program: str, checks: Iterable[tuple[str, Check]]) -> Report:
    """Run every check in order; a check that raises becomes a failed finding."""
    findings: list[Finding] = []
    for name, check in checks:
        try:
            result = check()
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = await result
        except Exception as exc:
            findings.append(
                fail(
                    name,
                    "the check itself failed",
                    f"{type(exc).__name__}: {exc}",
                    "run again with --log-level debug and report this as a bug, with the output",
                )
            )
            continue
        if isinstance(result, Finding):
            findings.append(result)
        else:
            findings.extend(cast(Sequence[Finding], result))
    return Report(program, tuple(findings))


def mode_text(mode: int) -> str:
    return f"{mode & 0o7777:04o}"
