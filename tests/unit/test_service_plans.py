"""Pure parts of service installation: quoting, templates, plans, the notify environment."""

from __future__ import annotations

import argparse
import plistlib
from pathlib import Path

import pytest

from hub.config import ENV_PREFIX as HUB_PREFIX
from hub.config import SERVE_OPTIONS
from missioncontrol.sd_notify import socket_address, watchdog_interval_s
from missioncontrol.settings import load_config_file, resolve
from missioncontrol.system_service import (
    Account,
    Manager,
    Scope,
    ServiceError,
    ServiceSpec,
    Target,
    fill,
    plan_install,
    plan_uninstall,
    render_plist,
    render_unit,
    settings_to_write,
    started_by_service_manager,
    systemd_quote,
    toml_text,
)
from sidecar.config import ENV_PREFIX as SIDECAR_PREFIX
from sidecar.config import RUN_OPTIONS as SIDECAR_OPTIONS

ALICE = Account("alice", "staff", Path("/home/alice"), uid=1000)


def _spec(manager: Manager, scope: Scope, program: str = "mc-sidecar") -> ServiceSpec:
    target = Target(program, manager, scope, ALICE, ALICE.home / ".config")
    return ServiceSpec(
        target=target,
        subcommand="run" if program == "mc-sidecar" else "serve",
        command=Path("/opt/mission control/venv/bin") / program,
        settings_toml="",
        read_write_paths=(Path("/home/alice/.mc-sidecar"), Path("/home/alice/100% work")),
    )


def test_notify_socket_value_becomes_a_path_or_an_abstract_name() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@sd-notify-1") == "\0sd-notify-1"
    assert socket_address("vsock:2:1234") is None


def test_watchdog_applies_only_to_the_process_systemd_named() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}, pid=7) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=7) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, pid=7) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}, pid=7) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}, pid=7) is None
    assert watchdog_interval_s({}, pid=7) is None


def test_unit_words_are_quoted_so_systemd_reads_them_back_unchanged() -> None:
    assert systemd_quote("/opt/venv/bin/mc-hub", exec_line=True) == "/opt/venv/bin/mc-hub"
    assert systemd_quote("/opt/my venv", exec_line=True) == '"/opt/my venv"'
    assert systemd_quote("100%", exec_line=False) == "100%%"  # not a specifier
    assert systemd_quote("$HOME", exec_line=True) == "$$HOME"  # not a variable on Exec lines
    assert systemd_quote("$HOME", exec_line=False) == "$HOME"  # paths do not expand $
    assert systemd_quote('a"b', exec_line=False) == '"a\\"b"'


def test_rendered_unit_names_the_command_config_and_exactly_the_writable_paths() -> None:
    unit = render_unit(_spec(Manager.SYSTEMD, Scope.SYSTEM))
    assert (
        'ExecStart="/opt/mission control/venv/bin/mc-sidecar" run --config '
        "/etc/mc-sidecar/sidecar.toml" in unit
    )
    assert 'ReadWritePaths=/home/alice/.mc-sidecar "/home/alice/100%% work"\n' in unit
    assert "User=alice\nGroup=staff\n" in unit
    assert "{{" not in unit.replace("{{…}}", "")
    user_unit = render_unit(_spec(Manager.SYSTEMD, Scope.USER))
    assert "User=" not in user_unit and "CapabilityBoundingSet=" not in user_unit.replace(
        "# No CapabilityBoundingSet=", ""
    )
    assert "WantedBy=default.target" in user_unit


def test_plist_values_are_escaped_and_the_plist_stays_valid() -> None:
    spec = _spec(Manager.LAUNCHD, Scope.USER)
    spec = ServiceSpec(
        spec.target, "run", Path("/opt/a&b <venv>/bin/mc-sidecar"), "", spec.read_write_paths
    )
    plist = plistlib.loads(render_plist(spec).encode())
    assert plist["ProgramArguments"] == [
        "/opt/a&b <venv>/bin/mc-sidecar",
        "run",
        "--config",
        "/home/alice/.config/mc-sidecar/sidecar.toml",
    ]
    assert plist["StandardErrorPath"] == "/home/alice/Library/Logs/mc-sidecar/mc-sidecar.log"


def test_a_template_and_the_installer_that_disagree_is_an_error() -> None:
    with pytest.raises(ServiceError, match=r"no value for \['USER'\]"):
        fill("User={{USER}}", {}, "t")
    with pytest.raises(ServiceError, match=r"no placeholder for \['GROUP'\]"):
        fill("User={{USER}}", {"USER": "a", "GROUP": "b"}, "t")


def test_systemd_plans_reload_enable_and_restart_only_on_change() -> None:
    plan = plan_install(_spec(Manager.SYSTEMD, Scope.SYSTEM))
    assert [str(c) for c in plan.activate] == [
        "systemctl daemon-reload",
        "systemctl enable mc-sidecar.service",
    ]
    assert [str(c) for c in plan.restart] == ["systemctl restart mc-sidecar.service"]
    assert [str(c) for c in plan.start] == ["systemctl start mc-sidecar.service"]
    assert [f.path for f in plan.files] == [
        Path("/etc/mc-sidecar/sidecar.toml"),
        Path("/etc/systemd/system/mc-sidecar.service"),
    ]
    user = plan_install(_spec(Manager.SYSTEMD, Scope.USER))
    assert [str(c) for c in user.activate] == [
        "loginctl enable-linger alice",
        "systemctl --user daemon-reload",
        "systemctl --user enable mc-sidecar.service",
    ]
    assert user.files[1].path == Path("/home/alice/.config/systemd/user/mc-sidecar.service")
    assert [str(c) for c in plan_uninstall(user.spec.target).deactivate] == [
        "systemctl --user disable --now mc-sidecar.service"
    ]


def test_launchd_plans_bootstrap_into_the_users_gui_domain() -> None:
    plan = plan_install(_spec(Manager.LAUNCHD, Scope.USER))
    plist = "/home/alice/Library/LaunchAgents/org.missioncontrol.mc-sidecar.plist"
    assert [str(c) for c in (*plan.activate, *plan.restart)] == [
        "launchctl enable gui/1000/org.missioncontrol.mc-sidecar",
        "launchctl bootout gui/1000/org.missioncontrol.mc-sidecar",
        f"launchctl bootstrap gui/1000 {plist}",
    ]
    assert not plan.restart[0].must_succeed  # not loaded yet is fine
    hub = plan_install(_spec(Manager.LAUNCHD, Scope.SYSTEM, "mc-hub"))
    assert hub.files[1].path == Path("/Library/LaunchDaemons/org.missioncontrol.mc-hub.plist")
    assert [str(c) for c in plan_uninstall(hub.spec.target).deactivate] == [
        "launchctl bootout system/org.missioncontrol.mc-hub"
    ]


def test_service_config_pins_paths_and_keeps_only_settings_off_their_default() -> None:
    given = argparse.Namespace(http_listen="0.0.0.0:8000", insecure_dev=False, link_names="a,b")
    values = resolve(SERVE_OPTIONS, given, {}, HUB_PREFIX, {})
    written = settings_to_write(
        SERVE_OPTIONS, values, HUB_PREFIX, {"data_dir": Path("/var/lib/mc-hub")}
    )
    assert written == {
        "data_dir": "/var/lib/mc-hub",
        "http_listen": "0.0.0.0:8000",
        "link_names": "a,b",
    }
    text = toml_text("header", {"name": 'say "hi"\n', "on": True, "seconds": 1.5})
    assert text == '# header\nname = "say \\"hi\\"\\n"\non = true\nseconds = 1.5\n'


def test_the_service_manager_is_recognised_by_what_it_sets() -> None:
    assert started_by_service_manager("mc-hub", {"INVOCATION_ID": "ab12"})
    assert started_by_service_manager("mc-hub", {"XPC_SERVICE_NAME": "org.missioncontrol.mc-hub"})
    assert not started_by_service_manager("mc-hub", {"XPC_SERVICE_NAME": "0"})  # a Terminal
    assert not started_by_service_manager("mc-hub", {})


def test_templates_in_the_checkout_are_the_ones_rendered() -> None:
    root = Path(__file__).resolve().parents[2] / "packaging"
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*.in"))
    assert names == [
        "launchd/org.missioncontrol.mc-hub.plist.in",
        "launchd/org.missioncontrol.mc-sidecar.plist.in",
        "systemd/system/mc-hub.service.in",
        "systemd/system/mc-sidecar.service.in",
        "systemd/user/mc-hub.service.in",
        "systemd/user/mc-sidecar.service.in",
    ]


def test_an_account_enters_a_directory_only_through_the_execute_bit_that_applies(
    tmp_path: Path,
) -> None:
    stranger = Account("stranger", "strangers", Path("/nonexistent"), uid=54321, gid=54321)
    directory = tmp_path / "venv"
    directory.mkdir(mode=0o700)
    assert not stranger.can_enter(directory)
    directory.chmod(0o701)
    assert stranger.can_enter(directory)
    owner = Account("owner", "owners", Path("/nonexistent"), uid=directory.stat().st_uid)
    directory.chmod(0o007)  # the owner's own bits apply to the owner, not the others'
    assert not owner.can_enter(directory)


def test_every_setting_turned_off_survives_the_written_config_file(tmp_path: Path) -> None:
    # The class: a setting whose "off" resolves to None (a default that is not None) was
    # left out of the service's file, so the service ran with the default instead
    # (--metrics-listen off became 127.0.0.1:18791, and two sidecars on a host collided).
    tried = []
    for options, prefix in ((SERVE_OPTIONS, HUB_PREFIX), (SIDECAR_OPTIONS, SIDECAR_PREFIX)):
        defaults = resolve(options, argparse.Namespace(), {}, prefix, {})
        turned_off = []
        for option in options:
            if option.switch or defaults[option.key] is None:
                continue
            try:
                off = option.convert("off")
            except ValueError:
                continue
            if off is None:
                turned_off.append(option.key)
        values = {**defaults, **dict.fromkeys(turned_off)}
        path = tmp_path / f"{prefix}service.toml"
        path.write_text(toml_text("test", settings_to_write(options, values, prefix, {})))
        again = resolve(options, argparse.Namespace(), {}, prefix, load_config_file(path), path)
        assert {key: again[key] for key in turned_off} == dict.fromkeys(turned_off)
        tried += turned_off
    assert "metrics_listen" in tried  # the test tries something
