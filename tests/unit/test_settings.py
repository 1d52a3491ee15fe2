from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from hub import config as hub_config
from missioncontrol.settings import SettingsError
from sidecar import config as sidecar_config


def hub_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    hub_config.add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    config_file = tmp_path / "hub.toml"
    config_file.write_text(
        'http_listen = "127.0.0.1:1001"\nlink_listen = "127.0.0.1:1002"\n'
        "commit_interval = 0.5\ninsecure_dev = true\n"
    )
    env = {
        "MC_ADMIN_TOKEN": "t" * 60,
        "MC_HUB_LINK_LISTEN": "127.0.0.1:2002",
        "MC_HUB_DATA_DIR": str(tmp_path / "data"),
    }
    config = hub_config.build_config(
        hub_args("--config", str(config_file), "--commit-interval", "0.25"), env
    )
    assert config.commit_interval_s == 0.25  # flag
    assert config.link_listen.port == 2002  # environment
    assert config.http_listen.port == 1001  # file
    assert config.shutdown_grace_s == 5.0  # default
    assert config.insecure_dev is True


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    config_file = tmp_path / "hub.toml"
    config_file.write_text('http_lisen = "x"\n')
    with pytest.raises(SettingsError, match="http_lisen"):
        hub_config.build_config(hub_args("--config", str(config_file)), {})


def test_insecure_dev_refuses_a_non_loopback_link(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="loopback"):
        hub_config.build_config(
            hub_args(
                "--insecure-dev", "--link-listen", "0.0.0.0:7443", "--data-dir", str(tmp_path)
            ),
            {"MC_ADMIN_TOKEN": "t" * 60},
        )


def test_short_admin_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="at least 50"):
        hub_config.build_config(
            hub_args("--insecure-dev", "--data-dir", str(tmp_path)), {"MC_ADMIN_TOKEN": "short"}
        )


def test_admin_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    first = hub_config.build_config(hub_args("--insecure-dev", "--data-dir", str(tmp_path)), {})
    second = hub_config.build_config(hub_args("--insecure-dev", "--data-dir", str(tmp_path)), {})
    assert first.admin_token_generated and not second.admin_token_generated
    assert first.admin_token == second.admin_token and len(first.admin_token) >= 50
    assert (tmp_path / "admin-token").stat().st_mode & 0o777 == 0o600


def test_sidecar_requires_hub_and_defaults_workspace_root_to_config_dir(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    sidecar_config.add_run_arguments(parser)
    with pytest.raises(SettingsError, match="--hub"):
        sidecar_config.build_config(parser.parse_args([]), {})
    args = parser.parse_args(
        [
            "--hub",
            "127.0.0.1:7443",
            "--insecure-dev",
            "--openclaw-config",
            str(tmp_path / "oc" / "openclaw.json"),
            "--no-restore-removed-entries",
        ]
    )
    config = sidecar_config.build_config(args, {})
    assert config.workspace_root == tmp_path / "oc"
    assert config.restore_removed_entries is False
    assert str(config.agent_api_listen) == "127.0.0.1:18790"


def test_a_sidecar_takes_several_hub_addresses_each_held_to_loopback_without_tls(
    tmp_path: Path,
) -> None:
    parser = argparse.ArgumentParser()
    sidecar_config.add_run_arguments(parser)
    oc = ["--openclaw-config", str(tmp_path / "oc" / "openclaw.json")]
    args = parser.parse_args(
        ["--hub", "127.0.0.1:7501, 127.0.0.1:7502,127.0.0.1:7503", "--insecure-dev", *oc]
    )
    config = sidecar_config.build_config(args, {})
    assert [str(hub) for hub in config.hubs] == [
        "127.0.0.1:7501",
        "127.0.0.1:7502",
        "127.0.0.1:7503",
    ]
    assert str(config.hub) == "127.0.0.1:7501"
    args = parser.parse_args(["--hub", "127.0.0.1:7501,10.0.0.2:7443", "--insecure-dev", *oc])
    with pytest.raises(SettingsError, match=r"10\.0\.0\.2:7443"):
        sidecar_config.build_config(args, {})


def test_sidecar_agent_api_must_be_loopback() -> None:
    parser = argparse.ArgumentParser()
    sidecar_config.add_run_arguments(parser)
    args = parser.parse_args(
        ["--hub", "127.0.0.1:1", "--insecure-dev", "--agent-api-listen", "0.0.0.0:18790"]
    )
    with pytest.raises(SettingsError, match="loopback"):
        sidecar_config.build_config(args, {})


def test_both_programs_refuse_an_unknown_log_level_or_format_naming_the_choices() -> None:
    parser = argparse.ArgumentParser()
    sidecar_config.add_run_arguments(parser)
    args = parser.parse_args(["--hub", "127.0.0.1:7443", "--log-format", "xml"])
    with pytest.raises(SettingsError, match="--log-format: 'xml': use json, console or auto"):
        sidecar_config.build_config(args, {})
    with pytest.raises(SettingsError, match="MC_HUB_LOG_LEVEL: 'loud': use debug, info"):
        hub_config.build_config(
            hub_args(), {"MC_ADMIN_TOKEN": "t" * 60, "MC_HUB_LOG_LEVEL": "loud"}
        )
    config = hub_config.build_config(
        hub_args("--log-level", "WARNING"), {"MC_ADMIN_TOKEN": "t" * 60}
    )
    assert config.log_level == "warning"


def test_an_admin_token_file_others_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    token = tmp_path / "admin-token"
    token.write_text("t" * 64 + "\n")
    token.chmod(0o644)
    with pytest.raises(SettingsError, match=r"mode 0644.*chmod 600"):
        hub_config.load_admin_token(tmp_path, {})
    token.chmod(0o600)
    assert hub_config.load_admin_token(tmp_path, {}) == ("t" * 64, False)


def _serve_config(tmp_path: Path, *flags: str) -> hub_config.HubConfig:
    parser = argparse.ArgumentParser()
    hub_config.add_serve_arguments(parser)
    args = parser.parse_args(["--data-dir", str(tmp_path), *flags])
    return hub_config.build_config(args, {"MC_ADMIN_TOKEN": "t" * 64})


def test_the_rest_api_beyond_loopback_is_tls_unless_a_proxy_is_named(tmp_path: Path) -> None:
    assert not _serve_config(tmp_path).http_uses_tls  # loopback: plain HTTP
    assert _serve_config(tmp_path, "--http-listen", "10.0.0.5:8000").http_uses_tls
    assert _serve_config(tmp_path, "--http-tls", "on").http_uses_tls
    behind = _serve_config(tmp_path, "--http-listen", "10.0.0.5:8000", "--http-tls", "proxy")
    assert not behind.http_uses_tls
    with pytest.raises(SettingsError, match=r"readable.*--http-tls proxy"):
        _serve_config(tmp_path, "--http-listen", "10.0.0.5:8000", "--http-tls", "off")
    with pytest.raises(SettingsError, match="no CA"):
        _serve_config(tmp_path, "--http-listen", "10.0.0.5:8000", "--insecure-dev")
    with pytest.raises(SettingsError, match="go together"):
        _serve_config(tmp_path, "--http-tls-cert", str(tmp_path / "cert.pem"))


def test_the_database_is_the_data_directorys_sqlite_file_unless_a_url_names_another(
    tmp_path: Path,
) -> None:
    env = {"MC_ADMIN_TOKEN": "t" * 60}
    default = hub_config.build_config(hub_args("--data-dir", str(tmp_path)), env)
    assert default.database_url == f"sqlite://{tmp_path / 'hub.sqlite3'}"
    assert default.on_sqlite and default.database_path == tmp_path / "hub.sqlite3"
    other = hub_config.build_config(
        hub_args("--data-dir", str(tmp_path), "--database", f"sqlite://{tmp_path / 'x.db'}"), env
    )
    assert other.database_path == tmp_path / "x.db"
    url = "postgresql://mc:secret@127.0.0.1:5432/mc"
    pg = hub_config.build_config(
        hub_args("--data-dir", str(tmp_path)), {**env, "MC_HUB_DATABASE": url}
    )
    assert pg.database_url == url and not pg.on_sqlite


def test_a_database_url_naming_no_engine_is_refused_with_both_forms(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"sqlite:///PATH.*postgresql://"):
        hub_config.build_config(
            hub_args("--data-dir", str(tmp_path), "--database", "mysql://x/y"),
            {"MC_ADMIN_TOKEN": "t" * 60},
        )


def test_scheduled_backups_are_refused_on_postgresql_naming_its_tools(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="pg_dump"):
        hub_config.build_config(
            hub_args(
                "--data-dir",
                str(tmp_path),
                "--database",
                "postgresql://mc@127.0.0.1/mc",
                "--backup-interval",
                "60",
            ),
            {"MC_ADMIN_TOKEN": "t" * 60},
        )
