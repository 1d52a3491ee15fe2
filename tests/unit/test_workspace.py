from __future__ import annotations

import concurrent.futures
import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from missioncontrol.agent_api import TOKEN_FILE_NAME as TOKEN_FILE
from sidecar import workspace as workspace_module
from sidecar.workspace import (
    MAX_FILE_BYTES,
    FileTooLarge,
    FileToWrite,
    InvalidFileName,
    PathOutsideRoot,
    WorkspaceError,
    WorkspaceWriter,
    remove_tree,
    sha256_hex,
)

T = TypeVar("T")


@pytest.fixture
def writer(tmp_path: Path) -> WorkspaceWriter:
    return WorkspaceWriter(tmp_path / "root")


def ws(writer: WorkspaceWriter, name: str = "workspace-mc-1") -> str:
    return str(writer.root / name)


@pytest.mark.parametrize(
    "name",
    [
        "../AGENTS.md",
        "a/AGENTS.md",
        "/etc/passwd",
        "..",
        "",
        "notes.md",
        "AGENTS.md\0",
        "agents.md",
        "AGENTS.md/",
    ],
)
def test_file_names_outside_the_allow_list_are_refused(writer: WorkspaceWriter, name: str) -> None:
    with pytest.raises(InvalidFileName):
        writer.write(ws(writer), [FileToWrite(name, b"x")])
    assert not writer.root.exists()


@pytest.mark.parametrize(
    "path", ["relative/ws", "/tmp", "{root}", "{root}/../escape", "{root}/link-out/ws"]
)
def test_workspace_paths_outside_the_root_are_refused(
    writer: WorkspaceWriter, tmp_path: Path, path: str
) -> None:
    writer.root.mkdir()
    (writer.root / "link-out").symlink_to(tmp_path)  # a symlink escaping the root
    with pytest.raises(PathOutsideRoot):
        writer.write(path.format(root=writer.root), [FileToWrite("AGENTS.md", b"x")])


def test_one_bad_file_refuses_the_whole_command(writer: WorkspaceWriter) -> None:
    with pytest.raises(WorkspaceError):
        writer.write(
            ws(writer),
            [FileToWrite("AGENTS.md", b"ok"), FileToWrite("SOUL.md", b"x" * (MAX_FILE_BYTES + 1))],
        )
    assert not writer.root.exists()


def test_oversized_file_is_refused(writer: WorkspaceWriter) -> None:
    with pytest.raises(FileTooLarge, match="at most"):
        writer.write(ws(writer), [FileToWrite("AGENTS.md", b"x" * (MAX_FILE_BYTES + 1))])


def test_modes_directory_0700_secret_0600_others_0644(writer: WorkspaceWriter) -> None:
    old_umask = os.umask(0o077)
    try:
        writer.write(
            ws(writer),
            [FileToWrite("AGENTS.md", b"a"), FileToWrite(TOKEN_FILE, b"t.s", secret=True)],
        )
    finally:
        os.umask(old_umask)
    workspace = Path(ws(writer))
    assert workspace.stat().st_mode & 0o777 == 0o700
    assert (workspace / "AGENTS.md").stat().st_mode & 0o777 == 0o644
    assert (workspace / TOKEN_FILE).stat().st_mode & 0o777 == 0o600


def test_token_file_must_be_secret(writer: WorkspaceWriter) -> None:
    with pytest.raises(WorkspaceError, match="secret"):
        writer.write(ws(writer), [FileToWrite(TOKEN_FILE, b"t.s", secret=False)])


def test_preserve_if_present_leaves_an_existing_file_alone(writer: WorkspaceWriter) -> None:
    writer.write(ws(writer), [FileToWrite("USER.md", b"edited by the user")])
    hashes = writer.write(
        ws(writer),
        [
            FileToWrite("USER.md", b"template", preserve_if_present=True),
            FileToWrite("MEMORY.md", b"fresh", preserve_if_present=True),
        ],
    )
    workspace = Path(ws(writer))
    assert (workspace / "USER.md").read_bytes() == b"edited by the user"
    assert (workspace / "MEMORY.md").read_bytes() == b"fresh"
    assert hashes == {
        "USER.md": sha256_hex(b"edited by the user"),
        "MEMORY.md": sha256_hex(b"fresh"),
    }
    assert writer.hashes(ws(writer)) == hashes


def test_duplicate_names_in_one_command_are_refused(writer: WorkspaceWriter) -> None:
    with pytest.raises(InvalidFileName, match="twice"):
        writer.write(ws(writer), [FileToWrite("AGENTS.md", b"1"), FileToWrite("AGENTS.md", b"2")])


# ------------------------------------------------------------ what an agent left on disk
# An agent's shell can put anything where its USER.md or MEMORY.md should be. Only a
# regular file, not followed through a link, counts as present, for every path that
# reads a workspace back: preserve_if_present on write, and hashes (the Hello's
# inventory). Nothing may block on it or read it without bound.


def _fifo(path: Path, _outside: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path, _outside: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


def _link_to_device(path: Path, _outside: Path) -> None:
    path.symlink_to("/dev/null")  # a regular file reader would take it as empty, not absent


def _link_to_file(path: Path, outside: Path) -> None:
    target = outside / "elsewhere.md"
    target.write_bytes(b"not in the workspace")
    path.symlink_to(target)


def _link_to_fifo(path: Path, outside: Path) -> None:
    os.mkfifo(outside / "pipe")
    path.symlink_to(outside / "pipe")


def _dangling_link(path: Path, outside: Path) -> None:
    path.symlink_to(outside / "missing")


NOT_PRESENT = {
    "fifo": _fifo,
    "unix socket": _socket,
    "symlink to a device": _link_to_device,
    "symlink to a file": _link_to_file,
    "symlink to a fifo": _link_to_fifo,
    "dangling symlink": _dangling_link,
}


def _unblocked(fn: Callable[[], T], fifos: list[Path]) -> T:
    """Run `fn` in a thread; fail (after unblocking it by writing to `fifos`) if it blocks."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(fn)
        try:
            return future.result(timeout=10)
        except concurrent.futures.TimeoutError:
            for fifo in fifos:
                with contextlib.suppress(OSError):
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            pytest.fail("reading the workspace blocked on a file an agent made")


@pytest.mark.parametrize("kind", sorted(NOT_PRESENT))
@pytest.mark.parametrize("name", ["USER.md", "MEMORY.md"])
def test_only_a_regular_file_counts_as_present(
    writer: WorkspaceWriter, tmp_path: Path, kind: str, name: str
) -> None:
    workspace = Path(ws(writer))
    writer.write(ws(writer), [FileToWrite("AGENTS.md", b"# a")])
    outside = tmp_path / "outside"
    outside.mkdir()
    NOT_PRESENT[kind](workspace / name, outside)
    fifos = [p for p in (workspace / name, outside / "pipe") if p.exists() or p.is_symlink()]

    assert name not in _unblocked(lambda: writer.hashes(ws(writer)), fifos)
    hashes = _unblocked(
        lambda: writer.write(
            ws(writer), [FileToWrite(name, b"template", preserve_if_present=True)]
        ),
        fifos,
    )
    # Not present, so written: a regular file now, and nothing outside was touched.
    assert hashes == {name: sha256_hex(b"template")}
    assert not (workspace / name).is_symlink()
    assert (workspace / name).read_bytes() == b"template"
    if kind == "symlink to a file":
        assert (outside / "elsewhere.md").read_bytes() == b"not in the workspace"


def test_a_large_agent_file_is_kept_and_one_past_the_hash_bound_reported_by_size(
    writer: WorkspaceWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = Path(ws(writer))
    writer.write(ws(writer), [FileToWrite("AGENTS.md", b"# a")])
    grown = b"m" * (3 * 1024 * 1024)  # an agent's memory may outgrow what the hub writes
    (workspace / "MEMORY.md").write_bytes(grown)
    hashes = writer.write(ws(writer), [FileToWrite("MEMORY.md", b"t", preserve_if_present=True)])
    assert (
        hashes
        == {"MEMORY.md": sha256_hex(grown)}
        == {k: v for k, v in writer.hashes(ws(writer)).items() if k == "MEMORY.md"}
    )
    monkeypatch.setattr(workspace_module, "MAX_HASHED_BYTES", 1024 * 1024)
    kept = writer.write(ws(writer), [FileToWrite("MEMORY.md", b"t", preserve_if_present=True)])
    assert kept == {"MEMORY.md": f"oversized:{len(grown)}"}
    assert (workspace / "MEMORY.md").read_bytes() == grown  # never overwritten for its size


def test_a_directory_where_a_file_goes_refuses_the_command_before_any_write(
    writer: WorkspaceWriter,
) -> None:
    workspace = Path(ws(writer))
    writer.write(ws(writer), [FileToWrite("AGENTS.md", b"old")])
    (workspace / "USER.md").mkdir()
    with pytest.raises(WorkspaceError, match="is a directory"):
        writer.write(ws(writer), [FileToWrite("AGENTS.md", b"new"), FileToWrite("USER.md", b"u")])
    assert (workspace / "AGENTS.md").read_bytes() == b"old"
    assert "USER.md" not in writer.hashes(ws(writer))


def test_removing_a_workspace_never_follows_links_out_of_it(
    writer: WorkspaceWriter, tmp_path: Path
) -> None:
    workspace = Path(ws(writer))
    writer.write(ws(writer), [FileToWrite(TOKEN_FILE, b"t.s", secret=True)])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.md").write_bytes(b"keep")
    (workspace / "link").symlink_to(outside)
    assert writer.remove_token_file(ws(writer))
    assert not writer.remove_token_file(ws(writer))  # already gone
    assert writer.remove_workspace(ws(writer))
    assert not workspace.exists()
    assert (outside / "keep.md").read_bytes() == b"keep"
    assert not writer.remove_workspace(ws(writer))
    # Outside the root nothing is removed, whatever the path says.
    assert not writer.remove_workspace(str(outside))
    assert not remove_tree(outside / "keep.md", within=writer.root)
    assert not remove_tree(writer.root / "..", within=writer.root)
    assert (outside / "keep.md").exists() and writer.root.exists()
