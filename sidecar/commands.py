"""Applying hub commands: one handler per command type, idempotent, in order.

A command whose generation the sidecar already applied is acknowledged as
ALREADY_APPLIED and not redone. Invalid commands are REJECTED before anything is
written. A command that fails for a reason that can pass (gateway down, disk
full, the gateway asking to be asked again) is reported as FAILED, so the hub can
show why the agent waits, and is retried in place: later commands wait behind it,
keeping the order the hub chose. What a gateway error means is decided once, where
it is parsed (`sidecar.gateway.protocol.classify_error`); the result carries it.
An unexpected error in a handler is reported the same way (FAILED, `internal_error`):
the queue goes on living and the hub shows why.

Workspace files are written, hashed and removed in a worker thread: an agent's files
may be anything (sidecar/workspace.py), and the event loop serves every agent's API.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from missioncontrol.log import get_logger
from missioncontrol.tasks import start_long_lived
from missioncontrol.text import displayable
from protos import link_pb2 as pb
from protos.contract import epoch_s, timestamp
from sidecar.gateway import (
    AgentEntry,
    GatewayClient,
    GatewayError,
    GatewayInfo,
    HeartbeatSpec,
    RunState,
)
from sidecar.state import AgentState, Credential, LocalState
from sidecar.workspace import FileToWrite, WorkspaceError, WorkspaceWriter, remove_tree

log = get_logger("sidecar.commands")

Outcome = pb.CommandResult.Outcome
WAKE_RUN_TIMEOUT_S = 600.0
RETRY_AFTER_MAX_S = 120.0  # a gateway's retry-after beyond this is not waited out
MAX_ERROR_CHARS = 4096
# The gateway's agent ids (the only names its per-agent state directories take).
_GATEWAY_AGENT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# Key space for wake idempotency keys: same command, same key, same run.
_WAKE_NAMESPACE = uuid.UUID("6f1d7a4e-2f51-4c67-9a51-8d2f0c7f3b10")


def wake_idempotency_key(agent_id: str, generation: int, sequence: int) -> str:
    return str(uuid.uuid5(_WAKE_NAMESPACE, f"{agent_id}/{generation}/{sequence}"))


@dataclass
class _Done:
    """What a handler achieved; turned into a CommandResult and a state change."""

    outcome: int = Outcome.APPLIED
    upsert: AgentState | None = None
    remove: str | None = None
    credentials: dict[str, list[Credential]] | None = None
    run_id: str = ""
    wake_delivered: bool = False


def _credentials(agent_id: str, creds: list[pb.AgentCredential]) -> list[Credential]:
    return [
        Credential(
            token_id=c.token_id,
            agent_id=agent_id,
            sha256=bytes(c.sha256),
            not_after=epoch_s(c.not_after) if c.HasField("not_after") else None,
        )
        for c in creds
    ]


def _files(files: list[pb.WorkspaceFile]) -> list[FileToWrite]:
    return [FileToWrite(f.name, bytes(f.content), f.secret, f.preserve_if_present) for f in files]


RunObservedSink = Callable[[pb.RunObserved], None]


class CommandApplier:
    """Turns one Command into gateway calls and file writes; returns its CommandResult."""

    def __init__(
        self,
        state: LocalState,
        writer: WorkspaceWriter,
        gateway: GatewayClient,
        on_run_observed: RunObservedSink,
        *,
        wake_run_timeout_s: float = WAKE_RUN_TIMEOUT_S,
        on_unmanage: Callable[[str], None] = lambda agent_id: None,
        on_manage: Callable[[str], None] = lambda agent_id: None,
        on_applied: Callable[[str, int, float], None] = lambda kind, outcome, seconds: None,
        gateway_state_dir: Path | None = None,
    ) -> None:
        self.state = state
        self.writer = writer
        self.gateway = gateway
        self.on_run_observed = on_run_observed
        self.wake_run_timeout_s = wake_run_timeout_s
        # Told before the sidecar removes an entry, so the config watcher does not take our
        # own removal for a hand edit and restore it.
        self.on_unmanage = on_unmanage
        # Told before an apply edits the gateway's config, for the same reason: the watcher
        # may see the new entry before the result is in, and must not call it a hand edit.
        self.on_manage = on_manage
        self.on_applied = on_applied  # (command kind, outcome, seconds): metrics
        # Where the gateway keeps each agent's own state (`agents/<id>/`): what a removal
        # leaves there, the sidecar removes.
        self.gateway_state_dir = gateway_state_dir
        # How long the gateway asked to wait before the last FAILED command is tried again.
        self.retry_after_s = 0.0
        self._watchers: set[asyncio.Task[None]] = set()
        self._handlers: dict[str, Callable[[pb.Command], Awaitable[_Done]]] = {
            "apply_agent": self._apply_agent,
            "remove_agent": self._remove_agent,
            "wake_agent": self._wake_agent,
            "set_heartbeat": self._set_heartbeat,
            "set_credentials": self._set_credentials,
        }

    async def apply(self, command: pb.Command) -> pb.CommandResult:
        started = time.monotonic()
        result = await self._apply(command)
        self.on_applied(
            command.WhichOneof("action") or "", result.outcome, time.monotonic() - started
        )
        return result

    async def _apply(self, command: pb.Command) -> pb.CommandResult:
        kind = command.WhichOneof("action")
        action = getattr(command, kind) if kind else None
        result = pb.CommandResult(
            sequence=command.sequence,
            agent_id=getattr(action, "agent_id", ""),
            generation=getattr(action, "generation", 0),
        )
        handler = self._handlers.get(kind or "")
        if handler is None:
            # A newer hub's command this sidecar does not know: refuse it, don't stall on it.
            return self._finish(
                result,
                Outcome.REJECTED,
                "unknown_command",
                f"command type {kind!r} is not supported by this sidecar; upgrade the sidecar",
            )
        self.retry_after_s = 0.0
        if kind == "apply_agent" and result.agent_id:
            self.on_manage(result.agent_id)
        try:
            done = await handler(command)
        except WorkspaceError as exc:
            return self._finish(result, Outcome.REJECTED, exc.code, str(exc))
        except GatewayError as exc:
            outcome = Outcome.FAILED if exc.retryable else Outcome.REJECTED
            result.error_kind = exc.kind.proto
            self.retry_after_s = exc.retry_after_s
            return self._finish(result, outcome, exc.code, str(exc))
        except OSError as exc:
            return self._finish(result, Outcome.FAILED, "io_error", f"{exc}")
        except Exception as exc:  # a bug or a surprise: retried in place, and shown to the hub
            log.exception("command.apply.failed", sequence=command.sequence, kind=kind)
            return self._finish(
                result,
                Outcome.FAILED,
                "internal_error",
                f"the sidecar failed unexpectedly applying this command ({exc!r}); it retries; "
                "if this persists, see the sidecar log (command.apply.failed) and report it",
            )
        self.state.record_applied(
            command.sequence,
            upsert=[done.upsert] if done.upsert else [],
            remove=[done.remove] if done.remove else [],
            credentials=done.credentials,
        )
        result.run_id = done.run_id
        result.wake_delivered = done.wake_delivered
        if done.upsert:
            result.file_sha256.update(done.upsert.files)
        return self._finish(result, done.outcome)

    def _finish(
        self, result: pb.CommandResult, outcome: int, code: str = "", error: str = ""
    ) -> pb.CommandResult:
        result.outcome = outcome  # type: ignore[assignment]
        result.error_code = code
        # Error text quotes the gateway and the file system: make it carriable and bounded.
        error = displayable(error, max_chars=MAX_ERROR_CHARS)
        result.error = error
        result.observed_at.CopyFrom(timestamp())
        if outcome == Outcome.REJECTED:
            # Never retried: count it as processed so the queue moves on.
            self.state.record_applied(result.sequence)
        log.info(
            "command.applied"
            if outcome in (Outcome.APPLIED, Outcome.ALREADY_APPLIED)
            else "command.not_applied",
            sequence=result.sequence,
            agent_id=result.agent_id,
            outcome=Outcome.Name(outcome),
            error_code=code or None,
            error=error or None,
        )
        return result

    def _already(self, agent_id: str, generation: int) -> bool:
        known = self.state.agent(agent_id)
        return known is not None and known.generation >= generation

    # ------------------------------------------------------------ handlers

    async def _apply_agent(self, command: pb.Command) -> _Done:
        spec = command.apply_agent
        if self._already(spec.agent_id, spec.generation):
            return _Done(outcome=Outcome.ALREADY_APPLIED)
        files = _files(list(spec.files))
        # Files first: a gateway that finds profile files in place keeps them instead of
        # seeding its templates over them.
        workspace, hashes = await asyncio.to_thread(self._write, spec.workspace_path, files)
        await self.gateway.ensure_agent(
            AgentEntry(
                agent_id=spec.agent_id,
                name=spec.display_name or spec.agent_id,
                workspace=workspace,
                emoji=spec.emoji,
                model=spec.model,
            )
        )
        if spec.HasField("heartbeat"):
            await self.gateway.set_heartbeat(spec.agent_id, _heartbeat(spec.heartbeat))
        if spec.reset_session:
            await self.gateway.reset_session(spec.agent_id)
        done = _Done(
            upsert=AgentState(
                spec.agent_id,
                spec.generation,
                str(workspace),
                hashes,
                spec.hub_agent_id,
                heartbeat=_heartbeat(spec.heartbeat) if spec.HasField("heartbeat") else None,
            ),
            credentials={spec.agent_id: _credentials(spec.agent_id, list(spec.credentials))},
        )
        if spec.wake_message:
            done.run_id = await self._wake(
                spec.agent_id, spec.generation, command.sequence, spec.wake_message
            )
            done.wake_delivered = True
        return done

    async def _remove_agent(self, command: pb.Command) -> _Done:
        spec = command.remove_agent
        known = self.state.agent(spec.agent_id)
        if known is not None and known.generation > spec.generation:
            return _Done(outcome=Outcome.ALREADY_APPLIED)  # re-created since: stale removal
        self.on_unmanage(spec.agent_id)
        workspace = known.workspace if known is not None else None
        if spec.delete_files and workspace is not None:
            # The token goes first, so nothing the gateway does next (it moves removed
            # workspaces to a Trash folder) can carry the secret anywhere.
            await asyncio.to_thread(self.writer.remove_token_file, workspace)
        await self.gateway.remove_agent(spec.agent_id, delete_files=spec.delete_files)
        if spec.delete_files:
            # The gateway answers ok yet moves nothing while the agent's run is going on,
            # and leaves an empty state directory otherwise: see what is left, remove it.
            left = await asyncio.to_thread(self._remove_leftovers, spec.agent_id, workspace)
            if left:
                log.info("agent.files.leftovers_removed", agent_id=spec.agent_id, paths=left)
        return _Done(remove=spec.agent_id)

    def _write(self, workspace_path: str, files: list[FileToWrite]) -> tuple[Path, dict[str, str]]:
        """Validate and write (in a worker thread); the workspace and the files' hashes."""
        workspace = self.writer.validate(workspace_path, files)
        return workspace, self.writer.write(workspace_path, files)

    def _remove_leftovers(self, agent_id: str, workspace: str | None) -> list[str]:
        """Remove what a deleted agent left on disk; returns the paths removed."""
        removed: list[str] = []
        if workspace is not None and self.writer.remove_workspace(workspace):
            removed.append(workspace)
        if self.gateway_state_dir is not None and _GATEWAY_AGENT_ID.fullmatch(agent_id):
            agents_dir = self.gateway_state_dir / "agents"
            if remove_tree(agents_dir / agent_id, within=agents_dir):
                removed.append(str(agents_dir / agent_id))
        return removed

    async def _wake_agent(self, command: pb.Command) -> _Done:
        spec = command.wake_agent
        known = self.state.agent(spec.agent_id)
        if known is not None and known.generation > spec.generation:
            return _Done(outcome=Outcome.ALREADY_APPLIED)  # superseded by a newer apply
        if spec.fresh_session:
            # The recovery ladder's last rung: whatever state the old session is in
            # (a context the model chokes on, a run that never ends) is left behind.
            await self.gateway.reset_session(spec.agent_id)
        run_id = await self._wake(spec.agent_id, spec.generation, command.sequence, spec.message)
        return _Done(run_id=run_id, wake_delivered=True)

    async def _set_heartbeat(self, command: pb.Command) -> _Done:
        spec = command.set_heartbeat
        known = self.state.agent(spec.agent_id)
        if known is not None and known.generation >= spec.generation:
            return _Done(outcome=Outcome.ALREADY_APPLIED)
        await self.gateway.set_heartbeat(spec.agent_id, _heartbeat(spec.heartbeat))
        if known is None:
            return _Done()
        return _Done(
            upsert=AgentState(
                known.agent_id,
                spec.generation,
                known.workspace,
                known.files,
                heartbeat=_heartbeat(spec.heartbeat),
            )
        )

    async def _set_credentials(self, command: pb.Command) -> _Done:
        spec = command.set_credentials
        known = self.state.agent(spec.agent_id)
        done = _Done(
            credentials={spec.agent_id: _credentials(spec.agent_id, list(spec.credentials))}
        )
        if spec.HasField("token_file"):
            if known is None:
                raise WorkspaceError(f"agent {spec.agent_id} is not managed by this sidecar")
            files = _files([spec.token_file])
            _, hashes = await asyncio.to_thread(self._write, known.workspace, files)
            done.upsert = AgentState(
                known.agent_id, known.generation, known.workspace, {**known.files, **hashes}
            )
        return done

    # ----------------------------------------------------------------- wake

    async def _wake(self, agent_id: str, generation: int, sequence: int, message: str) -> str:
        key = wake_idempotency_key(agent_id, generation, sequence)
        run_id = await self.gateway.wake(agent_id, message, key)
        watcher = asyncio.create_task(self._watch_run(agent_id, generation, sequence, run_id))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return run_id

    async def _watch_run(self, agent_id: str, generation: int, sequence: int, run_id: str) -> None:
        report = pb.RunObserved(
            agent_id=agent_id, generation=generation, run_id=run_id, command_sequence=sequence
        )
        try:
            outcome = await self.gateway.wait_run(run_id, self.wake_run_timeout_s)
        except (GatewayError, TimeoutError) as exc:
            report.outcome = pb.RunObserved.ABORTED
            report.message = f"run outcome unknown: {exc}"
        else:
            report.outcome = {
                RunState.FINAL: pb.RunObserved.FINAL,
                RunState.ERROR: pb.RunObserved.ERROR,
                RunState.ABORTED: pb.RunObserved.ABORTED,
            }[outcome.state]
            report.message = displayable(outcome.message, max_chars=MAX_ERROR_CHARS)
            report.model_turn = outcome.model_turn
        report.observed_at.CopyFrom(timestamp())
        log.info(
            "agent.run.observed",
            agent_id=agent_id,
            run_id=run_id,
            outcome=pb.RunObserved.Outcome.Name(report.outcome),
            model_turn=report.model_turn,
            message=report.message,
        )
        self.on_run_observed(report)

    async def close(self) -> None:
        for watcher in list(self._watchers):
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)


def _heartbeat(settings: pb.HeartbeatSettings) -> HeartbeatSpec:
    return HeartbeatSpec(
        every_s=settings.every_s, target=settings.target or "none", checklist=settings.checklist
    )


class CommandQueue:
    """Applies commands strictly in sequence order, retrying retryable failures in place."""

    def __init__(
        self,
        applier: CommandApplier,
        send_result: Callable[[pb.CommandResult], None],
        *,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
    ) -> None:
        self.applier = applier
        self.send_result = send_result
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._pending: asyncio.Queue[pb.Command] = asyncio.Queue()
        self._gateway_changed = asyncio.Event()
        applier.gateway.on_info_change(self._on_gateway_info)

    def _on_gateway_info(self, info: GatewayInfo) -> None:
        if info.reachable:
            self._gateway_changed.set()

    def submit(self, command: pb.Command) -> None:
        self._pending.put_nowait(command)

    def reset(self) -> None:
        """A new stream replays from our last applied sequence: drop what the old one sent."""
        while not self._pending.empty():
            self._pending.get_nowait()

    def start(self) -> asyncio.Task[None]:
        return start_long_lived(self.run(), name="sidecar-commands", log=log)

    async def run(self) -> None:
        while True:
            command = await self._pending.get()
            if command.sequence <= self.applier.state.last_applied_sequence:
                continue  # replayed by the hub, already processed
            delay = self.retry_initial_s
            while True:
                try:
                    result = await self.applier.apply(command)
                    self.send_result(result)
                except Exception as exc:  # the queue outlives any one command
                    log.exception(
                        "command.apply.failed", sequence=command.sequence, error=repr(exc)
                    )
                    result = pb.CommandResult(sequence=command.sequence, outcome=Outcome.FAILED)
                if result.outcome != Outcome.FAILED:
                    break
                self._gateway_changed.clear()
                # Not sooner than the gateway asked (2026.3 limits config writes per
                # connection, so a reconnect still cuts the wait short).
                wait_s = max(delay, min(self.applier.retry_after_s, RETRY_AFTER_MAX_S))
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._gateway_changed.wait()
                delay = min(delay * 2, self.retry_max_s)
