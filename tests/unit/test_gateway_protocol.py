"""Gateway protocol decisions: generation, hello parsing, error mapping, durations."""

from __future__ import annotations

import json

import pytest

from protos import link_pb2 as pb
from protos.contract import GatewayErrorKind, GatewayGeneration
from sidecar.gateway import (
    GatewayError,
    GatewayRuntime,
    GatewayUnavailable,
    RunOutcome,
    RunState,
    SessionPage,
)
from sidecar.gateway.protocol import (
    ClientIdentity,
    GatewayHandshakeError,
    GatewayNotPaired,
    GatewayProtocolMismatch,
    GatewayTimeout,
    GatewayTokenMismatch,
    TurnEvidence,
    check_scopes,
    connect_params,
    decode_frame,
    detect_generation,
    handshake_error,
    heartbeat_every,
    is_agent_not_loaded,
    main_session_key,
    parse_hello,
    parse_sessions,
    parse_status,
    request_error,
    run_outcome,
    turn_evidence,
)
from sidecar.gateway.queries import GatewayQueries
from tests.support import RecordingGateway, wait_for


def test_current_hello_is_protocol_4_current_generation() -> None:
    hello = parse_hello(
        {
            "type": "hello-ok",
            "protocol": 4,
            "server": {"version": "2026.9.6"},
            "features": {"methods": ["health", "cron.scratch.set"]},
            "auth": {"scopes": ["operator.admin"]},
            "policy": {"tickIntervalMs": 30000},
        }
    )
    assert (hello.protocol, hello.version, hello.generation) == (
        4,
        "2026.9.6",
        GatewayGeneration.CURRENT,
    )
    assert hello.tick_interval_ms == 30000
    assert check_scopes(hello, ClientIdentity()) is None


def test_legacy_hello_without_auth_scopes_is_accepted() -> None:
    hello = parse_hello(
        {"protocol": 3, "server": {"version": "2026.3.8"}, "features": {"methods": ["health"]}}
    )
    assert hello.generation is GatewayGeneration.LEGACY_2026_3
    assert hello.scopes is None
    assert check_scopes(hello, ClientIdentity()) is None


@pytest.mark.parametrize(
    ("protocol", "methods", "generation"),
    [
        (4, set(), GatewayGeneration.CURRENT),
        (3, {"cron.scratch.set"}, GatewayGeneration.CURRENT),
        (3, {"agents.create"}, GatewayGeneration.LEGACY_2026_3),
        (0, set(), GatewayGeneration.UNKNOWN),
    ],
)
def test_generation_is_detected_by_capability(
    protocol: int, methods: set[str], generation: GatewayGeneration
) -> None:
    assert detect_generation(protocol, frozenset(methods)) is generation


def test_empty_scopes_fail_with_the_cause_and_the_backend_fix() -> None:
    hello = parse_hello({"protocol": 4, "auth": {"scopes": []}})
    error = check_scopes(hello, ClientIdentity(origin="http://127.0.0.1:18789"))
    assert error is not None
    assert isinstance(error, GatewayUnavailable) and error.retryable
    message = str(error)
    assert "cleared its scopes" in message
    assert "Origin header 'http://127.0.0.1:18789'" in message
    assert "gateway-client/backend" in message
    assert "dangerouslyDisableDeviceAuth" not in message


def test_token_mismatch_names_the_config_key_and_file() -> None:
    error = handshake_error(
        {
            "code": "INVALID_REQUEST",
            "message": "unauthorized: gateway token mismatch (provide gateway auth token)",
            "details": {"code": "AUTH_TOKEN_MISMATCH", "authReason": "token_mismatch"},
        },
        config_path="/h/.openclaw/openclaw.json",
        protocols=(3, 4),
    )
    assert isinstance(error, GatewayTokenMismatch)
    assert error.code == "gateway_token_mismatch"
    assert "AUTH_TOKEN_MISMATCH" in str(error)
    assert "gateway.auth.token" in str(error) and "/h/.openclaw/openclaw.json" in str(error)


def test_protocol_mismatch_names_both_protocols() -> None:
    error = handshake_error(
        {
            "code": "INVALID_REQUEST",
            "message": "protocol mismatch",
            "details": {"code": "PROTOCOL_MISMATCH", "expectedProtocol": 5},
        },
        config_path="c",
        protocols=(3, 4),
    )
    assert isinstance(error, GatewayProtocolMismatch)
    assert "protocol 5" in str(error) and "3..4" in str(error)


def test_not_paired_says_to_use_the_shared_token_on_loopback() -> None:
    error = handshake_error(
        {
            "code": "NOT_PAIRED",
            "message": "device identity required",
            "details": {"code": "DEVICE_IDENTITY_REQUIRED"},
        },
        config_path="c",
        protocols=(3, 4),
    )
    assert isinstance(error, GatewayNotPaired)
    assert "loopback" in str(error) and "gateway.auth.token" in str(error)


def test_other_refusals_keep_the_gateway_message() -> None:
    error = handshake_error(
        {"code": "INVALID_REQUEST", "message": "odd"}, config_path="c", protocols=(3, 4)
    )
    assert isinstance(error, GatewayHandshakeError) and "odd" in str(error)


def test_connect_params_are_the_backend_identity_without_origin() -> None:
    params = connect_params("tok", ClientIdentity(), "0.1.0", "linux")
    assert params["client"]["id"] == "gateway-client"
    assert params["client"]["mode"] == "backend"
    assert (params["minProtocol"], params["maxProtocol"]) == (3, 4)
    assert params["role"] == "operator" and params["scopes"] == ["operator.admin"]
    assert params["auth"] == {"token": "tok"}


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0m"), (1800, "30m"), (45, "45s"), (7200, "2h"), (90, "90s")]
)
def test_heartbeat_cadence_text(seconds: int, text: str) -> None:
    assert heartbeat_every(seconds) == text


def _text(text: str) -> dict[str, object]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


@pytest.mark.parametrize(
    ("event", "outcome"),
    [
        ({"state": "delta", "deltaText": "hi"}, None),
        ({"state": "status", "phase": "starting_model"}, None),
        ({"state": "final", "message": _text("done")}, RunOutcome("r", RunState.FINAL, "done")),
        (
            {"state": "error", "errorMessage": "No route-compatible authentication source"},
            RunOutcome("r", RunState.ERROR, "No route-compatible authentication source"),
        ),
        ({"state": "aborted"}, RunOutcome("r", RunState.ABORTED, "run aborted")),
        (
            {"state": "final", "message": _text("⚠️ Agent failed before reply: No API key")},
            RunOutcome("r", RunState.ERROR, "Agent failed before reply: No API key"),
        ),
    ],
    ids=["delta", "status", "final", "error", "aborted", "legacy-failed-final"],
)
def test_chat_events_map_to_run_outcomes(
    event: dict[str, object], outcome: RunOutcome | None
) -> None:
    assert run_outcome({"runId": "r", **event}) == outcome


# ---------------------------------------------------------------- status and sessions
# Shapes as observed from 2026.9.6 (trimmed); 2026.3 rows lack most optional fields.

STATUS_PAYLOAD = {
    "runtimeVersion": "2026.9.6",
    "heartbeat": {
        "defaultAgentId": "main",
        "agents": [
            {"agentId": "main", "enabled": True, "every": "30m", "everyMs": 1800000},
            {"agentId": "mc-1", "enabled": False, "every": "disabled", "everyMs": None},
            {"enabled": True},  # no id: skipped
        ],
    },
    "sessions": {"count": 2, "byAgent": {}},
    "pid": 16670,
    "processMemory": {"rssBytes": 931622912},
}


def test_status_payload_keeps_heartbeats_pid_memory_and_session_count() -> None:
    runtime = parse_status(STATUS_PAYLOAD)
    assert runtime.sessions_count == 2 and runtime.pid == 16670
    assert runtime.rss_bytes == 931622912
    assert [(a.agent_id, a.heartbeat_enabled, a.heartbeat_every_s) for a in runtime.agents] == [
        ("main", True, 1800),
        ("mc-1", False, 0),
    ]


def test_status_payload_with_missing_or_odd_fields_reads_as_zeros() -> None:
    runtime = parse_status({"sessions": "n/a", "pid": True, "heartbeat": {"agents": "x"}})
    assert (runtime.sessions_count, runtime.pid, runtime.rss_bytes, runtime.agents) == (0, 0, 0, ())


def test_sessions_payload_is_sorted_newest_first_and_tolerates_old_rows() -> None:
    page = parse_sessions(
        {
            "count": 3,
            "totalCount": 5,
            "sessions": [
                {
                    "key": "agent:mc-1:main",
                    "agentId": "mc-1",
                    "kind": "direct",
                    "isMain": True,
                    "status": "failed",
                    "hasActiveRun": False,
                    "updatedAt": 1795270747788,
                    "lastRunError": "No route-compatible authentication source",
                    "model": "gpt-6-astra",
                    "totalTokens": 12,
                },
                {"key": "agent:mc-2:main", "updatedAt": 1795270750000, "hasActiveRun": True},
                {"key": "agent:mc-3:side-chat"},
                {"agentId": "no-key"},  # no key: skipped
            ],
        }
    )
    assert page.total == 5
    assert [s.key for s in page.sessions] == [
        "agent:mc-2:main",
        "agent:mc-1:main",
        "agent:mc-3:side-chat",
    ]
    newest, failed, side = page.sessions
    assert newest.agent_id == "mc-2" and newest.is_main and newest.has_active_run
    assert failed.status == "failed" and failed.last_run_error.startswith("No route")
    assert failed.total_tokens == 12 and failed.model == "gpt-6-astra"
    assert side.agent_id == "mc-3" and not side.is_main and side.updated_at_ms == 0


def test_main_session_key_is_the_one_wakes_use() -> None:
    assert main_session_key("mc-1") == "agent:mc-1:main"


# ---------------------------------------------------------------- what an error means
# Errors as the real gateways answered them (2026.9.6 and 2026.3.8, loopback probes);
# tests/interop/test_gateway_errors.py provokes each class against a running gateway.

OBSERVED_ERRORS = [
    # The gateway asks to be asked again.
    ("chat.send", {"code": "INVALID_REQUEST",
                   "message": 'Agent "mc-4e77" no longer exists in configuration'}, "RETRY"),
    ("sessions.reset", {"code": "UNAVAILABLE", "message":
        "Session agent:mc-2d:main is still active; try again in a moment."}, "RETRY"),
    ("config.patch", {"code": "UNAVAILABLE", "message": "config.patch persisted but was not "
        "applied to the active Gateway (superseded); run config.get, then use config.apply"},
     "RETRY"),
    ("config.patch", {"code": "INVALID_REQUEST",
                      "message": "config changed since last load; re-run config.get and retry"},
     "RETRY"),
    ("config.patch", {"code": "UNAVAILABLE", "message": "rate limit exceeded for config.patch; "
        "retry after 57s", "retryable": True, "retryAfterMs": 56230,
        "details": {"method": "config.patch", "limit": "3 per 60s"}}, "RETRY"),
    ("chat.send", {"code": "INVALID_REQUEST", "message": "session routing changed; review and "
                   "retry", "details": {"reason": "session-routing-changed"}}, "RETRY"),
    ("chat.send", {"code": "UNAVAILABLE", "message": "Previous run is still shutting down. "
                   "Please try again in a moment.", "retryable": True, "retryAfterMs": 250},
     "RETRY"),
    # The request can never succeed as sent.
    ("agents.update", {"code": "INVALID_REQUEST",
                       "message": "invalid agents.update params: at root: unexpected property "
                       "'bogus'"}, "PERMANENT"),
    ("agents.files.set", {"code": "INVALID_REQUEST", "message": 'unsupported file "../x.md"'},
     "PERMANENT"),
    ("agents.delete", {"code": "INVALID_REQUEST", "message": 'agent "nope" not found'},
     "PERMANENT"),
    ("agents.create", {"code": "INVALID_REQUEST", "message": 'agent "mc-1" already exists'},
     "PERMANENT"),
    # The gateway refuses the sidecar itself: nothing works until an operator fixes it.
    ("agents.list", {"code": "FORBIDDEN", "message": "missing scope: operator.read",
                     "details": {"code": "MISSING_SCOPE", "missingScope": "operator.read"}},
     "UNREACHABLE"),
    ("connect", {"code": "NOT_PAIRED", "message": "device identity required",
                 "details": {"code": "DEVICE_IDENTITY_REQUIRED"}}, "UNREACHABLE"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "error", "kind"), OBSERVED_ERRORS)
def test_each_gateway_error_is_classified_from_what_it_says(
    method: str, error: dict[str, object], kind: str
) -> None:
    classified = request_error(method, error)
    assert classified.kind is GatewayErrorKind[kind]
    assert classified.retryable is (kind != "PERMANENT")
    assert method in str(classified) and str(error["message"]) in str(classified)


def test_an_explicit_retryable_flag_and_retry_after_win() -> None:
    error = request_error(
        "x", {"code": "INVALID_REQUEST", "message": "odd", "retryable": True, "retryAfterMs": 1500}
    )
    assert error.kind is GatewayErrorKind.RETRY and error.retry_after_s == 1.5
    refused = request_error("x", {"code": "UNAVAILABLE", "message": "x", "retryable": False})
    assert refused.kind is GatewayErrorKind.PERMANENT and not refused.retryable


def test_connection_level_errors_say_the_gateway_is_unreachable() -> None:
    assert GatewayUnavailable("down").kind is GatewayErrorKind.UNREACHABLE
    assert GatewayTimeout("slow").kind is GatewayErrorKind.RETRY
    assert GatewayError("x", retryable=False).kind is GatewayErrorKind.PERMANENT


def test_unknown_agent_wording_is_the_loading_agent_wording() -> None:
    # The gateway says the same for an agent it is loading and one that is gone; the
    # client checks agents.list before it calls a wake refused for good.
    error = request_error("chat.send", OBSERVED_ERRORS[0][1])
    assert is_agent_not_loaded(error)


# ---------------------------------------------------------------- evidence of a model turn


@pytest.mark.parametrize(
    ("event", "payload", "evidence"),
    [
        ("agent", {"runId": "r", "stream": "assistant",
                   "data": {"text": "Mission Control wake received", "delta": "Mission"}},
         TurnEvidence("r", output_chars=29)),
        ("agent", {"runId": "r", "stream": "usage", "data": {"outputTokens": 20}},
         TurnEvidence("r", usage_tokens=20)),
        ("chat", {"runId": "r", "state": "delta", "deltaText": "hi there"},
         TurnEvidence("r", output_chars=8)),
        ("chat", {"runId": "r", "state": "delta", "message": _text("from the message")},
         TurnEvidence("r", output_chars=16)),
        # A model endpoint that refuses connections: empty output between retries.
        ("agent", {"runId": "r", "stream": "assistant",
                   "data": {"text": "", "delta": "", "replace": True}}, None),
        ("agent", {"runId": "r", "stream": "usage", "data": {"outputTokens": 0}}, None),
        ("agent", {"runId": "r", "stream": "lifecycle", "data": {"phase": "model"}}, None),
        ("agent", {"runId": "r", "stream": "assistant",
                   "data": {"text": "⚠️ This agent's workspace is missing on the gateway host"}},
         None),
        ("chat", {"runId": "r", "state": "final", "message": _text("final text alone")}, None),
        ("agent", {"stream": "assistant", "data": {"text": "no run id"}}, None),
    ],
    ids=["assistant", "usage", "delta", "delta-message", "empty-retry", "zero-usage",
         "lifecycle", "gateway-notice", "final-only", "no-run-id"],
)  # fmt: skip
def test_turn_evidence_is_model_output_or_usage(
    event: str, payload: dict[str, object], evidence: TurnEvidence | None
) -> None:
    assert turn_evidence(event, payload) == evidence


def test_a_final_is_a_turn_only_with_evidence() -> None:
    final = {"runId": "r", "state": "final", "message": _text("done")}
    assert run_outcome(final) == RunOutcome("r", RunState.FINAL, "done", model_turn=False)
    assert run_outcome(final, model_turn=True) == RunOutcome("r", RunState.FINAL, "done", True)


HOSTILE_NUMBERS = [2**70, -(2**70), 1e300, -1.0, float("inf"), float("-inf"), float("nan"), True]


class NumbersGateway(RecordingGateway):
    """Reports every count, size and time as `number`, parsed as from the real gateway."""

    def __init__(self, number: object) -> None:
        super().__init__()
        self.number = number

    async def runtime_status(self) -> GatewayRuntime:
        n = self.number
        return parse_status(
            {
                "pid": n,
                "sessions": {"count": n},
                "processMemory": {"rssBytes": n},
                "heartbeat": {"agents": [{"agentId": "a", "enabled": True, "everyMs": n}]},
            }
        )

    async def list_sessions(self, agent_id: str = "", limit: int = 100) -> SessionPage:
        n = self.number
        return parse_sessions(
            {"sessions": [{"key": "agent:a:main", "updatedAt": n, "totalTokens": n}], "count": n}
        )


@pytest.mark.parametrize(
    "kind", [pb.GatewayQuery.STATUS, pb.GatewayQuery.SESSIONS, pb.GatewayQuery.HEARTBEATS]
)
@pytest.mark.parametrize("number", HOSTILE_NUMBERS)
async def test_every_number_the_gateway_reports_fits_the_answer(number: object, kind: int) -> None:
    sent: list[pb.SidecarMessage] = []
    queries = GatewayQueries(NumbersGateway(number), pb.GatewayState, sent.append)
    queries.submit(pb.GatewayQuery(query_id=1, kind=kind))  # type: ignore[arg-type]
    await wait_for(lambda: sent, what="the query answered")
    [message] = sent
    assert message.gateway_query_result.error_code == "", message


@pytest.mark.parametrize(
    "frame",
    [
        '{"a": "\\ud800"}',
        '{"\\udfff": ["x\\ud800y", {"b": "\\udc00"}]}',
        '["\\ud83d"]',  # the first half of a pair, alone
    ],
)
def test_lone_surrogates_in_gateway_frames_become_replacement_characters(frame: str) -> None:
    decoded = decode_frame(frame)
    assert "\ufffd" in json.dumps(decoded, ensure_ascii=False)
    json.dumps(decoded, ensure_ascii=False).encode()  # carriable as UTF-8 now


def test_a_valid_surrogate_pair_in_a_frame_is_kept() -> None:
    assert decode_frame('{"e": "\\ud83d\\ude00"}') == {"e": "😀"}
