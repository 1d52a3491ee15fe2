from __future__ import annotations

import random

import pytest

from missioncontrol.netaddr import HostPort
from missioncontrol.version import VersionSkewError, check_sidecar_version
from sidecar.link.backoff import Backoff


def test_backoff_follows_the_grpc_policy_with_a_random_first_delay() -> None:
    backoff = Backoff(rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(30)]
    assert 0 <= delays[0] < 1.0
    for attempt, delay in enumerate(delays[1:], start=1):
        base = min(1.0 * 1.6 ** (attempt - 1), 120.0)
        assert base * 0.8 <= delay <= base * 1.2
    assert max(delays) <= 120 * 1.2
    assert delays[-1] >= 120 * 0.8  # reached the cap
    backoff.reset()
    assert backoff.next_delay() < 1.0


def test_first_delays_of_a_fleet_are_spread() -> None:
    firsts = [Backoff(rng=random.Random(seed)).next_delay() for seed in range(200)]
    assert min(firsts) < 0.1 and max(firsts) > 0.9


@pytest.mark.parametrize(
    ("sidecar", "hub", "ok"),
    [
        ("0.1.0", "0.1.0", True),
        ("0.1.9", "0.1.0", True),
        ("0.3.0", "0.5.2", True),
        ("0.2.0", "0.5.0", False),
        ("0.2.0", "0.1.0", False),
        ("1.1.0", "2.1.0", False),
        ("garbage", "0.1.0", False),
    ],
)
def test_hub_accepts_sidecars_up_to_two_minors_older_never_newer(
    sidecar: str, hub: str, ok: bool
) -> None:
    if ok:
        check_sidecar_version(sidecar, hub)
    else:
        with pytest.raises(VersionSkewError):
            check_sidecar_version(sidecar, hub)


@pytest.mark.parametrize(
    ("text", "host", "port", "loopback"),
    [
        ("127.0.0.1:80", "127.0.0.1", 80, True),
        ("[::1]:7443", "::1", 7443, True),
        ("localhost:1", "localhost", 1, True),
        (":8000", "0.0.0.0", 8000, False),
        ("10.0.0.1:9", "10.0.0.1", 9, False),
    ],
)
def test_host_port_parsing(text: str, host: str, port: int, loopback: bool) -> None:
    parsed = HostPort.parse(text)
    assert (parsed.host, parsed.port, parsed.is_loopback) == (host, port, loopback)
    assert HostPort.parse(str(parsed)) == parsed


@pytest.mark.parametrize("text", ["nohost", "1.2.3.4:", "h:99999", "h:x"])
def test_bad_host_port_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        HostPort.parse(text)
