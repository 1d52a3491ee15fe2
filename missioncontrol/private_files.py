"""Files that hold secrets: owner-only directories, permission checks, atomic writes.

Both programs keep keys on disk (the hub its CA key, the sidecar its client key).
The rules live here once: a private directory is 0700 and is tightened if it is
looser; a secret file must be 0600 (or stricter) and owned by us, or we refuse to
read it, as ssh does, because a key others could read must be treated as leaked.
Writes go to a temporary file in the same directory, are fsynced and renamed over
the target, so a crash leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


class InsecurePermissionsError(PermissionError):
    """A secret file or directory is exposed to other users; the message says how to fix it."""


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) as 0700, or tighten an existing directory to 0700."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"{path} is not a directory; move it away and start again")
    _check_owner(path, info)
    if stat.S_IMODE(info.st_mode) & 0o077:
        # Tightening is safe: only we should ever have needed access.
        path.chmod(PRIVATE_DIR_MODE)
    return path


def check_private_file(path: Path) -> None:
    """Refuse a secret file that is not ours or that group/others can access."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise InsecurePermissionsError(
            f"{path} is not a regular file (a symlink or special file); "
            "replace it with the real file"
        )
    _check_owner(path, info)
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise InsecurePermissionsError(
            f"{path} is accessible by group or others (mode {mode:04o}), so the key "
            f"must be treated as exposed; if you are sure it was not, run `chmod 600 {path}`, "
            "otherwise delete it and issue a new one"
        )


def read_private_file(path: Path) -> bytes:
    check_private_file(path)
    return path.read_bytes()


def write_file_atomic(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Replace `path` with `data` atomically and durably; the file gets exactly `mode`."""
    directory = path.parent
    temp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(temp, flags, PRIVATE_FILE_MODE)  # never wider than 0600 while being written
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)  # exact mode, whatever the umask
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    _fsync_dir(directory)


def load_or_create_secret(path: Path, nbytes: int = 32) -> bytes:
    """Return the random secret stored in `path`, creating it (0600) on first use."""
    ensure_private_dir(path.parent)
    if path.exists():
        secret = read_private_file(path)
        if len(secret) < nbytes:
            raise ValueError(
                f"{path} holds {len(secret)} bytes, expected at least {nbytes}; "
                "it is damaged: restore it from backup (deleting it invalidates what it keyed)"
            )
        return secret
    secret = secrets.token_bytes(nbytes)
    write_file_atomic(path, secret)
    return secret


def _check_owner(path: Path, info: os.stat_result) -> None:
    uid = os.geteuid()
    if info.st_uid != uid:
        raise InsecurePermissionsError(
            f"{path} belongs to uid {info.st_uid}, not to the user running this program "
            f"(uid {uid}); run as that user or `chown` it"
        )


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
