"""Writes agent workspace files: atomically, with strict names and modes.

A file is written to a temporary file in the same directory, fsynced, renamed
over the target, and the directory is fsynced, so a crash at any point leaves
either the old or the new content, never a mix. Everything a command asks for
is validated before the first byte is written: one bad name or path refuses the
whole command.

Some files are the agent's (USER.md, MEMORY.md grow as it works), so what is on disk
may be anything the agent's shell made: a FIFO, a symlink to a device, a huge file.
Only a regular file (not followed through a link) counts as present
(`regular_file_digest`); it is opened non-blocking and hashed in chunks up to a bound
(a larger one is kept, and reported by its size), so no file can block or flood the
sidecar, and no agent's memory is overwritten for being large. These methods do
blocking I/O: the sidecar calls them from a worker thread, never on its event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from missioncontrol.agent_api import TOKEN_FILE_NAME
from missioncontrol.workspace_files import ALLOWED_FILES  # every name a command may write

MAX_FILE_BYTES = 256 * 1024
# An agent's own file (MEMORY.md may outgrow what the hub writes) is kept whatever its
# size; beyond this its hash is a size marker rather than a read of all of it.
MAX_HASHED_BYTES = 64 * 1024 * 1024
MAX_FILES = len(ALLOWED_FILES)
OVERSIZED = "oversized:"  # a digest past the bound: this prefix, then the size in bytes
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


def regular_file_digest(path: Path, max_bytes: int | None = None) -> str | None:
    """sha256 hex of `path` if it is a regular file, read in chunks; `oversized:<bytes>`
    past `max_bytes`; None if it is anything else.

    Not a symlink (not followed), FIFO, socket, device or directory: `lstat` decides,
    the open is non-blocking and refuses links, and the opened file must be the one
    that was checked, so swapping it in between changes nothing."""
    max_bytes = MAX_HASHED_BYTES if max_bytes is None else max_bytes
    try:
        checked = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(checked.st_mode):
        return None
    if checked.st_size > max_bytes:
        return f"{OVERSIZED}{checked.st_size}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    digest = hashlib.sha256()
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino):
            return None
        read = 0
        while chunk := os.read(fd, 256 * 1024):
            read += len(chunk)
            if read > max_bytes:
                return f"{OVERSIZED}{read}"
            digest.update(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return digest.hexdigest()


def remove_tree(path: Path, *, within: Path) -> bool:
    """Delete `path` (a directory tree, a file or a link; links are never followed) if it
    lies strictly inside `within`; True if something was there to remove."""
    if path.name in ("", ".", ".."):
        return False
    root = Path(os.path.realpath(within))
    parent = Path(os.path.realpath(path.parent))
    if parent != root and root not in parent.parents:
        return False
    target = parent / path.name
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(target)  # removes links inside it, never what they point to
    else:
        target.unlink()
    return True


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
        for file in files:
            # A rename cannot replace a directory: refuse before the first write.
            if os.path.isdir(workspace / file.name) and not os.path.islink(workspace / file.name):
                raise WorkspaceError(
                    f"{workspace / file.name} is a directory, so {file.name} cannot be "
                    "written there; move the directory away and apply the agent again"
                )
        hashes: dict[str, str] = {}
        for file in files:
            target = workspace / file.name
            present = regular_file_digest(target) if file.preserve_if_present else None
            if present is not None:  # the agent's own file, whatever its size, is kept
                hashes[file.name] = present
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
            digest = regular_file_digest(workspace / name)
            if digest is not None:
                found[name] = digest
        return found

    def digest(self, workspace_path: str, name: str) -> str | None:
        """sha256 of one allow-listed file in a workspace, as `regular_file_digest` reads it."""
        check_file_name(name)
        try:
            workspace = self.resolve(workspace_path)
        except PathOutsideRoot:
            return None
        return regular_file_digest(workspace / name)

    def remove_token_file(self, workspace_path: str) -> bool:
        """Delete the workspace's token file (whatever kind of entry it is); True if one was
        there. Refused outside the root like every other workspace operation."""
        try:
            workspace = self.resolve(workspace_path)
        except PathOutsideRoot:
            return False
        try:
            (workspace / TOKEN_FILE_NAME).unlink()
        except FileNotFoundError:
            return False
        except IsADirectoryError:
            return remove_tree(workspace / TOKEN_FILE_NAME, within=workspace)
        fsync_directory(workspace)
        return True

    def remove_workspace(self, workspace_path: str) -> bool:
        """Delete a workspace directory and everything in it; True if it was there."""
        try:
            workspace = self.resolve(workspace_path)
        except PathOutsideRoot:
            return False
        return remove_tree(workspace, within=Path(os.path.realpath(self.root)))

    @staticmethod
    def _remove_stale_temps(workspace: Path) -> None:
        """Temporary files left by a crash between write and rename."""
        for leftover in workspace.glob(f".*{TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):  # not ours to fight over (a directory?)
                leftover.unlink(missing_ok=True)
