"""A scripted OpenAI-compatible model on loopback, for driving real OpenClaw agent runs.

The gateway reaches it as the provider `scripted` (api `openai-completions`): every
agent turn is a streaming `POST /v1/chat/completions` (SSE chunks, then `[DONE]`),
with the agent's tools offered and `stream: true` always set. What the model does
is chosen per test with `behaviour`:

- `Behaviour.REPLY`: answer every turn with plain text (after awaiting
  `before_reply(request)`, if set: a test holds a run open with it).
- `Behaviour.CHECK_IN`: act like a model that follows its wake message. If the turn's
  message says to run a check-in command (a `curl ... /heartbeat` line), answer with
  one `exec` tool call running that command verbatim; once the tool result is back,
  await `before_final(request)` (if set) and answer with text quoting the result.
- `Behaviour.REJECT_CREDENTIALS`: answer every request 401, as a provider does for a
  missing or wrong key. Both generations fail the run at once (no retries), with the
  provider's words: the stand-in for "no model credentials" on a gateway that has a
  provider configured.

`delay_s` holds every answer that long (a slow model: a second wake then arrives while
the first run is still going). Not serving the model at all gives an endpoint that
refuses connections: 2026.9 retries the run for about 70 s, 2026.3 fails it at once.

What the gateway sends and accepts (openclaw-agent-exec.md §2): the turn's own text is
the first user message after the system prompt; a gateway-injected "internal context"
user message always comes last, also after a tool result, so "the last message is a
tool message" is never true and must not be what the script keys on. Tool-call ids
come back with their underscores stripped. Requests without tools (a text-only
continuation pass) are answered with text.
"""

from __future__ import annotations

import asyncio
import enum
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

PROVIDER = "scripted"
MODEL_ID = "scripted-1"
MODEL_REF = f"{PROVIDER}/{MODEL_ID}"
REJECTED = "Incorrect API key provided (scripted)"
API_KEY = "scripted-local"  # a non-secret marker; the gateway sends it as a Bearer token
INTERNAL_CONTEXT_MARK = "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>"
_RUNTIME_AGENT = re.compile(r"^Runtime: (?:[^\n]*? \| )?agent=([A-Za-z0-9_-]+)", re.MULTILINE)
_CHECK_IN_LINE = re.compile(r"^\s*`*(curl\s.*/heartbeat\b.*?)`*\s*$", re.MULTILINE)


def provider_config(port: int) -> dict[str, Any]:
    """The `models` section that makes the gateway use this server (merged into openclaw.json)."""
    return {
        "models": {
            "mode": "merge",
            "providers": {
                PROVIDER: {
                    "baseUrl": f"http://127.0.0.1:{port}/v1",
                    "apiKey": API_KEY,
                    "api": "openai-completions",
                    "models": [
                        {
                            "id": MODEL_ID,
                            "name": "Scripted 1",
                            "reasoning": False,
                            "input": ["text"],
                            "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                            "contextWindow": 128000,
                            "maxTokens": 4096,
                        }
                    ],
                }
            },
        }
    }


class Behaviour(enum.Enum):
    REPLY = "reply"
    CHECK_IN = "check_in"
    REJECT_CREDENTIALS = "reject_credentials"


@dataclass(frozen=True)
class ModelRequest:
    """One chat completion request as received, and what the script answered."""

    received_at: float  # time.perf_counter()
    body: Mapping[str, Any]
    agent_id: str | None  # from the gateway's `Runtime: agent=...` line
    reply: str  # "text", "tool_call" or "rejected"
    command: str | None = None  # the exec command, for a tool call

    @property
    def tool_names(self) -> list[str]:
        return [t.get("function", {}).get("name", "") for t in self.body.get("tools") or []]

    @property
    def tool_results(self) -> list[str]:
        return [_text(m.get("content")) for m in self.body.get("messages", []) if _is_tool(m)]

    @property
    def system_text(self) -> str:
        return "\n".join(
            _text(m.get("content"))
            for m in self.body.get("messages", [])
            if m.get("role") in ("system", "developer")
        )

    @property
    def turn_text(self) -> str:
        return _turn_text(self.body.get("messages", []))


@dataclass
class ScriptedModel:
    """The server; use as `async with ScriptedModel(port) as model:`."""

    port: int
    behaviour: Behaviour = Behaviour.REPLY
    before_final: Callable[[ModelRequest], Awaitable[None]] | None = None
    before_reply: Callable[[ModelRequest], Awaitable[None]] | None = None
    reply_text: str = "Mission Control wake received; nothing else to do."
    delay_s: float = 0.0
    requests: list[ModelRequest] = field(default_factory=list)
    _runner: web.AppRunner | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def for_agent(self, agent_id: str) -> list[ModelRequest]:
        return [r for r in self.requests if r.agent_id == agent_id]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ScriptedModel:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---------------------------------------------------------------- handlers

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = body.get("messages") or []
        received_at = time.perf_counter()
        agent_id = _agent_id(messages)
        if self.behaviour is Behaviour.REJECT_CREDENTIALS:
            self.requests.append(ModelRequest(received_at, body, agent_id, "rejected"))
            await asyncio.sleep(self.delay_s)
            error = {
                "message": REJECTED,
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
            return web.json_response({"error": error}, status=401)
        command = self._command_to_run(body)
        if command is not None:
            self.requests.append(ModelRequest(received_at, body, agent_id, "tool_call", command))
            call = {
                "id": f"call_{secrets.token_hex(8)}",
                "type": "function",
                "function": {"name": "exec", "arguments": json.dumps({"command": command})},
            }
            return await self._answer(request, body, tool_call=call)
        recorded = ModelRequest(received_at, body, agent_id, "text")
        self.requests.append(recorded)
        if self.before_reply is not None:
            await self.before_reply(recorded)
        text = self.reply_text
        results = _turn_tool_results(messages)
        if results:
            if self.before_final is not None:
                await self.before_final(recorded)
            text = f"Checked in with Mission Control. Tool result: {results[-1]}"
        return await self._answer(request, body, text=text)

    def _command_to_run(self, body: Mapping[str, Any]) -> str | None:
        """The check-in command to run now, or None when the answer is text."""
        if self.behaviour is not Behaviour.CHECK_IN:
            return None
        messages = body.get("messages") or []
        tools = {t.get("function", {}).get("name") for t in body.get("tools") or []}
        if "exec" not in tools or _turn_tool_results(messages):
            return None
        match = _CHECK_IN_LINE.search(_turn_text(messages))
        return match.group(1).strip() if match else None

    async def _answer(
        self,
        request: web.Request,
        body: Mapping[str, Any],
        *,
        text: str = "",
        tool_call: dict[str, Any] | None = None,
    ) -> web.StreamResponse:
        await asyncio.sleep(self.delay_s)  # recorded as received already: the call is under way
        completion_id = f"chatcmpl-{secrets.token_hex(6)}"
        created = int(time.time())
        finish = "tool_calls" if tool_call else "stop"
        usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if tool_call:
                message["tool_calls"] = [tool_call]
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": MODEL_ID,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)

        async def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": MODEL_ID,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            if finish_reason is not None:
                payload["usage"] = usage
            await response.write(f"data: {json.dumps(payload)}\n\n".encode())

        if tool_call:
            arguments = tool_call["function"]["arguments"]
            head = {**tool_call, "index": 0, "function": {"name": "exec", "arguments": ""}}
            await chunk({"role": "assistant", "content": None, "tool_calls": [head]})
            await chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]})
        else:
            await chunk({"role": "assistant", "content": ""})
            await chunk({"content": text})
        await chunk({}, finish)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


# ------------------------------------------------------------------ helpers


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


def _is_tool(message: Mapping[str, Any]) -> bool:
    return message.get("role") == "tool"


def _is_internal(message: Mapping[str, Any]) -> bool:
    return INTERNAL_CONTEXT_MARK in _text(message.get("content"))


def _turn_start(messages: list[Mapping[str, Any]]) -> int:
    """Index of the turn's own user message: the last user message that is not internal."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") == "user" and not _is_internal(message):
            return index
    return len(messages)


def _turn_text(messages: list[Mapping[str, Any]]) -> str:
    start = _turn_start(messages)
    return _text(messages[start].get("content")) if start < len(messages) else ""


def _turn_tool_results(messages: list[Mapping[str, Any]]) -> list[str]:
    """Tool results already returned in this turn (after the turn's user message)."""
    return [_text(m.get("content")) for m in messages[_turn_start(messages) :] if _is_tool(m)]


def _agent_id(messages: list[Mapping[str, Any]]) -> str | None:
    for message in messages:
        match = _RUNTIME_AGENT.search(_text(message.get("content")))
        if match:
            return match.group(1)
    return None
