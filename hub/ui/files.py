"""An agent's workspace files: what the hub rendered beside what the sidecar wrote.

`compare(rendered, reported)` is pure. `rendered` comes from the agent's latest
ApplyAgent in the outbox; `reported` from the sidecar's answer to it (the file
hashes in its `command.acked` entry). Nothing derived from a secret file is shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hub.provisioning.agents import RenderedFileDigest
from missioncontrol.agent_api import TOKEN_FILE_NAME

SAME, DIFFERENT, MISSING, KEPT, SECRET, UNRENDERED = (
    "same",
    "different",
    "not reported",
    "kept (written once)",
    "secret",
    "not rendered by the hub",
)


@dataclass(frozen=True)
class FileCheck:
    name: str
    rendered_sha256: str | None
    reported_sha256: str | None
    verdict: str

    @property
    def drifted(self) -> bool:
        return self.verdict == DIFFERENT


def compare(
    rendered: list[RenderedFileDigest], reported: Mapping[str, str] | None
) -> list[FileCheck]:
    reported = dict(reported or {})
    checks: list[FileCheck] = []
    for item in rendered:
        theirs = reported.pop(item.name, None)
        if item.secret:
            checks.append(FileCheck(item.name, None, None, SECRET))
        elif theirs is None:
            checks.append(FileCheck(item.name, item.sha256, None, MISSING))
        elif theirs == item.sha256:
            checks.append(FileCheck(item.name, item.sha256, theirs, SAME))
        elif item.preserve_if_present:
            # USER.md, MEMORY.md: the agent's own once written; a difference is expected.
            checks.append(FileCheck(item.name, item.sha256, theirs, KEPT))
        else:
            checks.append(FileCheck(item.name, item.sha256, theirs, DIFFERENT))
    for name in sorted(reported):
        if name == TOKEN_FILE_NAME:
            checks.append(FileCheck(name, None, None, SECRET))
        else:
            checks.append(FileCheck(name, None, reported[name], UNRENDERED))
    return checks
