"""A run is a check-in only with a model turn: the gateway client over recorded events.

The sequences are the `chat` and `agent` events real gateways broadcast to the sidecar's
connection (trimmed from loopback probes of 2026.9.6 and 2026.3.8 with the scripted
model): a model that answers, a second wake folded into a run already going, and a
model endpoint that refuses connections. The client is not connected; events are
handed to its connection as they would arrive.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sidecar.gateway import RunOutcome, RunState
from sidecar.gateway.openclaw import OpenClawGatewayClient

Events = list[tuple[str, dict[str, Any]]]


def _text(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _assistant(run: str, text: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    return "agent", {"runId": run, "stream": "assistant", "data": {"text": text, "delta": text,
                                                                   **extra}}  # fmt: skip


def _status(run: str, phase: str) -> tuple[str, dict[str, Any]]:
    return "chat", {"runId": run, "state": "status", "phase": phase}


REPLY = "Mission Control wake received; nothing else to do."

ANSWERING_2026_9: Events = [
    _status("a", "preparing_workspace"),
    ("agent", {"runId": "a", "stream": "lifecycle", "data": {"phase": "model"}}),
    _assistant("a", REPLY),
    ("chat", {"runId": "a", "state": "delta", "message": _text(REPLY), "deltaText": REPLY}),
    ("agent", {"runId": "a", "stream": "usage", "data": {"outputTokens": 20}}),
    ("agent", {"runId": "a", "stream": "lifecycle", "data": {"phase": "end"}}),
    ("chat", {"runId": "a", "state": "final", "stopReason": "stop", "message": _text(REPLY)}),
]
ANSWERING_2026_3: Events = [
    ("agent", {"runId": "a", "stream": "lifecycle", "data": {"phase": "start"}}),
    _assistant("a", REPLY),
    ("chat", {"runId": "a", "state": "delta", "message": _text(REPLY)}),
    ("agent", {"runId": "a", "stream": "lifecycle", "data": {"phase": "end"}}),
    ("chat", {"runId": "a", "state": "final", "message": _text(REPLY)}),
]
# The second wake ("b") arrives while "a" waits for a slow model: the gateway folds its
# message into "a" and ends "b" at once, final with no message.
OVERLAPPING_2026_9: Events = [
    _status("a", "starting_model"),
    _assistant("a", REPLY),
    ("agent", {"runId": "a", "stream": "usage", "data": {"outputTokens": 20}}),
    ("chat", {"runId": "b", "state": "final"}),
    _assistant("a", REPLY),
    ("chat", {"runId": "a", "state": "final", "message": _text(f"{REPLY}\n\n{REPLY}")}),
]
OVERLAPPING_2026_3: Events = [
    ("agent", {"runId": "a", "stream": "lifecycle", "data": {"phase": "start"}}),
    ("chat", {"runId": "b", "state": "final"}),
    _assistant("a", REPLY),
    ("chat", {"runId": "a", "state": "final", "message": _text(REPLY)}),
]
# The model endpoint refuses connections: 2026.9 retries "a" 8 times over ~70 s (empty
# assistant events between tries), ends the wake sent meanwhile ("b") at once, final
# with no message, then fails "a" twice (its error, then the same as a notice).
REFUSED_2026_9: Events = [
    ("agent", {"runId": "a", "stream": "run_status", "data": {"phase": "retrying"}}),
    _assistant("a", "", replace=True),
    ("agent", {"runId": "a", "stream": "run_status", "data": {"phase": "retrying"}}),
    _assistant("a", "", replace=True),
    ("chat", {"runId": "b", "state": "final"}),
    ("chat", {"runId": "a", "state": "error",
              "errorMessage": "LLM request failed: connection refused by the provider endpoint."}),
    ("chat", {"runId": "a", "state": "error", "errorMessage":
              "⚠️ Agent failed before reply: LLM request failed: connection refused."}),
]  # fmt: skip
REFUSED_2026_3: Events = [
    ("agent", {"runId": "a", "stream": "lifecycle", "data": {"phase": "start"}}),
    ("agent", {"runId": "a", "stream": "lifecycle", "data": {"phase": "error"}}),
    ("chat", {"runId": "a", "state": "error", "errorMessage": "LLM request timed out."}),
]

CASES = {
    "answering-2026.9": (ANSWERING_2026_9, {"a": (RunState.FINAL, True)}),
    "answering-2026.3": (ANSWERING_2026_3, {"a": (RunState.FINAL, True)}),
    "overlapping-2026.9": (
        OVERLAPPING_2026_9,
        {"a": (RunState.FINAL, True), "b": (RunState.FINAL, False)},
    ),
    "overlapping-2026.3": (
        OVERLAPPING_2026_3,
        {"a": (RunState.FINAL, True), "b": (RunState.FINAL, False)},
    ),
    "refused-2026.9": (
        REFUSED_2026_9,
        {"a": (RunState.ERROR, False), "b": (RunState.FINAL, False)},
    ),
    "refused-2026.3": (REFUSED_2026_3, {"a": (RunState.ERROR, False)}),
}


@pytest.mark.parametrize("case", CASES)
async def test_only_a_run_with_model_output_or_usage_is_a_turn(case: str, tmp_path: Path) -> None:
    events, expected = CASES[case]
    client = OpenClawGatewayClient(tmp_path / "openclaw.json")
    for event, payload in events:
        client._connection._on_event(event, payload)  # as the socket hands them on
    for run_id, (state, turn) in expected.items():
        outcome = await client.wait_run(run_id, timeout_s=0.01)
        assert (outcome.state, outcome.model_turn) == (state, turn), (run_id, outcome)


async def test_the_first_end_of_a_run_is_its_outcome(tmp_path: Path) -> None:
    client = OpenClawGatewayClient(tmp_path / "openclaw.json")
    for event, payload in REFUSED_2026_9:
        client._connection._on_event(event, payload)
    outcome = await client.wait_run("a", timeout_s=0.01)
    assert outcome == RunOutcome(
        "a", RunState.ERROR, "LLM request failed: connection refused by the provider endpoint."
    )


async def test_a_wake_whose_run_the_gateway_superseded_is_sent_again(tmp_path: Path) -> None:
    """2026.9 fails a run started while it reloads its config (an apply's own change)
    with "...generation was superseded": the model never saw the wake, so the client
    sends it again under a derived key, and the caller's run id ends as the resent run."""
    client = OpenClawGatewayClient(tmp_path / "openclaw.json")
    sent: list[str] = []

    async def send_chat(agent_id: str, message: str, key: str) -> dict[str, Any]:
        sent.append(key)
        return {"runId": key, "status": "started"}

    client._send_chat = send_chat  # type: ignore[method-assign]
    run_id = await client.wake("mc-1", "Wake up.", "k")
    superseded = "Error: prepared model runtime plugin generation was superseded for /x/agent"
    client._connection._on_event(
        "chat", {"runId": "k", "state": "error", "errorMessage": superseded}
    )
    for _ in range(5):
        await asyncio.sleep(0)  # the resend task
    assert sent == ["k", "k:1"]
    final = {"runId": "k:1", "state": "final", "message": _text(REPLY)}
    for event, payload in [_assistant("k:1", REPLY), ("chat", final)]:
        client._connection._on_event(event, payload)
    outcome = await client.wait_run(run_id, timeout_s=0.01)
    assert outcome == RunOutcome("k", RunState.FINAL, REPLY, model_turn=True)


async def test_a_run_superseded_again_and_again_ends_in_its_error(tmp_path: Path) -> None:
    client = OpenClawGatewayClient(tmp_path / "openclaw.json")
    sent: list[str] = []

    async def send_chat(agent_id: str, message: str, key: str) -> dict[str, Any]:
        sent.append(key)
        return {"runId": key}

    client._send_chat = send_chat  # type: ignore[method-assign]
    await client.wake("mc-1", "Wake up.", "k")
    for key in ("k", "k:1", "k:2"):
        client._connection._on_event(
            "chat", {"runId": key, "state": "error", "errorMessage": "generation was superseded"}
        )
        for _ in range(5):
            await asyncio.sleep(0)
    assert sent == ["k", "k:1", "k:2"]  # two resends, then the error stands
    outcome = await client.wait_run("k", timeout_s=0.01)
    assert outcome.state is RunState.ERROR and "superseded" in outcome.message
