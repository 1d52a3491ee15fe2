"""The sidecar's state directory holds its key and its agents' token verifiers: it is
0700 and its files 0600, however it was found, in every mode (mTLS: tests/unit/
test_identity.py; here the modes without an identity, and the state file itself)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from missioncontrol.netaddr import HostPort
from sidecar.app import Sidecar
from sidecar.state import LocalState, PendingBeat
from tests.support import RecordingGateway, sidecar_config


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("found", [0o755, 0o777, 0o750, 0o701])
def test_an_existing_loose_state_directory_is_tightened_without_an_identity(
    tmp_path: Path, found: int
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state_dir.chmod(found)
    config = sidecar_config(state_dir, HostPort("127.0.0.1", 7443), gateway_id="gw-dev")
    assert config.insecure_dev
    sidecar = Sidecar(config, RecordingGateway())
    try:
        assert mode_of(state_dir) == 0o700
    finally:
        sidecar.state.close()


def test_the_state_file_and_its_journal_are_private_from_the_first_write(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)
    state = LocalState(state_dir / "state.sqlite3")
    try:
        state.save_pending_beats([PendingBeat("mc-a", 1.0)])  # the WAL now exists
        files = sorted(p.name for p in state_dir.iterdir())
        assert files == ["state.sqlite3", "state.sqlite3-shm", "state.sqlite3-wal"]
        assert {name: mode_of(state_dir / name) for name in files} == dict.fromkeys(files, 0o600)
        assert mode_of(state_dir) == 0o700
    finally:
        state.close()


def test_journal_files_an_older_version_left_readable_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    LocalState(path).close()
    for suffix in ("", "-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        companion.touch()
        companion.chmod(0o644)
    LocalState(path).close()
    for suffix in ("", "-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            assert mode_of(companion) == 0o600, suffix
