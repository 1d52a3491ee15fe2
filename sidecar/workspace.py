"""Writes agent workspace files: atomically, with strict names and modes.

A file is written to a temporary file in the same directory, fsynced, renamed
over the target, and the directory is fsynced, so a crash at any point leaves
either the old or the new content, never a mix. Everything a command asks for
is validated before the first byte is written: one bad name or path refuses the
whole command.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from missioncontrol.agent_api import TOKEN_FILE_NAME

# Every file name a command may write; anything else is refused.
ALLOWED_FILES = frozenset(
    {
        "AGENTS.md",
        "SOUL.md",
        "IDENTITY.md",
        "USER.md",
        "MEMORY.md",
        "TOOLS.md",
        "HEARTBEAT.md",
        "BOOTSTRAP.md",
        "APPROVALS.md",  # a lead's approval guidance (read on demand, never injected)
        TOKEN_FILE_NAME,
    }
)
MAX_FILE_BYTES = 256 * 1024
MAX_FILES = len(ALLOWED_FILES)
TEMP_SUFFIX = ".mc-tmp"
DIR_MODE = 0o700
FILE_MODE = 0o644
SECRET_MODE = 0o600


class WorkspaceError(Exception):
    """A workspace write was refused or failed; nothing of the command was written."""

    code = "workspace_error"


class InvalidFileName(WorkspaceError):
    code = "invalid_file_name"


class PathOutsideRoot(WorkspaceError):
    code = "path_outside_workspace_root"


class FileTooLarge(WorkspaceError):
    code = "file_too_large"


@dataclass(frozen=True)
class FileToWrite:
    name: str
    content: bytes
    secret: bool = False
    preserve_if_present: bool = False


def check_file_name(name: str) -> None:
    if name not in ALLOWED_FILES:
        shown = name if len(name) <= 80 else name[:80] + "…"
        raise InvalidFileName(
            f"file name {shown!r} is not allowed; a workspace file must be one of "
            f"{', '.join(sorted(ALLOWED_FILES))}"
        )


def sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def atomic_write(path: Path, content: bytes, mode: int) -> None:
    """Replace `path` with `content` so a crash leaves the old or the new file, never a mix."""
    directory = path.parent
    temp = directory / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not loosen or tighten what we asked for
        view = memoryview(content)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(temp, path)
    fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WorkspaceWriter:
    """Writes files into workspaces that must lie under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def resolve(self, workspace_path: str) -> Path:
        """The workspace directory for a command, refused unless strictly inside the root."""
        candidate = Path(workspace_path)
        if not candidate.is_absolute():
            raise PathOutsideRoot(f"workspace path {workspace_path!r} must be absolute")
        root = Path(os.path.realpath(self.root))
        resolved = Path(os.path.realpath(candidate))
        if resolved == root or root not in resolved.parents:
            raise PathOutsideRoot(
                f"workspace path {workspace_path!r} is not inside the workspace root {self.root}"
            )
        return resolved

    def validate(self, workspace_path: str, files: Sequence[FileToWrite]) -> Path:
        if len(files) > MAX_FILES:
            raise WorkspaceError(f"{len(files)} files in one command; at most {MAX_FILES}")
        seen: set[str] = set()
        for file in files:
            check_file_name(file.name)
            if file.name in seen:
                raise InvalidFileName(f"file {file.name} appears twice in one command")
            seen.add(file.name)
            if len(file.content) > MAX_FILE_BYTES:
                raise FileTooLarge(
                    f"{file.name} is {len(file.content)} bytes; at most {MAX_FILE_BYTES}"
                )
            if file.name == TOKEN_FILE_NAME and not file.secret:
                raise WorkspaceError(f"{TOKEN_FILE_NAME} must be written as a secret file")
        return self.resolve(workspace_path)

    def write(self, workspace_path: str, files: Sequence[FileToWrite]) -> dict[str, str]:
        """Validate, then write; return name -> sha256 of every listed file as now on disk."""
        workspace = self.validate(workspace_path, files)
        self.root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        workspace.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        workspace.chmod(DIR_MODE)
        self._remove_stale_temps(workspace)
        hashes: dict[str, str] = {}
        for file in files:
            target = workspace / file.name
            if file.preserve_if_present and os.path.lexists(target):
                hashes[file.name] = sha256_hex(target.read_bytes())
                continue
            atomic_write(target, file.content, SECRET_MODE if file.secret else FILE_MODE)
            hashes[file.name] = sha256_hex(file.content)
        return hashes

    def hashes(self, workspace_path: str) -> dict[str, str]:
        """sha256 of every allow-listed file present in a workspace (for the inventory)."""
        try:
            workspace = self.resolve(workspace_path)
        except PathOutsideRoot:
            return {}
        found: dict[str, str] = {}
        for name in sorted(ALLOWED_FILES):
            path = workspace / name
            if path.is_file():
                found[name] = sha256_hex(path.read_bytes())
        return found

    @staticmethod
    def _remove_stale_temps(workspace: Path) -> None:
        """Temporary files left by a crash between write and rename."""
        for leftover in workspace.glob(f".*{TEMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)
