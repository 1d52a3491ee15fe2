"""`mc-hub demo` on a machine without what it needs says exactly what to install, and
starts nothing; a half-finished OpenClaw install in the cache is never used."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hub.demo import openclaw_install
from hub.demo.runner import RUN_MARKER_ENV, processes_with_env
from tests.support import demo_command


def _bin_with(tmp_path: Path, *tools: str) -> Path:
    """A PATH directory holding only `tools` (links to the real ones)."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} is not installed here")
        (directory / tool).symlink_to(found)
    return directory


def _demo(tmp_path: Path, path: Path) -> subprocess.CompletedProcess[str]:
    argv, _ = demo_command(tmp_path / "state", tmp_path / "empty-cache")
    env = {k: v for k, v in os.environ.items() if k != openclaw_install.CACHE_ENV}
    env["PATH"] = str(path)
    return subprocess.run(
        argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )


def test_without_npm_the_demo_names_what_to_install_and_starts_nothing(tmp_path: Path) -> None:
    done = _demo(tmp_path, _bin_with(tmp_path, "curl", "bash"))

    assert done.returncode == 1, done.stdout + done.stderr
    assert "npm, which is not on PATH" in done.stdout
    assert openclaw_install.how_to_install_npm() in done.stdout
    assert not (tmp_path / "state").exists()
    assert processes_with_env(RUN_MARKER_ENV, str((tmp_path / "state").absolute())) == []


def test_without_curl_the_demo_says_agents_need_it(tmp_path: Path) -> None:
    done = _demo(tmp_path, _bin_with(tmp_path, "bash"))

    assert done.returncode == 1
    assert "curl is not on PATH" in done.stdout and "apt-get install -y curl" in done.stdout


def test_only_a_finished_install_is_used(tmp_path: Path) -> None:
    launcher = tmp_path / "2026.9.6" / "bin" / "openclaw"
    launcher.parent.mkdir(parents=True)
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    assert openclaw_install.cached_launcher("2026.9.6", tmp_path) is None  # no .complete
    (tmp_path / "2026.9.6" / ".complete").touch()
    assert openclaw_install.cached_launcher("2026.9.6", tmp_path) == launcher
