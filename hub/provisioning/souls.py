"""Role souls from a local directory: `<role-slug>.md` is the role section of SOUL.md.

Mission Control fetched role souls from souls.directory during provisioning (a network
call on the provisioning path, non-deterministic). Here the operator points the hub at a
directory (`--souls-dir`); a worker whose identity role slugs to a file's name gets that
file's text in its SOUL.md. The text is read when the agent is created, updated or its
templates synced, kept on the agent's row, and rendered from there: rendering never
touches the disk and two renders of one row are the same. Nothing is fetched.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from missioncontrol.log import get_logger

log = get_logger("hub.provisioning.souls")

MAX_SOUL_BYTES = 64 * 1024  # read at most this much of a file; rendering cuts further


def role_slug(role: str) -> str:
    """The file name stem a role maps to: "DevOps Engineer" -> "devops-engineer"."""
    return re.sub(r"[^a-z0-9]+", "-", role.lower()).strip("-")[:100]


@dataclass(frozen=True)
class SoulsDirectory:
    root: Path | None = None  # None: no souls directory configured

    def for_role(self, role: str) -> str | None:
        """The role's soul text, or None: no directory, no file, or an unreadable one."""
        slug = role_slug(role)
        if self.root is None or not slug:
            return None
        path = self.root / f"{slug}.md"
        try:
            real_root = os.path.realpath(self.root)
            real = os.path.realpath(path)
            if os.path.dirname(real) != real_root or not os.path.isfile(real):
                return None  # missing, or a link out of the directory
            with open(real, "rb") as handle:
                data = handle.read(MAX_SOUL_BYTES)
            return data.decode("utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("souls.file.unreadable", path=str(path), error=str(exc))
            return None
