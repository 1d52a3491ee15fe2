"""What the README tells a newcomer holds: its first command is the demo, and each rate
limit is stated as the code enforces it (the rate and its burst)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.api import ADMIN_RATE, AGENT_RATE
from hub.api.webhooks import INGEST_RATE
from sidecar.agent_api import AgentApiLimits

TEXT = (Path(__file__).resolve().parents[2] / "README.md").read_text()
README = " ".join(TEXT.split())
SIDECAR = AgentApiLimits()


@pytest.mark.parametrize(
    "phrase",
    [
        f"per admin token ({ADMIN_RATE[0]:g} requests/s after a burst of {ADMIN_RATE[1]:g})",
        f"per agent token ({AGENT_RATE[0]:g} requests/s after a burst of {AGENT_RATE[1]:g})",
        f"more than {SIDECAR.rate_per_s:g} requests/s per agent (after a burst of "
        f"{SIDECAR.burst:g}) 429",
        f"more than {INGEST_RATE[0]:g} payload/s per webhook (after a burst of "
        f"{INGEST_RATE[1]:g}) 429",
        f"More than {SIDECAR.failed_auth_burst:g} failed token checks (then "
        f"{SIDECAR.failed_auth_rate_per_s:g}/s)",
    ],
)
def test_readme_states_the_rate_limit_with_its_burst(phrase: str) -> None:
    assert phrase in README


def test_the_first_command_the_readme_shows_is_make_demo() -> None:
    first_block = TEXT.split("```sh\n", 1)[1].split("```", 1)[0]
    assert first_block.strip() == "make demo"
    assert TEXT.index("## Try it: `make demo`") < TEXT.index("## What it is")
