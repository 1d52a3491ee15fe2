"""`mc-hub rollout` and `mc-hub fleet` as an operator runs them, against a running hub."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from hub.app import Hub
from tests.support import ADMIN_TOKEN, api, connected_sidecar, wait_for


async def mc_hub(hub: Hub, *argv: str) -> tuple[int, str, str]:
    assert hub.addresses is not None
    env = {**os.environ, "MC_ADMIN_TOKEN": ADMIN_TOKEN}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub.cli",
        *argv,
        "--hub-url",
        f"http://{hub.addresses.http}",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_an_operator_rolls_a_cadence_out_from_the_terminal(hub: Hub, tmp_path: Path) -> None:
    async with connected_sidecar(hub, tmp_path, "gw-cli") as (_, gateway):
        await api(hub, "PUT", "/api/v1/gateways/gw-cli/labels", {"labels": {"env": "dev"}})
        await api(hub, "PATCH", "/api/v1/gateways/gw-cli", {"name": "cli-host"})
        _, agent = await api(hub, "POST", "/api/v1/agents", {"name": "m", "gateway_id": "gw-cli"})
        await wait_for(lambda: gateway.count("ensure_agent") == 1, what="main agent applied")

        code, out, err = await mc_hub(
            hub, "rollout", "start", "--selector", "env=dev", "--heartbeat-every", "20m",
            "--dry-run",
        )  # fmt: skip
        assert code == 0, err
        assert "rollout dry run: dry_run, wave 1/1, 1 gateway(s)" in out
        assert "cli-host: pending" in out

        code, out, err = await mc_hub(
            hub, "rollout", "start", "--selector", "env=dev", "--heartbeat-every", "20m",
            "--gate-deadline", "60", "--watch",
        )  # fmt: skip
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("rollout ") and ": running" in lines[0]
        # Not a terminal: plain lines, the last one the finished state, no carriage returns.
        assert "\r" not in out
        assert lines[-1].startswith("[") and "1/1 done" in lines[-1] and "completed" in lines[-1]
        rollout_id = lines[0].split()[1].rstrip(":")

        code, out, _ = await mc_hub(hub, "rollout", "status", rollout_id)
        assert code == 0 and "completed" in out and "cli-host: healthy" in out
        code, out, _ = await mc_hub(hub, "rollout", "status")
        assert rollout_id in out and "heartbeat" in out
        code, out, err = await mc_hub(hub, "rollout", "resume", rollout_id)
        assert code == 1 and "409" in err and "only a paused rollout resumes" in err
        code, out, _ = await mc_hub(hub, "rollout", "rollback", rollout_id)
        assert code == 0 and ("rolling_back" in out or "rolled_back" in out)
        await wait_for(lambda: rollout_state_is(hub, rollout_id, "rolled_back"), what="rolled back")
        _, row = await api(hub, "GET", f"/api/v1/agents/{agent['id']}")
        assert row["heartbeat_config"]["every"] != "20m"

        code, out, _ = await mc_hub(hub, "fleet", "versions")
        assert code == 0
        assert "1 gateway(s), 1 connected" in out and "sidecar versions:" in out
        code, out, _ = await mc_hub(hub, "fleet", "inventory", "--selector", "env=dev")
        assert "cli-host" in out and "env=dev" in out and "connected" in out

        code, _, err = await mc_hub(hub, "rollout", "start", "--selector", "env=", "--reapply")
        assert code == 1 and "selector" in err and "key=value" in err


async def test_an_operator_creates_agents_on_the_fleet_from_a_file(
    hub: Hub, tmp_path: Path
) -> None:
    async with connected_sidecar(hub, tmp_path, "gw-agents"):
        await api(hub, "PUT", "/api/v1/gateways/gw-agents/labels", {"labels": {"env": "dev"}})
        agents = tmp_path / "agents.json"
        agents.write_text('[{"name": "main", "heartbeat_config": {"every": "30m"}}]')
        code, out, err = await mc_hub(
            hub, "rollout", "start", "--selector", "env=dev", "--create-agents", str(agents),
            "--dry-run",
        )  # fmt: skip
        assert code == 0, err
        assert "wave 1/1, 1 gateway(s)" in out

        agents.write_text('[{"name": "a"}, {"name": "b"}]')
        code, _, err = await mc_hub(
            hub, "rollout", "start", "--selector", "env=dev", "--create-agents", str(agents)
        )
        assert code == 1 and "422" in err and "one main agent" in err
        agents.write_text("[{name: a}]")
        code, _, err = await mc_hub(
            hub, "rollout", "start", "--selector", "env=dev", "--create-agents", str(agents)
        )
        assert code == 1 and "not JSON" in err
        _, page = await api(hub, "GET", "/api/v1/agents?gateway_id=gw-agents")
        assert page["items"] == []  # nothing was created by the refused or dry runs


async def rollout_state_is(hub: Hub, rollout_id: str, status: str) -> bool:
    _, body = await api(hub, "GET", f"/api/v1/rollouts/{rollout_id}")
    return bool(body["status"] == status)


def test_join_token_labels_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "hub.cli", "gateway", "join-token", "--uses", "10",
         "--labels", "env=prod,env=dev", "--data-dir", str(tmp_path / "var")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "given twice" in result.stderr
    assert not (tmp_path / "var" / "hub.sqlite3").exists()
    result = subprocess.run(
        [sys.executable, "-m", "hub.cli", "gateway", "join-token", "--uses", "10",
         "--labels", "env=prod,region=eu", "--data-dir", str(tmp_path / "var")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "10 use(s), labels env=prod,region=eu" in result.stdout


async def test_an_operator_asks_the_fleet_a_question_from_the_terminal(
    hub: Hub, tmp_path: Path
) -> None:
    async with connected_sidecar(hub, tmp_path, "gw-ask") as (_, gateway):
        await api(hub, "PATCH", "/api/v1/gateways/gw-ask", {"name": "ask-host"})
        await api(hub, "PUT", "/api/v1/gateways/gw-ask/labels", {"labels": {"env": "dev"}})
        await api(hub, "POST", "/api/v1/gateways", {"name": "never-connected"})
        await api(hub, "POST", "/api/v1/agents", {"name": "m", "gateway_id": "gw-ask"})
        await wait_for(lambda: gateway.count("wake") == 1, what="main agent applied and woken")

        code, out, err = await mc_hub(hub, "fleet", "query", "heartbeats", "--selector", "env=dev")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == "asking 1 gateway(s): heartbeats"
        assert lines[1].startswith("ask-host") and "answered" in lines[1]
        assert "m every 600 s" in lines[1]
        assert lines[-1].startswith("1 answered, 0 failed, 0 no answer, 0 disconnected in ")

        code, out, err = await mc_hub(hub, "fleet", "query", "file", "--file", "SOUL.md")
        assert code == 3, err  # not every gateway answered
        assert "m/SOUL.md" in out and "(as rendered)" in out
        assert "never-connected" in out and "sidecar_disconnected" in out
        code, out, err = await mc_hub(hub, "fleet", "query", "status", "--json")
        assert [line.startswith('{"event": ') for line in out.splitlines()] == [True] * 4

        code, _, err = await mc_hub(hub, "fleet", "query", "file", "--file", ".mc-agent-token")
        assert code == 1 and "422" in err and "file" in err
