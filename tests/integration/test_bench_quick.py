"""`python -m bench --quick` runs every benchmark and writes figures beside their baselines.

Timings are machine-dependent, so nothing here asserts a speed: only that each benchmark
ran (or says why it could not) and reports numbers next to a baseline from the same run.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(630)
def test_quick_bench_reports_every_benchmark_with_figures_and_baselines(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # about 3.5 minutes here; a slower machine takes longer
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "| benchmark |" in done.stdout  # the markdown table for the README

    document = json.loads(out.read_text())
    assert document["mode"] == "quick"
    assert document["machine"]["nproc"] >= 1
    benchmarks = document["benchmarks"]
    assert set(benchmarks) == set(BENCHMARKS)
    for name, section in benchmarks.items():
        if not section["available"]:
            # Only the agent API may be missing (it is built separately), and it says why.
            assert name == "agent_api" and section["reason"], (name, section["reason"])
            continue
        figures = section["figures"]
        assert figures, name
        for figure in figures:
            assert _number(figure["value"]), (name, figure)
            assert figure["runs"] and all(_number(v) for v in figure["runs"]), (name, figure)
            if figure["baseline_name"] is not None:
                assert _number(figure["baseline"]), (name, figure)
                assert figure["ratio"] is None or _number(figure["ratio"]), (name, figure)
        with_baseline = [f for f in figures if f["baseline"] is not None]
        assert with_baseline, f"{name} has no figure beside a baseline"


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
