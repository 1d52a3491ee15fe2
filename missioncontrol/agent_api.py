"""The agent-API contract: what the hub, the sidecar and every agent's files agree on.

An agent calls only its sidecar, on loopback, under `AGENT_API_PREFIX`, with its raw
token (the content of `TOKEN_FILE_NAME` in its workspace) in `TOKEN_HEADER` or as a
bearer token. The hub renders these names into the agent's files, the sidecar serves
them and forwards what it does not answer itself to the hub's own agent API, which
checks the same limits. A new hub and an old sidecar therefore agree only if all of
them read these definitions: keep every such literal here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Where a sidecar serves the agent API unless told otherwise; the hub renders it into the
# files of agents created before the gateway's sidecar has said where it listens.
DEFAULT_AGENT_API_LISTEN = "127.0.0.1:18790"
DEFAULT_AGENT_API_URL = f"http://{DEFAULT_AGENT_API_LISTEN}"

TOKEN_FILE_NAME = ".mc-agent-token"  # mode 0600 in the workspace; never prompt-injected
TOKEN_HEADER = "X-Agent-Token"

AGENT_API_PREFIX = "/api/v1/agent"
HEARTBEAT_PATH = f"{AGENT_API_PREFIX}/heartbeat"
HEALTHZ_PATH = f"{AGENT_API_PREFIX}/healthz"
API_SPEC_PATH = f"{AGENT_API_PREFIX}/openapi.json"
# Mission Control's per-agent heartbeat path; the id is the gateway agent id.
NAMED_HEARTBEAT_PATH = "/api/v1/agents/{agent_id}/heartbeat"

# Heartbeat body fields and their limits, checked by the sidecar and again by the hub.
MAX_STATUS_CHARS = 64
MAX_TASK_ID_CHARS = 128
HEARTBEAT_FIELDS: Mapping[str, int] = {
    "status": MAX_STATUS_CHARS,
    "current_task_id": MAX_TASK_ID_CHARS,
}


def token_from_headers(headers: Mapping[str, str]) -> str | None:
    """The raw agent token a request carries: `TOKEN_HEADER` first, else a bearer token."""
    token = headers.get(TOKEN_HEADER, "").strip()
    if token:
        return token
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_~:@!$&'()*+,;=-][A-Za-z0-9._~:@!$&'()*+,;=-]*")
MAX_PATH_CHARS = 2048


def plain_agent_path(path: str) -> bool:
    """A path under the agent API made only of plain segments: nothing a decoder or a
    normaliser could read as another path (no '%', '.', '..', empty segments, '\\').
    The sidecar forwards only such paths, and the hub answers only such paths."""
    if not path.startswith(AGENT_API_PREFIX + "/") or len(path) > MAX_PATH_CHARS:
        return False
    segments = path[len(AGENT_API_PREFIX) + 1 :].split("/")
    return all(_PLAIN_SEGMENT.fullmatch(segment) for segment in segments)
