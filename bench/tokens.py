"""Token check: cost per verification at 10 .. 100,000 agents; it must not grow with N.

Hub: `TokenKeyring.authenticate` on the agent's token set, found by the token's id
(the hub's agent_tokens index is keyed the same way). Sidecar: `CredentialIndex.verify`,
the local agent API's check. Baseline: a bare `hmac.compare_digest` of two digests.
For context, one PBKDF2-HMAC-SHA256 verify at 200,000 iterations, as the system we
replace runs it for every agent until one matches.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import time
from collections.abc import Callable
from typing import Any, cast

from bench.harness import Figure, Section, Sizes, Target, per_op_ns
from hub.provisioning.agent_tokens import AgentTokens, MintedToken, TokenKeyring
from missioncontrol.agent_token import sidecar_verifier

PBKDF2_ITERATIONS = 200_000
# Cost at the largest N over cost at the smallest. An O(N) scan would grow 10,000-fold;
# a hash lookup grows only with cache misses, which the bare dict beside it shows too.
FLAT_BOUND = 2.0


def run(sizes: Sizes) -> Section:
    section = Section("tokens", "Token check")
    keyring = TokenKeyring(os.urandom(32))
    largest = max(sizes.token_agents)
    minted = [keyring.mint() for _ in range(largest)]
    rng = random.Random(7)
    now = time.time()

    pairs = [(os.urandom(32), os.urandom(32)) for _ in range(1024)]

    def bare_ns() -> float:
        index = 0

        def once() -> None:
            nonlocal index
            a, b = pairs[index & 1023]
            index += 1
            hmac.compare_digest(a, b)

        return per_op_ns(once, sizes.token_samples)

    bare_dict: dict[int, list[float]] = {}
    hub_costs: dict[int, Figure] = {}
    sidecar_costs: dict[int, Figure] = {}
    for count in sizes.token_agents:
        population = minted[:count]
        hub_index = {m.token_id: AgentTokens(current=m.stored()) for m in population}
        sample = [rng.choice(population).raw for _ in range(sizes.token_samples)]
        verifier = _sidecar_verifier(population)
        hub = Figure(
            f"hub TokenKeyring, {count:,} agents",
            "µs/verify",
            [],
            "compare_digest",
        )
        side = Figure(
            f"sidecar CredentialIndex, {count:,} agents", "µs/verify", [], "compare_digest"
        )
        digests = {m.token_id: m.digest for m in population}
        _hub_ns(keyring, hub_index, sample, now)  # warm up
        bare_dict[count] = []
        for _ in range(sizes.runs):
            bare_dict[count].append(_bare_dict_ns(digests, sample))
            hub.runs.append(_hub_ns(keyring, hub_index, sample, now) / 1000)
            hub.baseline_runs.append(bare_ns() / 1000)
            if verifier is not None:
                side.runs.append(_sidecar_ns(verifier, sample) / 1000)
                side.baseline_runs.append(bare_ns() / 1000)
        hub_costs[count] = hub
        section.figures.append(hub)
        if verifier is not None:
            sidecar_costs[count] = side
            section.figures.append(side)
    if not sidecar_costs:
        section.notes.append("sidecar.credentials is not importable: sidecar verifier skipped")

    smallest = min(sizes.token_agents)
    for label, costs in (("hub", hub_costs), ("sidecar", sidecar_costs)):
        if not costs:
            continue
        flat = Figure(
            f"{label}: cost at {largest:,} / cost at {smallest:,} agents",
            "x",
            [a / b for a, b in zip(costs[largest].runs, costs[smallest].runs, strict=True)],
            "bare dict of digests",
            [a / b for a, b in zip(bare_dict[largest], bare_dict[smallest], strict=True)],
            target=Target("<=", FLAT_BOUND),
        )
        section.figures.append(flat)

    raw = minted[0].raw.encode()
    salt = os.urandom(16)
    stored = hashlib.pbkdf2_hmac("sha256", raw, salt, PBKDF2_ITERATIONS)
    pbkdf2 = Figure(
        f"PBKDF2-SHA256 {PBKDF2_ITERATIONS // 1000}k, one verify (system we replace)",
        "µs/verify",
        [],
        "compare_digest",
    )
    for _ in range(sizes.runs):
        started = time.perf_counter_ns()
        hmac.compare_digest(hashlib.pbkdf2_hmac("sha256", raw, salt, PBKDF2_ITERATIONS), stored)
        pbkdf2.runs.append((time.perf_counter_ns() - started) / 1000)
        pbkdf2.baseline_runs.append(bare_ns() / 1000)
    section.figures.append(pbkdf2)
    return section


def _hub_ns(
    keyring: TokenKeyring, index: dict[str, AgentTokens], sample: list[str], now: float
) -> float:
    tokens = iter(sample)

    def once() -> None:
        raw = next(tokens)
        found = keyring.authenticate(raw, index[raw[:12]], now)
        assert found is not None

    return per_op_ns(once, len(sample))


def _bare_dict_ns(digests: dict[str, bytes], sample: list[str]) -> float:
    """A dict hit by token id and compare_digest, nothing else: the memory cost of N."""
    tokens = iter(sample)
    wanted = next(iter(digests.values()))

    def once() -> None:
        raw = next(tokens)
        hmac.compare_digest(digests[raw[:12]], wanted)

    return per_op_ns(once, len(sample))


def _sidecar_verifier(population: list[MintedToken]) -> Callable[[str], str] | None:
    """The sidecar's local check over `population`, or None if the sidecar has none yet."""
    try:
        from bench.sidecars import CredentialRows
        from sidecar.credentials import CredentialIndex
        from sidecar.state import Credential
    except ImportError:
        return None
    rows = [
        Credential(m.token_id, f"agent-{i}", sidecar_verifier(m.raw))
        for i, m in enumerate(population)
    ]
    index = CredentialIndex(cast(Any, CredentialRows(rows)))
    index.reload()
    return index.verify


def _sidecar_ns(verify: Callable[[str], str], sample: list[str]) -> float:
    tokens = iter(sample)

    def once() -> None:
        verify(next(tokens))

    return per_op_ns(once, len(sample))
