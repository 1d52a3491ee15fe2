"""The workspace file names both programs know: what the hub may render and the sidecar
may write, and which of them a fleet query may hash (never the agent's token file)."""

from __future__ import annotations

from missioncontrol.agent_api import TOKEN_FILE_NAME

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
# A digest of the token file would be a verifier of the agent's secret: never asked for.
QUERYABLE_FILES = ALLOWED_FILES - {TOKEN_FILE_NAME}
