"""`python -m bench`: run the benchmarks, print the table, write it as JSON.

python -m bench                  # default sizes, a few minutes on 2 cores
python -m bench --quick          # tiny sizes for CI (~1 minute); figures, no asserts
python -m bench --fleet 10000    # the simulated fleet at 10,000 sidecars
python -m bench --only tokens,link --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
import traceback
from pathlib import Path

from bench.harness import Section, Sizes, machine, markdown_table, raise_fd_limit, text_table
from bench.harness import write_json as write_results

# Run order: newest parts last (the local agent API, the dashboard, then rollouts).
BENCHMARKS: dict[str, str] = {
    "tokens": "Token check",
    "reconciler": "Reconciler",
    "ingest": "Hub ingest",
    "link": "Link",
    "fleet": "Simulated fleet",
    "fleet_hubs": "Simulated fleet, two hubs on PostgreSQL",
    "agent_api": "Local heartbeat API",
    "dashboard": "Dashboard",
    "rollout": "Fleet rollout",
}
DEFAULT_JSON = Path("bench-results/latest.json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes for CI (~1 minute)")
    parser.add_argument(
        "--fleet", type=int, default=None, metavar="N", help="sidecars in the simulated fleet"
    )
    parser.add_argument("--runs", type=int, default=None, help="runs per figure [3]")
    parser.add_argument(
        "--only",
        default="",
        metavar="NAMES",
        help=f"comma-separated subset of: {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, metavar="FILE", help=f"[{DEFAULT_JSON}]"
    )
    args = parser.parse_args(argv)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    args.chosen = [n for n in BENCHMARKS if n in chosen]
    return args


def run_one(name: str, sizes: Sizes) -> Section:
    started = time.monotonic()
    try:
        module = importlib.import_module(f"bench.{name}")
        result = module.run(sizes)
        section = asyncio.run(result) if asyncio.iscoroutine(result) else result
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        section = Section(name, BENCHMARKS[name], available=False, reason=f"failed: {exc}")
    section.seconds = time.monotonic() - started
    return section


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = Sizes.for_mode(quick=args.quick, fleet=args.fleet, runs=args.runs)
    raise_fd_limit()
    from bench.harness import quiet_logs

    quiet_logs()
    info = machine()
    print(
        f"bench: {'quick' if args.quick else 'default'} run on {info['nproc']} x "
        f"{info['cpu_model']}; {', '.join(args.chosen)}",
        flush=True,
    )
    sections: list[Section] = []
    for name in args.chosen:
        print(f"bench: {name} ...", flush=True)
        section = run_one(name, sizes)
        sections.append(section)
        state = "done" if section.available else f"not available ({section.reason})"
        print(f"bench: {name} {state} in {section.seconds:.0f} s", flush=True)
    print()
    print(text_table(sections))
    for section in sections:
        for note in section.notes:
            print(f"note ({section.name}): {note}")
    print()
    print(markdown_table(sections, info))
    write_results(args.json, sections, info, args.quick)
    print(f"\nbench: results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
