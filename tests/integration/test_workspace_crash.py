"""A process killed between writing a workspace file and renaming it leaves the old file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sidecar.workspace import TEMP_SUFFIX, FileToWrite, WorkspaceWriter

KILL_BEFORE_RENAME = """
import os, signal, sys
from pathlib import Path
from sidecar import workspace

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

workspace.os.replace = killed  # die after the temp file is written and fsynced
writer = workspace.WorkspaceWriter(Path(sys.argv[1]))
writer.write(sys.argv[2], [workspace.FileToWrite("AGENTS.md", b"NEW " * 50_000)])
"""


def test_kill_between_write_and_rename_keeps_the_old_content(tmp_path: Path) -> None:
    root = tmp_path / "workspaces"
    workspace = str(root / "workspace-mc-1")
    writer = WorkspaceWriter(root)
    writer.write(workspace, [FileToWrite("AGENTS.md", b"old content\n")])

    process = subprocess.run(
        [sys.executable, "-c", KILL_BEFORE_RENAME, str(root), workspace],
        capture_output=True,
        timeout=60,
    )
    assert process.returncode == -9, process.stderr.decode()
    target = Path(workspace) / "AGENTS.md"
    assert target.read_bytes() == b"old content\n"
    leftovers = list(Path(workspace).glob(f".*{TEMP_SUFFIX}"))
    assert len(leftovers) == 1  # the killed write got as far as its temp file

    writer.write(workspace, [FileToWrite("AGENTS.md", b"next content\n")])
    assert target.read_bytes() == b"next content\n"
    assert list(Path(workspace).glob(f".*{TEMP_SUFFIX}")) == []  # the leftover is cleaned
