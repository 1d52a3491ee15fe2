"""Workspace files for one agent, rendered from `templates/<generation>/`.

Which files a gateway generation takes (openclaw-gateway.md §0, §6, §10):

- current (protocol 4): AGENTS.md (tool notes in its `## Tools` section), SOUL.md,
  IDENTITY.md, USER.md, MEMORY.md. The heartbeat checklist is not a file: the
  sidecar puts it into the heartbeat cron job's monitor scratch.
- legacy-2026.3 (protocol 3): the same plus TOOLS.md, HEARTBEAT.md (the checklist)
  and, on first provisioning or when forced, BOOTSTRAP.md.

Where the raw agent token lives: only in `.mc-agent-token` (mode 0600, written by
the sidecar), never in a Markdown file, on either generation. The files tell the
agent to send `X-Agent-Token: $(cat <workspace>/.mc-agent-token)`; the shell reads
the file at call time, so the token stays out of the model prompt, out of the
transcript (the exec tool records the command text, not its expansion) and out of
the model provider's logs, and a rotation needs no rewrite of prompt files. On
2026.3-era gateways TOOLS.md is the token file's documented companion, not its
holder: that generation injects TOOLS.md into the prompt like AGENTS.md (OpenClaw's
bootstrap-file list of that era), so a token written there would reach the model
on every new session, which is the reference's defect (issue #223). TOOLS.md
therefore documents the token file, the base URL and the ids, and how to call.

Bounded inputs: every user, identity and board field is cut to a fixed number of
characters (`FIELD_LIMITS`; single-line fields also lose newlines and control
characters) before rendering, so the shipped templates stay under the gateway's
injection limits (20,000 characters a file, 4,000 for USER.md, 60,000 in total)
whatever the inputs; tests/unit/test_rendering.py proves it with maximal inputs.
Operator-supplied IDENTITY/SOUL templates are checked against the same limits
after rendering and refused with `RenderError` when they exceed them.

Rendering runs in Jinja's immutable sandbox with StrictUndefined (a misspelt
variable fails instead of rendering empty). Override templates come from the API,
so they may only substitute variables, test them and apply a few size-preserving
filters: no loops, assignments, calls, imports or arithmetic that could run long
or allocate without bound on the hub.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from missioncontrol.agent_api import (
    AGENT_API_PREFIX,
    API_SPEC_PATH,
    HEARTBEAT_PATH,
    TOKEN_FILE_NAME,
    TOKEN_HEADER,
)
from missioncontrol.agent_token import parse_token_id
from protos.contract import GatewayGeneration

MAX_FILE_CHARS = 20_000  # the gateway's injection cap per file
MAX_USER_FILE_CHARS = 4_000  # the gateway's injection cap for USER.md
MAX_INJECTED_TOTAL_CHARS = 60_000  # the gateway's cap over all injected files
MAX_OVERRIDE_TEMPLATE_CHARS = 16_000
MAX_WAKE_MESSAGE_CHARS = 2_000

DEFAULT_ROLE = "Generalist"
DEFAULT_COMMUNICATION_STYLE = "direct, concise, practical"
DEFAULT_EMOJI = ":gear:"

# Characters kept per input field. Sized so maximal inputs still fit the caps above.
FIELD_LIMITS: Mapping[str, int] = {
    "agent_name": 100,
    "identity_role": 100,
    "identity_communication_style": 200,
    "identity_emoji": 32,
    "identity_autonomy_level": 200,
    "identity_verbosity": 200,
    "identity_output_format": 200,
    "identity_update_cadence": 200,
    "identity_purpose": 1_500,
    "identity_personality": 1_500,
    "identity_custom_instructions": 3_000,
    "user_name": 100,
    "user_preferred_name": 100,
    "user_pronouns": 50,
    "user_timezone": 64,
    "user_notes": 1_200,
    "user_context": 1_500,
    "board_name": 200,
    "board_type": 50,
    "board_description": 1_500,
    "board_objective": 2_000,
    "board_success_metrics": 2_000,
    "board_target_date": 40,
    "role_soul": 6_000,
}
_MULTILINE_FIELDS = frozenset(
    {
        "identity_purpose",
        "identity_personality",
        "identity_custom_instructions",
        "user_notes",
        "user_context",
        "board_description",
        "board_objective",
        "board_success_metrics",
        "role_soul",
    }
)
_TRUNCATION_MARK = " …[truncated]"

# Ids and keys go into shell commands and Markdown code spans: keep them plain.
_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,199}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


class RenderError(ValueError):
    """A file set cannot be rendered; the message names the file or input and the fix."""


class ApplyAction(enum.StrEnum):
    PROVISION = "provision"  # first time: every file is written
    UPDATE = "update"  # later: the agent's own USER.md / MEMORY.md are kept


class AgentKind(enum.StrEnum):
    """Values of the store's `agents.kind` column."""

    WORKER = "worker"
    LEAD = "lead"
    MAIN = "main"


@dataclass(frozen=True)
class _FileRule:
    name: str
    max_chars: int = MAX_FILE_CHARS
    kinds: frozenset[AgentKind] | None = None  # None: every kind of agent gets it
    injected: bool = True  # the gateway puts it into the prompt (counts to the total)


# Leads keep their approval guidance in APPROVALS.md, which no generation injects (it
# is not one of the gateway's bootstrap files): AGENTS.md tells them to read it.
_APPROVALS = _FileRule("APPROVALS.md", kinds=frozenset({AgentKind.LEAD}), injected=False)

# The files each generation takes. Those marked injected reach the model prompt, so the
# gateway's caps apply to each and to their total; every file is held to the per-file
# cap. Order is the order the sidecar writes them; the token file comes last.
_FILES: Mapping[GatewayGeneration, tuple[_FileRule, ...]] = {
    GatewayGeneration.CURRENT: (
        _FileRule("AGENTS.md"),
        _FileRule("SOUL.md"),
        _FileRule("IDENTITY.md"),
        _FileRule("USER.md", MAX_USER_FILE_CHARS),
        _FileRule("MEMORY.md"),
        _APPROVALS,
    ),
    GatewayGeneration.LEGACY_2026_3: (
        _FileRule("AGENTS.md"),
        _FileRule("SOUL.md"),
        _FileRule("TOOLS.md"),
        _FileRule("IDENTITY.md"),
        _FileRule("USER.md", MAX_USER_FILE_CHARS),
        _FileRule("HEARTBEAT.md"),
        _FileRule("MEMORY.md"),
        _FileRule("BOOTSTRAP.md"),
        _APPROVALS,
    ),
}
_CHECKLIST_TEMPLATE = "HEARTBEAT_CHECKLIST.md.j2"
_WAKE_TEMPLATE = "WAKE_MESSAGE.md.j2"


def workspace_file_names(generation: GatewayGeneration) -> frozenset[str]:
    """Every file a generation's file set may contain, the token file included."""
    return frozenset(rule.name for rule in _FILES[generation]) | {TOKEN_FILE_NAME}


# ------------------------------------------------------------------- context


@dataclass(frozen=True)
class IdentityProfile:
    """The agent's persona (the store's `identity_profile` JSON); empty fields take defaults."""

    role: str = DEFAULT_ROLE
    communication_style: str = DEFAULT_COMMUNICATION_STYLE
    emoji: str = DEFAULT_EMOJI
    autonomy_level: str = ""
    verbosity: str = ""
    output_format: str = ""
    update_cadence: str = ""
    purpose: str = ""
    personality: str = ""
    custom_instructions: str = ""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> IdentityProfile:
        """Build from stored JSON: unknown keys are ignored, lists joined with ", "."""
        values: dict[str, str] = {}
        for item in fields(cls):
            raw = (data or {}).get(item.name)
            if isinstance(raw, list | tuple):
                raw = ", ".join(str(part) for part in raw if part is not None)
            text = "" if raw is None else str(raw).strip()
            if text:
                values[item.name] = text
        return cls(**values)


@dataclass(frozen=True)
class UserProfile:
    """The person the agent works for (USER.md)."""

    name: str = ""
    preferred_name: str = ""
    pronouns: str = ""
    timezone: str = ""
    notes: str = ""
    context: str = ""


@dataclass(frozen=True)
class BoardRules:
    require_approval_for_done: bool = True
    require_review_before_done: bool = False
    comment_required_for_review: bool = False
    block_status_changes_with_pending_approval: bool = False
    only_lead_can_change_status: bool = False
    max_agents: int = 1  # worker agents, the lead excluded


@dataclass(frozen=True)
class BoardProfile:
    """The board a lead or worker belongs to."""

    id: str
    name: str
    board_type: str = "goal"
    description: str = ""
    objective: str = ""
    success_metrics: Mapping[str, Any] | list[Any] | str | None = None
    target_date: date | str | None = None
    goal_confirmed: bool = False
    rules: BoardRules = field(default_factory=BoardRules)


@dataclass(frozen=True)
class AgentContext:
    """Everything the templates may use about one agent. Build it, don't build dicts.

    `base_url` is the sidecar's local agent API (e.g. http://127.0.0.1:18790), the
    only address an agent ever calls. `workspace_path` is absolute on the gateway host.
    """

    agent_name: str
    agent_id: str
    session_key: str
    main_session_key: str  # "" when the gateway has no main agent
    kind: AgentKind
    base_url: str
    workspace_root: str
    workspace_path: str
    heartbeat_interval_s: int = 600
    identity: IdentityProfile = field(default_factory=IdentityProfile)
    user: UserProfile = field(default_factory=UserProfile)
    board: BoardProfile | None = None
    role_soul: str = ""  # a worker's role soul from the souls directory (Markdown)
    # `profile_values` of this context's identity, user, board and worker soul, when
    # already worked out for another agent that has the same (not part of its value).
    profile: Mapping[str, str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", AgentKind(self.kind))  # accept the store's text too
        if (self.kind is AgentKind.MAIN) != (self.board is None):
            raise RenderError(
                f"agent {self.agent_id!r}: a {self.kind} agent "
                + ("has no board" if self.kind is AgentKind.MAIN else "needs its board")
            )
        for name in ("agent_id", "session_key", "main_session_key"):
            if name == "main_session_key" and not self.main_session_key:
                continue  # the gateway has no main agent
            if not _PLAIN_ID.fullmatch(getattr(self, name)):
                raise RenderError(
                    f"{name} {getattr(self, name)!r} must be 1-200 letters, digits, ':', '.', "
                    "'_' or '-'"
                )
        if self.board is not None and not _PLAIN_ID.fullmatch(self.board.id):
            raise RenderError(f"board id {self.board.id!r} must be plain letters, digits, '-'")
        if not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:-]+(/[A-Za-z0-9._~/-]*)?", self.base_url):
            raise RenderError(
                f"base_url {self.base_url!r} must be the sidecar's local agent API URL, "
                "e.g. http://127.0.0.1:18790"
            )
        for name in ("workspace_root", "workspace_path"):
            path = getattr(self, name)
            if not path.startswith("/") or _CONTROL.search(path) or "\n" in path:
                raise RenderError(f"{name} {path!r} must be an absolute path on the gateway host")
        if self.heartbeat_interval_s < 0:
            raise RenderError(f"heartbeat_interval_s {self.heartbeat_interval_s} must be >= 0")

    @property
    def worker_soul(self) -> str:
        """The role soul the templates see: a worker's only."""
        return self.role_soul if self.kind is AgentKind.WORKER else ""

    @property
    def token_path(self) -> str:
        return f"{self.workspace_path.rstrip('/')}/{TOKEN_FILE_NAME}"

    def variables(self) -> dict[str, Any]:
        """The template variables (mission-control.md §4.4 names), inputs bounded."""
        base_url = self.base_url.rstrip("/")
        auth_header = f'-H "{TOKEN_HEADER}: $(cat {shlex.quote(self.token_path)})"'
        board = self.board
        rules = board.rules if board is not None else BoardRules()
        profile = self.profile
        if profile is None:
            profile = profile_values(self.identity, self.user, board, self.worker_soul)
        values: dict[str, Any] = {"agent_name": _bounded("agent_name", self.agent_name), **profile}
        values.update(
            # Mission Control's names, for override templates written for it.
            directory_role_soul_markdown=values["role_soul"],
            directory_role_soul_source_url="",
            agent_id=self.agent_id,
            session_key=self.session_key,
            main_session_key=self.main_session_key,
            agent_kind=str(self.kind),
            is_main_agent=self.kind is AgentKind.MAIN,
            is_board_lead=self.kind is AgentKind.LEAD,
            has_board=board is not None,
            base_url=base_url,
            workspace_root=self.workspace_root,
            workspace_path=self.workspace_path,
            token_path=self.token_path,
            token_file_name=TOKEN_FILE_NAME,
            token_header=TOKEN_HEADER,
            auth_header=auth_header,
            heartbeat_command=f"curl -fsS -X POST {base_url}{HEARTBEAT_PATH} {auth_header}",
            api_spec_url=f"{base_url}{API_SPEC_PATH}",
            agent_api_url=f"{base_url}{AGENT_API_PREFIX}",
            heartbeat_every=_duration_text(self.heartbeat_interval_s),
            board_id=board.id if board else "",
            board_goal_confirmed=bool(board and board.goal_confirmed),
            board_rule_require_approval_for_done=rules.require_approval_for_done,
            board_rule_require_review_before_done=rules.require_review_before_done,
            board_rule_comment_required_for_review=rules.comment_required_for_review,
            board_rule_block_status_changes_with_pending_approval=(
                rules.block_status_changes_with_pending_approval
            ),
            board_rule_only_lead_can_change_status=rules.only_lead_can_change_status,
            board_rule_max_agents=max(int(rules.max_agents), 0),
        )
        return values


def profile_values(
    identity: IdentityProfile, user: UserProfile, board: BoardProfile | None, worker_soul: str
) -> dict[str, str]:
    """The template inputs an agent's identity, user, board and worker soul give, bounded
    (the same for every agent that shares them)."""
    raw: dict[str, Any] = {
        "identity_role": identity.role or DEFAULT_ROLE,
        "identity_communication_style": (
            identity.communication_style or DEFAULT_COMMUNICATION_STYLE
        ),
        "identity_emoji": identity.emoji or DEFAULT_EMOJI,
        "identity_autonomy_level": identity.autonomy_level,
        "identity_verbosity": identity.verbosity,
        "identity_output_format": identity.output_format,
        "identity_update_cadence": identity.update_cadence,
        "identity_purpose": identity.purpose,
        "identity_personality": identity.personality,
        "identity_custom_instructions": identity.custom_instructions,
        "user_name": user.name,
        "user_preferred_name": user.preferred_name,
        "user_pronouns": user.pronouns,
        "user_timezone": user.timezone,
        "user_notes": user.notes,
        "user_context": user.context,
        "board_name": board.name if board else "",
        "board_type": board.board_type if board else "",
        "board_description": board.description if board else "",
        "board_objective": board.objective if board else "",
        "board_success_metrics": _metrics_text(board.success_metrics) if board else "",
        "board_target_date": _date_text(board.target_date) if board else "",
        "role_soul": worker_soul,
    }
    return {name: _bounded(name, text) for name, text in raw.items()}


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class RenderedFile:
    """One workspace file, as it goes into WorkspaceFile."""

    name: str
    content: bytes = field(repr=False)
    secret: bool = False  # write with mode 0600
    preserve_if_present: bool = False  # leave an existing file alone

    @property
    def sha256_hex(self) -> str:
        """Comparable with the sidecar's reported file hashes (drift)."""
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class RenderedFiles:
    generation: GatewayGeneration
    files: tuple[RenderedFile, ...]
    heartbeat_checklist: str  # HeartbeatSettings.checklist (cron scratch; HEARTBEAT.md on 2026.3)

    def names(self) -> tuple[str, ...]:
        return tuple(item.name for item in self.files)

    def get(self, name: str) -> RenderedFile | None:
        return next((item for item in self.files if item.name == name), None)


# ---------------------------------------------------------------- rendering


def render_file_set(
    generation: GatewayGeneration,
    context: AgentContext,
    *,
    action: ApplyAction,
    overwrite: bool = False,
    force_bootstrap: bool = False,
    token: str | None = None,
    identity_template: str | None = None,
    soul_template: str | None = None,
) -> RenderedFiles:
    """Render an agent's workspace files for one gateway generation.

    - USER.md and MEMORY.md are `preserve_if_present` on UPDATE unless `overwrite`
      (they belong to the agent after provisioning); the main agent's USER.md is
      always regenerated, because it is derived from the organisation's data.
    - BOOTSTRAP.md exists only on 2026.3-era gateways, and only on PROVISION or
      with `force_bootstrap` (current gateways delete it before the model sees it).
    - `token`, the raw token, is given only when one was just minted: it becomes
      the secret `.mc-agent-token` file. Without it the file on disk is left alone
      (the hub keeps no raw tokens, so it could not rewrite it anyway).
    - `identity_template` / `soul_template` replace IDENTITY.md / SOUL.md; see
      `check_override_template` for what they may contain.
    - A file that renders empty (only possible through an override) is not written.
    """
    generation = _generation(generation)
    action = ApplyAction(action)
    variables = context.variables()
    overrides = {"IDENTITY.md": identity_template, "SOUL.md": soul_template}
    keep_agent_files = action is ApplyAction.UPDATE and not overwrite
    preserved = {"MEMORY.md"} | ({"USER.md"} if context.kind is not AgentKind.MAIN else set())

    checklist = _render_named(generation, _CHECKLIST_TEMPLATE, variables)
    rendered: list[RenderedFile] = []
    injected_total = 0
    for rule in _FILES[generation]:
        if rule.name == "BOOTSTRAP.md" and not (action is ApplyAction.PROVISION or force_bootstrap):
            continue
        if rule.kinds is not None and context.kind not in rule.kinds:
            continue
        override = overrides.get(rule.name)
        if override is not None:
            text = _render_override(rule.name, override, variables)
        elif rule.name == "HEARTBEAT.md":
            text = checklist  # one text, two destinations: the file and the settings
        else:
            text = _render_named(generation, f"{rule.name}.j2", variables)
        if not text.strip():
            continue
        if len(text) > rule.max_chars:
            raise RenderError(
                f"{rule.name} renders to {len(text)} characters, over the gateway's limit of "
                f"{rule.max_chars}; shorten its template or the inputs it shows"
            )
        if rule.injected:
            injected_total += len(text)
        rendered.append(
            RenderedFile(
                name=rule.name,
                content=text.encode("utf-8"),
                preserve_if_present=keep_agent_files and rule.name in preserved,
            )
        )
    if injected_total > MAX_INJECTED_TOTAL_CHARS:
        raise RenderError(
            f"the injected files total {injected_total} characters, over the gateway's limit "
            f"of {MAX_INJECTED_TOTAL_CHARS}; shorten the override templates"
        )
    if len(checklist) > MAX_FILE_CHARS:
        raise RenderError(f"the heartbeat checklist renders to {len(checklist)} characters")
    if token is not None:
        rendered.append(token_file(token))
    return RenderedFiles(generation, tuple(rendered), checklist)


def token_file(token: str) -> RenderedFile:
    """The secret file holding the raw token (also what SetAgentCredentials.token_file carries)."""
    parse_token_id(token)  # refuse anything that is not a token before it reaches a disk
    return RenderedFile(TOKEN_FILE_NAME, f"{token}\n".encode("ascii"), secret=True)


def render_wake_message(
    generation: GatewayGeneration,
    context: AgentContext,
    *,
    action: ApplyAction,
    attempt: int = 1,
    max_wakes: int = 3,
    recovery: str = "",
) -> str:
    """The chat message that wakes the agent (ApplyAgent.wake_message, WakeAgent.message);
    `recovery`: a rung of the recovery ladder ("nudged", "fresh_session").

    It carries the check-in command itself, because a woken agent must check in
    within the deadline and should not have to find the command in its files first.
    """
    variables = context.variables()
    variables.update(
        action=str(ApplyAction(action)), attempt=attempt, max_wakes=max_wakes, recovery=recovery
    )
    text = _render_named(_generation(generation), _WAKE_TEMPLATE, variables).strip()
    if len(text) > MAX_WAKE_MESSAGE_CHARS:
        raise RenderError(f"the wake message renders to {len(text)} characters")
    return text


def check_override_template(name: str, source: str) -> None:
    """Refuse an IDENTITY/SOUL override the hub would not render; call it when one is set.

    Allowed: text, `{{ variable }}`, `{% if %}`, comparisons, `~`/`+` joins, tests
    (`is defined`) and the filters default, lower, upper, title, capitalize, trim.
    """
    if len(source) > MAX_OVERRIDE_TEMPLATE_CHARS:
        raise RenderError(
            f"{name} template is {len(source)} characters; the limit is "
            f"{MAX_OVERRIDE_TEMPLATE_CHARS}"
        )
    try:
        tree = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"{name} template: line {exc.lineno}: {exc.message}") from None
    for node in tree.find_all(nodes.Node):
        if not isinstance(node, _OVERRIDE_NODES):
            raise RenderError(
                f"{name} template uses {type(node).__name__.lower()} (line {node.lineno}); "
                "override templates may only substitute variables, use if/else and the "
                f"filters {', '.join(sorted(_OVERRIDE_FILTERS))}"
            )
        if isinstance(node, nodes.Filter) and node.name not in _OVERRIDE_FILTERS:
            raise RenderError(
                f"{name} template uses the filter {node.name!r} (line {node.lineno}); allowed: "
                f"{', '.join(sorted(_OVERRIDE_FILTERS))}"
            )


# ------------------------------------------------------------------ helpers

_ENV = ImmutableSandboxedEnvironment(
    loader=jinja2.PackageLoader("hub.templates", "."),
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,  # package data: a template changes with a new install, not while running
)
_ENV.filters["shq"] = shlex.quote  # shell-quote a path for our own templates' commands
_OVERRIDE_FILTERS = frozenset({"default", "d", "lower", "upper", "title", "capitalize", "trim"})
_OVERRIDE_NODES = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Const,
    nodes.If,
    nodes.CondExpr,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Concat,
    nodes.Add,
    nodes.Filter,
    nodes.Test,
    nodes.Keyword,
    nodes.List,
    nodes.Tuple,
)


def _generation(value: int) -> GatewayGeneration:
    generation = GatewayGeneration.of(value)
    if generation.template_dir is None:
        raise RenderError(
            f"gateway generation {value} is unknown (the sidecar has not reached its gateway "
            "yet); render once the gateway's generation is reported"
        )
    return generation


def _render_named(generation: GatewayGeneration, name: str, variables: dict[str, Any]) -> str:
    path = f"{generation.template_dir}/{name}"
    try:
        return _ENV.get_template(path).render(variables)
    except jinja2.UndefinedError as exc:
        raise RenderError(f"template {path}: {exc.message}") from None


def _render_override(name: str, source: str, variables: dict[str, Any]) -> str:
    check_override_template(name, source)
    try:
        return _ENV.from_string(source).render(variables)
    except jinja2.UndefinedError as exc:
        raise RenderError(
            f"{name} template: {exc.message}; see hub/provisioning/rendering.py for the variables"
        ) from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"{name} template: {exc}") from None


def _bounded(name: str, value: Any) -> str:
    """Cut one input to its limit; single-line fields lose newlines and control characters."""
    text = "" if value is None else str(value)
    if text.isprintable():  # no control character, and no whitespace but " "
        if name in _MULTILINE_FIELDS:
            text = text.strip()
        elif "  " in text or text[:1] == " " or text[-1:] == " ":
            text = " ".join(text.split())
    elif name in _MULTILINE_FIELDS:
        text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
        text = re.sub(r"\n{3,}", "\n\n", text)
    else:
        text = " ".join(_CONTROL.sub(" ", text).split())
    limit = FIELD_LIMITS[name]
    if len(text) > limit:
        text = text[: limit - len(_TRUNCATION_MARK)].rstrip() + _TRUNCATION_MARK
    return text


def _metrics_text(metrics: Mapping[str, Any] | list[Any] | str | None) -> str:
    if metrics is None or metrics == "" or metrics == {} or metrics == []:
        return ""
    if isinstance(metrics, str):
        return metrics
    return json.dumps(metrics, ensure_ascii=False, sort_keys=True, default=str)


def _date_text(value: date | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _duration_text(seconds: int) -> str:
    if seconds <= 0:
        return "off"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
