"""Property-based fuzzing of the hub API from its own /openapi.json: no input earns a 500.

A real `mc-hub serve` runs in a subprocess on loopback; schemathesis generates valid and
invalid requests for every documented operation (a bounded number each) and sends them
with the admin token.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support import ADMIN_TOKEN

EXAMPLES_PER_OPERATION = int(os.environ.get("MC_FUZZ_EXAMPLES", "20"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def hub_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("fuzz-hub")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hub.cli",
            "serve",
            "--data-dir",
            str(data),
            "--insecure-dev",
            "--http-listen",
            "127.0.0.1:0",
            "--link-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--log-level",
            "error",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "MC_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    try:
        assert process.stdout is not None
        banner = ""
        for line in process.stdout:
            banner += line
            if "Ctrl-C" in line:
                break
        match = re.search(r"REST API:\s+http://([\d.]+:\d+)", banner)
        assert match, banner
        yield f"http://{match.group(1)}"
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_no_generated_request_makes_the_hub_answer_500(hub_url: str) -> None:
    with urllib.request.urlopen(f"{hub_url}/openapi.json", timeout=10) as response:
        assert response.status == 200
    schema = schemathesis.openapi.from_url(f"{hub_url}/openapi.json")
    failures: list[str] = []
    tried = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.endswith("/stream"):
            continue  # an endless event stream: covered by its own test

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            nonlocal tried
            tried += 1
            headers = {**(case.headers or {}), "Authorization": f"Bearer {ADMIN_TOKEN}"}
            response = case.call(base_url=hub_url, headers=headers, timeout=10)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> "
                    f"{response.status_code}: {response.text[:200]}"
                )
            assert "x-request-id" in response.headers  # schemathesis lower-cases names

        run()
    print(f"fuzzed {tried} requests")
    assert tried > 0
    assert failures == []


def test_fuzz_target_lists_every_route(hub_url: str) -> None:
    with urllib.request.urlopen(f"{hub_url}/openapi.json", timeout=10) as response:
        document = response.read().decode()
    for path in ("/api/v1/gateways", "/api/v1/agents", "/api/v1/boards", "/readyz"):
        assert f'"{path}"' in document
    assert Path(__file__).name  # the module ran against a live hub
