"""Every endpoint an agent's files name is a route agents may call.

Each template of each generation is rendered for each kind of agent (with every board
rule on, so every rule's text is there), every path it names is taken out of the text,
and each must be an agent route of the hub (which the sidecar forwards) with the method
it names. A template that names a path nobody serves fails here, not in an agent's run.
"""

from __future__ import annotations

import re

import pytest

from hub.api import build_api
from hub.provisioning.rendering import (
    AgentContext,
    AgentKind,
    ApplyAction,
    BoardProfile,
    BoardRules,
    render_file_set,
    render_wake_message,
)
from missioncontrol.agent_api import AGENT_API_PREFIX
from protos.contract import GatewayGeneration
from tests.unit.test_rendering import TOKEN

API = build_api()
BASE = "http://127.0.0.1:18790"
ALL_RULES = BoardRules(
    require_approval_for_done=True,
    require_review_before_done=True,
    comment_required_for_review=True,
    block_status_changes_with_pending_approval=True,
    only_lead_can_change_status=True,
    max_agents=3,
)
METHODS = ("GET", "POST", "PATCH", "PUT", "DELETE")
# A path in the text: optionally after an HTTP method, made of plain segments or {params}.
_PATH = re.compile(
    r"(?:\b(GET|POST|PATCH|PUT|DELETE) )?(?<![\w./~-])(/[A-Za-z0-9_{}.-]+(?:/[A-Za-z0-9_{}.-]+)*)"
)


def context(kind: AgentKind) -> AgentContext:
    board = None
    if kind is not AgentKind.MAIN:
        board = BoardProfile(id="board-1", name="Launch", objective="Ship v1", rules=ALL_RULES)
    return AgentContext(
        agent_name="Ada",
        agent_id="mc-1" if kind is not AgentKind.MAIN else "mc-gateway-g1",
        session_key="agent:mc-1:main",
        main_session_key="agent:mc-gateway-g1:main",
        kind=kind,
        base_url=BASE,
        workspace_root="/srv/openclaw",
        workspace_path="/srv/openclaw/workspace-mc-1",
        board=board,
    )


def texts(generation: GatewayGeneration, kind: AgentKind) -> dict[str, str]:
    ctx = context(kind)
    files = render_file_set(generation, ctx, action=ApplyAction.PROVISION, token=TOKEN)
    found = {f.name: f.content.decode() for f in files.files if f.name.endswith(".md")}
    found["heartbeat checklist"] = files.heartbeat_checklist
    found["wake message"] = render_wake_message(generation, ctx, action=ApplyAction.PROVISION)
    return found


def named_paths(text: str) -> list[tuple[str | None, str]]:
    """(method or None, path below the agent API) for every API path the text names."""
    text = text.replace(BASE + AGENT_API_PREFIX, "").replace(BASE, "")
    found = []
    for method, path in _PATH.findall(text):
        if path.startswith("/srv/") or path == "/...":  # files on the host; "call /..."
            continue
        found.append((method or None, path))
    return found


def is_served(method: str | None, path: str) -> bool:
    concrete = re.sub(r"\{[^}]+\}", "x", AGENT_API_PREFIX + path)
    methods = (method,) if method else METHODS
    return any(API.is_agent_route(m, concrete) for m in methods)


CASES = [
    (g, k) for g in (GatewayGeneration.CURRENT, GatewayGeneration.LEGACY_2026_3) for k in AgentKind
]


@pytest.mark.parametrize(("generation", "kind"), CASES)
def test_every_path_a_template_names_is_an_agent_route(
    generation: GatewayGeneration, kind: AgentKind
) -> None:
    unserved = [
        (name, method, path)
        for name, text in texts(generation, kind).items()
        for method, path in named_paths(text)
        if not is_served(method, path)
    ]
    assert unserved == []


def test_the_extraction_finds_what_the_files_name() -> None:
    """The check above is not vacuous: the paths the issue named are found and served."""
    named = {
        (method, path)
        for kind in AgentKind
        for text in texts(GatewayGeneration.CURRENT, kind).values()
        for method, path in named_paths(text)
    }
    for expected in [
        ("POST", "/heartbeat"),
        (None, "/openapi.json"),
        ("POST", "/boards/board-1/approvals"),
        ("POST", "/boards/board-1/memory"),
        ("GET", "/boards"),
        ("PATCH", "/boards/board-1/tasks/{task_id}"),
        ("POST", "/agents"),
        ("POST", "/gateway/boards/{board_id}/lead/message"),
        ("POST", "/boards/board-1/agents/{agent_id}/nudge"),
        ("POST", "/boards/board-1/gateway/main/ask-user"),
    ]:
        assert expected in named, expected
    assert len(named) >= 15
    assert not is_served("GET", "/no/such/route")
