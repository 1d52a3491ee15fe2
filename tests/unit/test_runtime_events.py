"""Every run of every agent, and heartbeat jobs coming and going, from the gateway's events.

The payloads are trimmed from what 2026.9.6 broadcast on loopback with the scripted model:
a chat run on a session of the agent other than its main one (a channel, the control
UI), a heartbeat job's run (which broadcasts no `chat` event: only `heartbeat` and
`cron` events), a heartbeat whose model rejected the key, a skipped heartbeat (no
delivery route: no model call), and the job removed when its heartbeat block went. 2026.3
names a run's agent only in its session key. The client is not connected; events are
handed to its connection as they would arrive.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sidecar.gateway import HeartbeatJobChanged, RunEnded, RunKind, RunState, RuntimeEvent
from sidecar.gateway.openclaw import OpenClawGatewayClient
from sidecar.gateway.protocol import parse_model_auth

AGENT = "mc-3f816ea0"
AUTH_401 = (
    "Authentication failed (provider returned HTTP 401). Your provider token may have expired"
    " — try the request again in a moment."
)


def _job(**extra: Any) -> dict[str, Any]:
    return {
        "id": "b31a10b4",
        "declarationKey": f"heartbeat:{AGENT}",
        "agentId": AGENT,
        "name": f"heartbeat-{AGENT}",
        "payload": {"kind": "heartbeat"},
        **extra,
    }


def _finished(status: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    return "cron", {"jobId": "b31a10b4", "action": "finished", "job": _job(), "status": status,
                    "runId": "manual:b31a10b4:1", **extra}  # fmt: skip


def _text(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


REPLY = "Mission Control wake received; nothing else to do."
CHAT_ON_ANOTHER_SESSION = [
    ("agent", {"runId": "c1", "sessionKey": f"agent:{AGENT}:probe", "agentId": AGENT,
               "stream": "assistant", "data": {"text": REPLY, "delta": REPLY}}),
    ("chat", {"runId": "c1", "sessionKey": f"agent:{AGENT}:probe", "agentId": AGENT,
              "state": "final", "stopReason": "stop", "message": _text(REPLY)}),
]  # fmt: skip
CHAT_2026_3 = [
    ("agent", {"runId": "c2", "stream": "assistant", "data": {"text": REPLY}}),
    ("chat", {"runId": "c2", "sessionKey": f"agent:{AGENT}:main", "state": "final",
              "message": _text(REPLY)}),
]  # fmt: skip
CHAT_FAILED = [
    ("chat", {"runId": "c3", "sessionKey": f"agent:{AGENT}:main", "agentId": AGENT,
              "state": "error", "errorMessage": AUTH_401,
              "errorDetail": {"provider": "scripted", "failoverReason": "auth"}}),
    # ... then the same end again as a notice, without the agent: the first end counts.
    ("chat", {"runId": "c3", "sessionKey": f"agent:{AGENT}:main", "state": "error",
              "errorMessage": f"⚠️ Agent failed before reply: {AUTH_401}"}),
]  # fmt: skip
HEARTBEAT_RAN = [
    ("cron", {"jobId": "b31a10b4", "action": "started", "job": _job()}),
    ("heartbeat", {"status": "skipped", "reason": "target-none", "preview": REPLY}),
    _finished("ok", summary="heartbeat completed"),
]
HEARTBEAT_FAILED = [
    ("cron", {"jobId": "b31a10b4", "action": "started", "job": _job()}),
    ("heartbeat", {"status": "failed", "reason": "agent-runner-failure",
                   "preview": f"⚠️ {AUTH_401}"}),
    _finished("error", error="heartbeat failed: agent-runner-failure"),
]  # fmt: skip
HEARTBEAT_SKIPPED = [_finished("skipped", error="Heartbeat has no delivery route yet.")]
JOB_REMOVED = [("cron", {"jobId": "b31a10b4", "action": "removed", "job": _job()})]
OTHER_JOB = [
    ("cron", {"jobId": "f9a9", "action": "finished", "status": "ok",
              "job": {"declarationKey": f"skill-collection-review:{AGENT}", "agentId": AGENT}}),
]  # fmt: skip

CASES: dict[str, tuple[list[tuple[str, dict[str, Any]]], list[tuple[Any, ...]]]] = {
    "chat-on-another-session": (CHAT_ON_ANOTHER_SESSION, [(RunKind.CHAT, RunState.FINAL, True)]),
    "chat-2026.3": (CHAT_2026_3, [(RunKind.CHAT, RunState.FINAL, True)]),
    "chat-failed": (CHAT_FAILED, [(RunKind.CHAT, RunState.ERROR, False, AUTH_401)]),
    "heartbeat-ran": (HEARTBEAT_RAN, [(RunKind.HEARTBEAT, RunState.FINAL, True)]),
    "heartbeat-failed": (HEARTBEAT_FAILED, [(RunKind.HEARTBEAT, RunState.ERROR, False, AUTH_401)]),
    "heartbeat-skipped": (HEARTBEAT_SKIPPED, [(RunKind.HEARTBEAT, RunState.FINAL, False)]),
    "job-removed": (JOB_REMOVED, [("removed",)]),
    "another-job": (OTHER_JOB, []),
}


def _seen(event: RuntimeEvent) -> tuple[Any, ...]:
    if isinstance(event, HeartbeatJobChanged):
        assert event.agent_id == AGENT
        return ("added" if event.present else "removed",)
    assert isinstance(event, RunEnded) and event.agent_id == AGENT
    outcome = event.outcome
    seen: tuple[Any, ...] = (event.kind, outcome.state, outcome.model_turn)
    return (*seen, outcome.message) if outcome.state is RunState.ERROR else seen


def _told(tmp_path: Path, events: list[tuple[str, Any]]) -> list[RuntimeEvent]:
    """What the client tells of `events`, handed to its connection as they would arrive."""
    client = OpenClawGatewayClient(tmp_path / "openclaw.json")
    told: list[RuntimeEvent] = []
    client.on_runtime_event(told.append)
    for event, payload in events:
        client._connection._on_event(event, payload)
    return told


@pytest.mark.parametrize("case", CASES)
async def test_each_run_and_job_change_is_told_once(case: str, tmp_path: Path) -> None:
    events, expected = CASES[case]
    assert [_seen(e) for e in _told(tmp_path, events)] == expected


async def test_a_wake_run_is_told_as_a_wake(tmp_path: Path) -> None:
    client = OpenClawGatewayClient(tmp_path / "openclaw.json")
    told: list[RuntimeEvent] = []
    client.on_runtime_event(told.append)

    async def send_chat(agent_id: str, message: str, key: str) -> dict[str, Any]:
        return {"runId": key, "status": "started"}

    client._send_chat = send_chat  # type: ignore[method-assign]
    run_id = await client.wake(AGENT, "wake up", "key-1")
    for event, payload in CHAT_2026_3:
        client._connection._on_event(event, {**payload, "runId": run_id})
    assert [(e.kind, e.outcome.run_id) for e in told if isinstance(e, RunEnded)] == [
        (RunKind.WAKE, run_id)
    ]


async def test_a_listener_that_fails_costs_the_others_nothing(tmp_path: Path) -> None:
    client = OpenClawGatewayClient(tmp_path / "openclaw.json")
    told: list[RuntimeEvent] = []

    def broken(event: RuntimeEvent) -> None:
        raise RuntimeError("a bug in one listener")

    client.on_runtime_event(broken)
    client.on_runtime_event(told.append)
    for event, payload in HEARTBEAT_RAN:
        client._connection._on_event(event, payload)
    assert len(told) == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"action": "finished"},  # no job
        {"action": "finished", "job": "not a mapping", "status": "ok"},
        {"action": "finished", "job": {"declarationKey": 7}, "status": "ok"},
        None,
        ["a list"],
    ],
)
async def test_malformed_cron_events_are_ignored(payload: Any, tmp_path: Path) -> None:
    assert _told(tmp_path, [("cron", payload), ("heartbeat", payload)]) == []


def test_model_auth_status_as_the_gateway_reports_it() -> None:
    payload = {
        "ts": 1796219065326,
        "providers": [
            {"provider": "scripted", "status": "static", "profiles": []},
            {"provider": "openai", "status": "expired", "expiry": {"remainingMs": -5000}},
            {"provider": "anthropic", "status": "missing"},
            {"provider": "google", "status": "expiring", "expiry": {"remainingMs": 600_000}},
            {"status": "ok"},  # no provider: not a row
            "junk",
        ],
    }
    providers = parse_model_auth(payload)
    assert [(p.provider, p.status, p.failing) for p in providers] == [
        ("scripted", "static", False),
        ("openai", "expired", True),
        ("anthropic", "missing", True),
        ("google", "expiring", False),
    ]
    assert providers[3].expires_in_s == 600
    # Gateways without a sign-in picture yet answer with none and say so.
    assert parse_model_auth({"providers": [], "unavailable": {"code": "X"}}) == []


# 2026.3's heartbeat run (here the main agent's, woken with `wake {mode: "now"}`): only
# `agent` events, then a `heartbeat` event naming no agent; no `chat` event at all.
LEGACY_HEARTBEAT = [
    ("agent", {"runId": "h1", "stream": "lifecycle", "data": {"phase": "start"},
               "sessionKey": f"agent:{AGENT}:main"}),
    ("agent", {"runId": "h1", "stream": "assistant", "data": {"text": REPLY, "delta": REPLY},
               "sessionKey": f"agent:{AGENT}:main"}),
    ("agent", {"runId": "h1", "stream": "lifecycle", "data": {"phase": "end"},
               "sessionKey": f"agent:{AGENT}:main"}),
    ("heartbeat", {"status": "skipped", "reason": "target-none", "preview": REPLY}),
]  # fmt: skip
LEGACY_HEARTBEAT_FAILED = [
    ("agent", {"runId": "h2", "stream": "lifecycle", "data": {"phase": "start"},
               "sessionKey": f"agent:{AGENT}:main"}),
    ("agent", {"runId": "h2", "stream": "lifecycle",
               "data": {"phase": "error", "error": AUTH_401}, "sessionKey": f"agent:{AGENT}:main"}),
]  # fmt: skip
LIFECYCLE_END_C2 = (
    "agent",
    {"runId": "c2", "stream": "lifecycle", "data": {"phase": "end"},
     "sessionKey": f"agent:{AGENT}:main"},
)  # fmt: skip
LIFECYCLE_CASES = {
    "legacy-heartbeat": (LEGACY_HEARTBEAT, [(RunKind.HEARTBEAT, RunState.FINAL, True)]),
    "legacy-heartbeat-failed": (
        LEGACY_HEARTBEAT_FAILED,
        [(RunKind.HEARTBEAT, RunState.ERROR, False, AUTH_401)],
    ),
    # A chat run's lifecycle end is followed by its chat end: told once, as a chat.
    "chat-2026.3-with-lifecycle": (
        [
            (
                "agent",
                {
                    "runId": "c2",
                    "stream": "lifecycle",
                    "data": {"phase": "end"},
                    "sessionKey": f"agent:{AGENT}:main",
                },
            ),
            *CHAT_2026_3,
        ],
        [(RunKind.CHAT, RunState.FINAL, True)],
    ),
}


@pytest.mark.parametrize("case", LIFECYCLE_CASES)
async def test_a_run_that_ends_with_no_chat_event_is_the_gateways_own(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sidecar.gateway.openclaw.CHAT_END_WAIT_S", 0.01)
    events, expected = LIFECYCLE_CASES[case]
    told = _told(tmp_path, events)
    await asyncio.sleep(0.1)  # past the wait for a chat end
    assert [_seen(e) for e in told] == expected
