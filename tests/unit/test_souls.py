"""Role souls from a local directory: which file a role reads, and what is refused."""

from __future__ import annotations

import os
from pathlib import Path

from hub.provisioning.rendering import MAX_FILE_CHARS, AgentKind, ApplyAction, render_file_set
from hub.provisioning.souls import SoulsDirectory, role_slug
from protos.contract import GatewayGeneration
from tests.unit.test_rendering import make_context


def test_a_role_reads_the_file_named_by_its_slug(tmp_path: Path) -> None:
    (tmp_path / "devops-engineer.md").write_text("# DevOps\n\nKeep the pipelines green.\n")
    souls = SoulsDirectory(tmp_path)
    assert role_slug("DevOps Engineer") == "devops-engineer"
    assert souls.for_role("DevOps Engineer") == "# DevOps\n\nKeep the pipelines green."
    assert souls.for_role("devops  engineer!") is not None
    assert souls.for_role("Researcher") is None
    assert SoulsDirectory(None).for_role("DevOps Engineer") is None


def test_nothing_outside_the_directory_or_undecodable_is_read(tmp_path: Path) -> None:
    root = tmp_path / "souls"
    root.mkdir()
    (tmp_path / "secret.md").write_text("not a soul")
    os.symlink(tmp_path / "secret.md", root / "escape.md")
    (root / "binary.md").write_bytes(b"\xff\xfe not utf-8")
    (root / "dir.md").mkdir()
    souls = SoulsDirectory(root)
    assert souls.for_role("escape") is None
    assert souls.for_role("binary") is None
    assert souls.for_role("dir") is None
    assert souls.for_role("../secret") is None  # the slug has no separators


def test_a_maximal_role_soul_still_fits_the_gateways_limits() -> None:
    context = make_context(AgentKind.WORKER)
    context = type(context)(**{**context.__dict__, "role_soul": "x" * 100_000})
    for generation in (GatewayGeneration.CURRENT, GatewayGeneration.LEGACY_2026_3):
        soul = render_file_set(generation, context, action=ApplyAction.PROVISION).get("SOUL.md")
        assert soul is not None and len(soul.content.decode()) <= MAX_FILE_CHARS
        assert "## Your role" in soul.content.decode()
    lead = make_context(AgentKind.LEAD)
    lead = type(lead)(**{**lead.__dict__, "role_soul": "lead soul"})
    files = render_file_set(GatewayGeneration.CURRENT, lead, action=ApplyAction.PROVISION)
    soul = files.get("SOUL.md")
    assert soul is not None and "lead soul" not in soul.content.decode()
