"""`python -m tests.chaos [--seed N] [--rounds N] [--storm N]`: the chaos run (make chaos).

Exit code 0 when every invariant held, 1 when one failed (the seed to replay it is
printed), 2 when the run could not be set up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from tests.chaos.runner import ChaosRun, ChaosSettings, seed_from_env

DEFAULT_ROUNDS = 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="replay a run [env CHAOS_SEED]")
    parser.add_argument(
        "--rounds",
        type=int,
        default=int(os.environ.get("CHAOS_ROUNDS", DEFAULT_ROUNDS)),
        help=f"rounds to run [env CHAOS_ROUNDS, {DEFAULT_ROUNDS}]",
    )
    parser.add_argument(
        "--storm",
        type=int,
        default=None,
        help="sidecars in the restart storm, 0 for none [env CHAOS_STORM; 200, --short 100]",
    )
    parser.add_argument(
        "--short", action="store_true", help="the short version make test runs (4 small rounds)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's directory (logs, databases)"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else seed_from_env()
    root = Path(tempfile.mkdtemp(prefix="mc-chaos-"))
    storm = args.storm if args.storm is not None else os.environ.get("CHAOS_STORM")
    if args.short:
        settings = ChaosSettings.short(seed, root, storm=int(storm or 100))
    else:
        settings = ChaosSettings(seed, args.rounds, root, storm_sidecars=int(storm or 200))
    try:
        report = asyncio.run(ChaosRun(settings).run())
    except Exception as exc:
        print(
            f"chaos: the run failed to set up or ended early (seed {seed}): {exc}", file=sys.stderr
        )
        print(f"chaos: its files are in {root}", file=sys.stderr)
        return 2
    print(report.text())
    if report.violations or args.keep:
        print(f"chaos: logs and databases kept in {root}")
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
