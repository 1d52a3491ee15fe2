"""What every benchmark shares: figures with their baselines, medians, processes, the table.

A benchmark returns a `Section`: a list of `Figure`s, each a median over several runs
beside the median of its BASELINE (the raw stack measured in the same run), with the
ratio and, where the design sets one, the target. Servers and load generators run in
their own processes (spawned, pinned to a core where the machine has two), and every
process a benchmark starts is stopped before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import platform
import resource
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVER_CORE = 0
LOAD_CORE = 1


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark runs: the default run, or tiny sizes for CI (--quick)."""

    quick: bool
    runs: int
    token_agents: tuple[int, ...]
    token_samples: int
    ingest_gateways: int
    ingest_duration_s: float
    e2e_sidecars: int
    e2e_duration_s: float
    link_messages_one: int
    link_streams: int
    link_messages_per_stream: int
    fleet_sidecars: int
    fleet_agents: int
    fleet_window_s: float
    reconciler_deadlines: int
    reconciler_spread: int
    api_agents: tuple[int, ...]
    api_duration_s: float
    dashboard_gateways: int  # x 10 agents each
    dashboard_requests: int  # per page and run
    rollout_gateways: int  # x 1 agent each

    @classmethod
    def for_mode(cls, *, quick: bool, fleet: int | None, runs: int | None) -> Sizes:
        if quick:
            return cls(
                quick=True,
                runs=runs or 3,
                token_agents=(10, 1_000, 10_000),
                token_samples=5_000,
                ingest_gateways=100,
                ingest_duration_s=1.5,
                e2e_sidecars=20,
                e2e_duration_s=4.0,
                link_messages_one=1_000,
                link_streams=100,
                link_messages_per_stream=20,
                fleet_sidecars=fleet or 50,
                fleet_agents=10,
                fleet_window_s=3.0,
                reconciler_deadlines=2_000,
                reconciler_spread=200,
                api_agents=(1, 20, 200),
                api_duration_s=1.0,
                dashboard_gateways=100,
                dashboard_requests=8,
                rollout_gateways=50,
            )
        return cls(
            quick=False,
            runs=runs or 3,
            token_agents=(10, 1_000, 100_000),
            token_samples=50_000,
            ingest_gateways=1_000,
            ingest_duration_s=5.0,
            e2e_sidecars=200,
            e2e_duration_s=12.0,
            link_messages_one=10_000,
            link_streams=1_000,
            link_messages_per_stream=50,
            fleet_sidecars=fleet or 1_000,
            fleet_agents=10,
            fleet_window_s=15.0,
            reconciler_deadlines=100_000,
            reconciler_spread=1_000,
            api_agents=(1, 200, 2_000),
            api_duration_s=3.0,
            dashboard_gateways=1_000,
            dashboard_requests=30,
            rollout_gateways=1_000,
        )


@dataclass(frozen=True)
class Target:
    """What the design asks of a figure: `value <op> bound`, on the value or the ratio."""

    op: str  # ">=" or "<="
    bound: float
    on: str = "value"  # "value" or "ratio"

    def met(self, value: float | None, ratio: float | None) -> bool | None:
        subject = ratio if self.on == "ratio" else value
        if subject is None or math.isnan(subject):
            return None
        return subject >= self.bound if self.op == ">=" else subject <= self.bound

    def describe(self, unit: str) -> str:
        if self.on == "ratio":
            return f"{self.op} {self.bound:g}x bare"
        return f"{self.op} {_number(self.bound)} {unit}".strip()


@dataclass
class Figure:
    name: str
    unit: str
    runs: list[float]
    baseline_name: str = ""
    baseline_runs: list[float] = field(default_factory=list)
    target: Target | None = None
    note: str = ""

    @property
    def value(self) -> float:
        return statistics.median(self.runs)

    @property
    def baseline(self) -> float | None:
        return statistics.median(self.baseline_runs) if self.baseline_runs else None

    @property
    def ratio(self) -> float | None:
        baseline = self.baseline
        if baseline is None or baseline == 0:
            return None
        return self.value / baseline

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "value": self.value,
            "runs": self.runs,
            "baseline_name": self.baseline_name or None,
            "baseline": self.baseline,
            "baseline_runs": self.baseline_runs,
            "ratio": self.ratio,
            "target": self.target.describe(self.unit) if self.target else None,
            "meets_target": self.target.met(self.value, self.ratio) if self.target else None,
            "note": self.note or None,
        }


@dataclass
class Section:
    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    available: bool = True
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "available": self.available,
            "reason": self.reason or None,
            "seconds": round(self.seconds, 1),
            "notes": self.notes,
            "figures": [f.as_json() for f in self.figures],
        }


# ----------------------------------------------------------------- measuring


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def per_op_ns(fn: Callable[[], object], ops: int) -> float:
    """Nanoseconds per call of `fn` over `ops` calls (one timed loop)."""
    started = time.perf_counter_ns()
    for _ in range(ops):
        fn()
    return (time.perf_counter_ns() - started) / ops


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `condition` until true; return the seconds it took, or raise after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def pin_to(core: int) -> None:
    """Keep this process on one core when the machine has more than one."""
    cores = os.sched_getaffinity(0)
    if len(cores) > 1 and core in cores:
        os.sched_setaffinity(0, {core})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ProcSample:
    cpu_s: float  # user + system, all threads
    rss_bytes: int
    at: float  # monotonic


def proc_sample(pid: int) -> ProcSample:
    """CPU seconds and resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_s = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
    return ProcSample(cpu_s, rss, time.monotonic())


def cpu_percent(before: ProcSample, after: ProcSample) -> float:
    return 100.0 * (after.cpu_s - before.cpu_s) / max(after.at - before.at, 1e-9)


# ----------------------------------------------------------------- processes


_CONTEXT = mp.get_context("spawn")


class Child:
    """A spawned process that talks to us over a pipe: it sends dicts, we send commands.

    `target(conn, *args)` runs in the child; its first message is usually "ready".
    `stop()` asks politely (None on the pipe), then terminates, then kills: bounded.
    """

    def __init__(self, target: Callable[..., None], *args: Any, name: str) -> None:
        self.conn, child_conn = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(target=target, args=(child_conn, *args), name=name)
        self.process.start()
        child_conn.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def recv(self, timeout_s: float) -> dict[str, Any]:
        if not self.conn.poll(timeout_s):
            raise TimeoutError(f"{self.process.name} said nothing for {timeout_s:.0f} s")
        message = self.conn.recv()
        if isinstance(message, dict) and message.get("error"):
            raise RuntimeError(f"{self.process.name} failed: {message['error']}")
        return message

    def send(self, message: Any) -> None:
        self.conn.send(message)

    def ask(self, message: Any, timeout_s: float) -> dict[str, Any]:
        self.send(message)
        return self.recv(timeout_s)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(None)
            self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


@contextlib.contextmanager
def child(
    target: Callable[..., None], *args: Any, name: str, ready_timeout_s: float | None = None
) -> Iterator[Child]:
    """A Child for the `with` block; with `ready_timeout_s`, once it sent its first message."""
    proc = Child(target, *args, name=name)
    try:
        if ready_timeout_s is not None:
            proc.recv(ready_timeout_s)
        yield proc
    finally:
        proc.stop()


def pipe_inbox(conn: mpc.Connection) -> asyncio.Queue[Any]:
    """In a child's event loop: the parent's messages as a queue (None once the pipe closes)."""
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    def readable() -> None:
        try:
            inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            inbox.put_nowait(None)

    asyncio.get_running_loop().add_reader(conn.fileno(), readable)
    return inbox


def report_errors(conn: mpc.Connection, main: Callable[[], None]) -> None:
    """Run a child's body; a failure goes back to the parent as {"error": ...}."""
    try:
        main()
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


def quiet_logs() -> None:
    from missioncontrol import log as logs

    logs.configure("error", "json")


# ------------------------------------------------------------------- output


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    if magnitude >= 100_000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _verdict(figure: Figure) -> str:
    if figure.target is None:
        return ""
    met = figure.target.met(figure.value, figure.ratio)
    mark = {True: "ok", False: "MISS", None: "?"}[met]
    return f"{mark} ({figure.target.describe(figure.unit)})"


COLUMNS = ("benchmark", "figure", "value", "unit", "baseline", "ratio", "target")


def rows(sections: Sequence[Section]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for section in sections:
        if not section.available:
            out.append((section.title, "not available", "-", "", section.reason, "", ""))
            continue
        for figure in section.figures:
            baseline = (
                f"{_number(figure.baseline)} ({figure.baseline_name})"
                if figure.baseline is not None
                else "-"
            )
            ratio = f"{figure.ratio:.2f}x" if figure.ratio is not None else "-"
            out.append(
                (
                    section.title,
                    figure.name,
                    _number(figure.value),
                    figure.unit,
                    baseline,
                    ratio,
                    _verdict(figure),
                )
            )
    return out


def text_table(sections: Sequence[Section]) -> str:
    table = [COLUMNS, *rows(sections)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(sections: Sequence[Section], info: dict[str, Any]) -> str:
    head = (
        f"Measured on {info['nproc']} x {info['cpu_model']}, Python {info['python']}; "
        "medians over the runs, baselines measured in the same run."
    )
    lines = [head, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows(sections):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |")
    return "\n".join(lines)


def write_json(path: Path, sections: Sequence[Section], info: dict[str, Any], quick: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "mode": "quick" if quick else "default",
        "machine": info,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv[1:],
        "benchmarks": {s.name: s.as_json() for s in sections},
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
