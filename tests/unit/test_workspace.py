from __future__ import annotations

import os
from pathlib import Path

import pytest

from missioncontrol.agent_api import TOKEN_FILE_NAME as TOKEN_FILE
from sidecar.workspace import (
    MAX_FILE_BYTES,
    FileTooLarge,
    FileToWrite,
    InvalidFileName,
    PathOutsideRoot,
    WorkspaceError,
    WorkspaceWriter,
    sha256_hex,
)


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
