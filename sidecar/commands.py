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
import collections
import contextlib
import itertools
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
# Removals sent to the gateway at once, at most (each waits seconds on the gateway).
REMOVAL_CONCURRENCY = 8
REMOVAL_GATHER_S = 0.05  # how long a removal waits for more to go with it
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


@dataclass
class Attempt:
    """A command's result, and what to record once it is its turn (None: it failed, and
    is retried in place)."""

    result: pb.CommandResult
    done: _Done | None
    retry_after_s: float = 0.0  # the gateway asked to wait this long before a retry


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
        on_credentials: Callable[[str, list[Credential]], None] = lambda agent_id, creds: None,
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
        # Told an agent's new credentials before its token file is written with them, so
        # the agent is never refused the token it reads (they are recorded after the
        # gateway calls, and only then replace the old ones).
        self.on_credentials = on_credentials
        # Where the gateway keeps each agent's own state (`agents/<id>/`): what a removal
        # leaves there, the sidecar removes.
        self.gateway_state_dir = gateway_state_dir
        self._watchers: set[asyncio.Task[None]] = set()
        self._handlers: dict[str, Callable[[pb.Command], Awaitable[_Done]]] = {
            "apply_agent": self._apply_agent,
            "remove_agent": self._remove_agent,
            "wake_agent": self._wake_agent,
            "set_heartbeat": self._set_heartbeat,
            "set_credentials": self._set_credentials,
        }

    async def apply(self, command: pb.Command) -> Attempt:
        """Apply one command and record it as processed (unless it failed)."""
        attempt = await self.attempt(command)
        if attempt.done is not None:
            self.record(command.sequence, [attempt.done])
        return attempt

    async def attempt(self, command: pb.Command) -> Attempt:
        """Apply one command without recording it: the caller records processed commands
        in sequence order (`record`), so the applied watermark never passes one that
        failed, also when several are applied at once."""
        started = time.monotonic()
        attempt = await self._apply(command)
        self.on_applied(
            command.WhichOneof("action") or "", attempt.result.outcome, time.monotonic() - started
        )
        return attempt

    def record(self, sequence: int, done: list[_Done]) -> None:
        """Record every command up to `sequence` as processed, with what `done` changed,
        in one transaction."""
        credentials: dict[str, list[Credential]] = {}
        for d in done:
            credentials.update(d.credentials or {})
        self.state.record_applied(
            sequence,
            upsert=[d.upsert for d in done if d.upsert],
            remove=[d.remove for d in done if d.remove],
            credentials=credentials or None,
        )

    async def _apply(self, command: pb.Command) -> Attempt:
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
        if kind == "apply_agent" and result.agent_id:
            self.on_manage(result.agent_id)
        try:
            done = await handler(command)
        except WorkspaceError as exc:
            return self._finish(result, Outcome.REJECTED, exc.code, str(exc))
        except GatewayError as exc:
            outcome = Outcome.FAILED if exc.retryable else Outcome.REJECTED
            result.error_kind = exc.kind.proto
            attempt = self._finish(result, outcome, exc.code, str(exc))
            attempt.retry_after_s = exc.retry_after_s
            return attempt
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
        result.run_id = done.run_id
        result.wake_delivered = done.wake_delivered
        if done.upsert:
            result.file_sha256.update(done.upsert.files)
        return self._finish(result, done.outcome, done=done)

    def _finish(
        self,
        result: pb.CommandResult,
        outcome: int,
        code: str = "",
        error: str = "",
        *,
        done: _Done | None = None,
    ) -> Attempt:
        result.outcome = outcome  # type: ignore[assignment]
        result.error_code = code
        # Error text quotes the gateway and the file system: make it carriable and bounded.
        error = displayable(error, max_chars=MAX_ERROR_CHARS)
        result.error = error
        result.observed_at.CopyFrom(timestamp())
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
        if outcome == Outcome.FAILED:
            return Attempt(result, None)  # retried: not processed yet
        # A rejection is never retried: it counts as processed, so the queue moves on.
        return Attempt(result, done or _Done())

    def _already(self, agent_id: str, generation: int) -> bool:
        known = self.state.agent(agent_id)
        return known is not None and known.generation >= generation

    # ------------------------------------------------------------ handlers

    async def _apply_agent(self, command: pb.Command) -> _Done:
        spec = command.apply_agent
        if self._already(spec.agent_id, spec.generation):
            return _Done(outcome=Outcome.ALREADY_APPLIED)
        files = _files(list(spec.files))
        credentials = _credentials(spec.agent_id, list(spec.credentials))
        self.on_credentials(spec.agent_id, credentials)
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
            credentials={spec.agent_id: credentials},
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
        credentials = _credentials(spec.agent_id, list(spec.credentials))
        done = _Done(credentials={spec.agent_id: credentials})
        if spec.HasField("token_file"):
            if known is None:
                raise WorkspaceError(f"agent {spec.agent_id} is not managed by this sidecar")
            self.on_credentials(spec.agent_id, credentials)
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
    """Applies commands in sequence order, retrying retryable failures in place.

    Removals are the one exception to one-at-a-time: a run of consecutive `remove_agent`
    commands for distinct agents (at most `removal_concurrency`) goes to the gateway at
    once where the gateway takes that safely (`GatewayInfo.removes_concurrently`), since
    each waits seconds on the gateway and none depends on another. They are
    still recorded and answered in sequence order: those before the first failure are
    recorded together; the failed one is retried in place, and the ones after it are
    applied again behind it (a removal is idempotent: an absent agent is removed).
    """

    def __init__(
        self,
        applier: CommandApplier,
        send_result: Callable[[pb.CommandResult], None],
        *,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
        removal_concurrency: int = REMOVAL_CONCURRENCY,
    ) -> None:
        self.applier = applier
        self.send_result = send_result
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.removal_concurrency = removal_concurrency
        self._pending: asyncio.Queue[pb.Command] = asyncio.Queue()
        # Taken from `_pending` but not applied yet (looked at for a run of removals, or
        # to be applied again behind a failed one): these go first.
        self._held: collections.deque[pb.Command] = collections.deque()
        self._gateway_changed = asyncio.Event()
        applier.gateway.on_info_change(self._on_gateway_info)

    def _on_gateway_info(self, info: GatewayInfo) -> None:
        if info.reachable:
            self._gateway_changed.set()

    def submit(self, command: pb.Command) -> None:
        self._pending.put_nowait(command)

    def reset(self) -> None:
        """A new stream replays from our last applied sequence: drop what the old one sent."""
        self._held.clear()
        while not self._pending.empty():
            self._pending.get_nowait()

    def start(self) -> asyncio.Task[None]:
        return start_long_lived(self.run(), name="sidecar-commands", log=log)

    async def run(self) -> None:
        while True:
            command = self._held.popleft() if self._held else await self._pending.get()
            if command.sequence <= self.applier.state.last_applied_sequence:
                continue  # replayed by the hub, already processed
            removals = await self._removals_from(command)
            if len(removals) > 1:
                # What is left after a failure is applied again, behind it.
                self._held.extendleft(reversed(await self._apply_together(removals)))
            else:
                await self._apply_in_place(command)

    async def _removals_from(self, first: pb.Command) -> list[pb.Command]:
        """`first`, and if it is a removal, the removals queued right behind it."""
        run = [first]
        if first.WhichOneof("action") != "remove_agent":
            return run
        if not self.applier.gateway.info.removes_concurrently:
            return run
        agents = {first.remove_agent.agent_id}
        while len(run) < self.removal_concurrency:
            command = await self._next_soon()
            if command is None:
                break
            if (
                command.WhichOneof("action") != "remove_agent"
                or command.remove_agent.agent_id in agents
                or command.sequence <= run[-1].sequence
            ):
                self._held.appendleft(command)
                break
            agents.add(command.remove_agent.agent_id)
            run.append(command)
        return run

    async def _next_soon(self) -> pb.Command | None:
        """The next command if one is here or arrives within REMOVAL_GATHER_S (a burst of
        commands reaches the queue one stream message at a time), else None."""
        if self._held:
            return self._held.popleft()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REMOVAL_GATHER_S):
                return await self._pending.get()
        return None

    async def _apply_together(self, commands: list[pb.Command]) -> list[pb.Command]:
        """Apply `commands` at once; record and answer, in order, those before the first
        failure; retry the failed one in place; return the ones after it."""
        attempts = await asyncio.gather(*(self.applier.attempt(c) for c in commands))
        processed = list(itertools.takewhile(lambda a: a.done is not None, attempts))
        if processed:
            try:
                self.applier.record(
                    processed[-1].result.sequence,
                    [a.done for a in processed if a.done is not None],
                )
            except Exception as exc:  # e.g. local state unwritable: each again, in place
                log.exception("command.record.failed", error=repr(exc))
                for command in commands:
                    await self._apply_in_place(command)
                return []
            for attempt in processed:
                self.send_result(attempt.result)
        log.info(
            "command.removals.applied_together",
            removals=len(commands),
            processed=len(processed),
        )
        if len(processed) == len(commands):
            return []
        failed = attempts[len(processed)]
        self.send_result(failed.result)  # the hub shows why the agent waits
        await self._apply_in_place(commands[len(processed)], failed=failed)
        return commands[len(processed) + 1 :]

    async def _apply_in_place(self, command: pb.Command, *, failed: Attempt | None = None) -> None:
        """Apply `command`, retrying while it fails (`failed`: it just did; wait first)."""
        delay = self.retry_initial_s
        while True:
            attempt = failed or await self._attempt(command)
            failed = None
            if attempt.done is not None:
                return
            self._gateway_changed.clear()
            # Not sooner than the gateway asked (2026.3 limits config writes per
            # connection, so a reconnect still cuts the wait short).
            wait_s = max(delay, min(attempt.retry_after_s, RETRY_AFTER_MAX_S))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._gateway_changed.wait()
            delay = min(delay * 2, self.retry_max_s)

    async def _attempt(self, command: pb.Command) -> Attempt:
        """Apply, record and answer one command; a failure of any kind is FAILED."""
        try:
            attempt = await self.applier.apply(command)
            self.send_result(attempt.result)
        except Exception as exc:  # the queue outlives any one command
            log.exception("command.apply.failed", sequence=command.sequence, error=repr(exc))
            return Attempt(
                pb.CommandResult(sequence=command.sequence, outcome=Outcome.FAILED), None
            )
        return attempt
