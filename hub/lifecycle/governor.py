"""The heartbeat governor as pure decisions: a quiet board's agents heartbeat less often.

Heartbeats cost model quota whether or not there is work: about seven agents on
10-minute heartbeats emptied a weekly quota overnight. With a governor (opt-in, per
board, or per agent which overrides its board's), a board with no task activity,
approvals, board memory or agent messages for `idle_after_s` backs its agents off one
step, and one more for each further `idle_after_s`: the default steps take a 10-minute
agent to 30 m, 1 h, then 3 h; a lead is never backed off beyond `lead_max_s` (1 h). The
first activity snaps every agent back to its own cadence (and wakes it, so it sees the
work). A step never makes an agent's cadence shorter than its own, and presence always
follows the cadence the gateway runs (`agents.heartbeat_interval_s`), so backing off
never marks anyone offline.

`cadence(...)` is the whole rule; `next_step_at(...)` says when it would next change,
so the driver (hub/governor.py) sleeps until then or until activity, never polls.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_STEPS_S = (1800, 3600, 10800)  # 30 m, 1 h, 3 h
DEFAULT_IDLE_AFTER_S = 3600
DEFAULT_LEAD_MAX_S = 3600
MAX_STEPS = 8
MIN_IDLE_AFTER_S = 60
MAX_CADENCE_S = 7 * 86400

_DURATION = re.compile(r"^(\d{1,6})(s|m|h|d)?$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class GovernorError(ValueError):
    """A governor setting that cannot work; the message says which and why."""


@dataclass(frozen=True)
class GovernorPolicy:
    enabled: bool = True
    steps_s: tuple[int, ...] = DEFAULT_STEPS_S  # cadences backed off to, one per step
    idle_after_s: int = DEFAULT_IDLE_AFTER_S  # quiet this long: one step further
    lead_max_s: int = DEFAULT_LEAD_MAX_S  # a lead never backs off beyond this

    def __post_init__(self) -> None:
        if not 1 <= len(self.steps_s) <= MAX_STEPS:
            raise GovernorError(f"steps: 1 to {MAX_STEPS} cadences")
        if list(self.steps_s) != sorted(set(self.steps_s)):
            raise GovernorError("steps: each cadence longer than the one before")
        if not all(60 <= s <= MAX_CADENCE_S for s in (*self.steps_s, self.lead_max_s)):
            raise GovernorError("steps and lead_max: from 1m to 7d")
        if not MIN_IDLE_AFTER_S <= self.idle_after_s <= MAX_CADENCE_S:
            raise GovernorError("idle_after: from 1m to 7d")

    def as_json(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "steps": [_text(s) for s in self.steps_s],
            "idle_after": _text(self.idle_after_s),
            "lead_max": _text(self.lead_max_s),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> GovernorPolicy:
        """The API's shape (`{"steps": ["30m", "1h"], "idle_after": "1h", ...}`), checked."""
        return cls(
            enabled=bool(value.get("enabled", True)),
            steps_s=tuple(duration_s(s) for s in value.get("steps", DEFAULT_STEPS_S)),
            idle_after_s=duration_s(value.get("idle_after", DEFAULT_IDLE_AFTER_S)),
            lead_max_s=duration_s(value.get("lead_max", DEFAULT_LEAD_MAX_S)),
        )


@dataclass(frozen=True)
class Cadence:
    step: int  # 0: the agent's own cadence
    every_s: int  # the cadence the gateway should run


def cadence(policy: GovernorPolicy | None, base_s: int, *, lead: bool, idle_s: float) -> Cadence:
    """The cadence for an agent whose own is `base_s`, its board quiet for `idle_s`."""
    if policy is None or not policy.enabled or base_s <= 0 or idle_s < policy.idle_after_s:
        return Cadence(0, base_s)
    step = min(int(idle_s // policy.idle_after_s), len(policy.steps_s))
    every = max(base_s, policy.steps_s[step - 1])
    if lead:
        every = max(base_s, min(every, policy.lead_max_s))
    return Cadence(step if every != base_s else 0, every)


def next_step_at(
    policy: GovernorPolicy | None, base_s: int, *, lead: bool, quiet_since: float, now: float
) -> float | None:
    """When `cadence` would next back the agent off further (None: it never will)."""
    if policy is None or not policy.enabled or base_s <= 0:
        return None
    current = cadence(policy, base_s, lead=lead, idle_s=now - quiet_since)
    for step in range(1, len(policy.steps_s) + 1):
        at = quiet_since + step * policy.idle_after_s
        if at <= now:
            continue
        if cadence(policy, base_s, lead=lead, idle_s=at - quiet_since).every_s != current.every_s:
            return at
    return None


def effective_policy(board: str | None, agent: str | None) -> GovernorPolicy | None:
    """The agent's own setting (JSON) if it has one, else its board's; None: ungoverned."""
    stored = agent if agent is not None else board
    if stored is None:
        return None
    policy = GovernorPolicy.from_json(json.loads(stored))
    return policy if policy.enabled else None


def duration_s(value: Any) -> int:
    if isinstance(value, bool):
        raise GovernorError(f"{value!r} is not a duration; write e.g. 30m, 1h or 3h")
    if isinstance(value, int):
        return value
    match = _DURATION.match(str(value).strip())
    if not match:
        raise GovernorError(f"{value!r} is not a duration; write e.g. 30m, 1h or 3h")
    return int(match.group(1)) * _UNIT_S[match.group(2) or "s"]


def _text(seconds: int) -> str:
    for unit in ("d", "h", "m"):
        if seconds % _UNIT_S[unit] == 0:
            return f"{seconds // _UNIT_S[unit]}{unit}"
    return f"{seconds}s"
