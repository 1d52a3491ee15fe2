"""openclaw.json parsing, managed-entry diffs and restores, without a gateway."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.openclaw_config import (
    DEFAULT_PORT,
    ConfigInvalid,
    DriftKind,
    InvalidKind,
    OpenClawConfig,
    Restored,
    RestoreRefused,
    RosterShape,
    diff_managed,
    is_managed_id,
    is_newer,
    parse_config,
    read_config,
    restore_entries,
    with_entries,
)

PATH = Path("/state/openclaw.json")
MC = "mc-0fb3c486-5095-4ec3-87d6-7c37961f40b9"
LEAD = "lead-5f1c"


def current_doc(**entries: Any) -> dict[str, Any]:
    return {
        "gateway": {
            "mode": "local",
            "bind": "loopback",
            "port": 18800,
            "auth": {"mode": "token", "token": "tok-1"},
        },
        "agents": {
            "ownership": "explicit",
            "entries": {"main": {"workspace": "/ws/main"}, **entries},
        },
        "meta": {"lastTouchedVersion": "2026.9.6"},
    }


def legacy_doc(*entries: dict[str, Any]) -> dict[str, Any]:
    return {
        "gateway": {"mode": "local", "port": 18801, "auth": {"token": "tok-3"}},
        "agents": {"list": [{"id": "main"}, *entries]},
        "meta": {"lastTouchedVersion": "2026.3.8"},
    }


def parsed(document: dict[str, Any]) -> OpenClawConfig:
    config = parse_config(json.dumps(document), PATH)
    assert isinstance(config, OpenClawConfig), config
    return config


def write(path: Path, document: dict[str, Any] | str) -> str:
    text = document if isinstance(document, str) else json.dumps(document, indent=2)
    path.write_text(text, encoding="utf-8")
    os.chmod(path, 0o600)
    return text


# ---------------------------------------------------------------- parsing


def test_current_file_gives_port_token_bind_stamp_and_managed_entries() -> None:
    config = parsed(current_doc(**{MC: {"name": "a"}, LEAD: {"name": "b"}, "ops": {}}))
    assert (config.port, config.token, config.bind) == (18800, "tok-1", "loopback")
    assert config.connect_host == "127.0.0.1"
    assert config.last_touched_version == "2026.9.6"
    assert config.roster_shape is RosterShape.ENTRIES
    assert set(config.managed_entries()) == {MC, LEAD}


def test_legacy_list_roster_is_read_by_id() -> None:
    config = parsed(legacy_doc({"id": MC, "name": "a", "workspace": "/ws/a"}))
    assert config.roster_shape is RosterShape.LIST
    assert config.managed_entries() == {MC: {"id": MC, "name": "a", "workspace": "/ws/a"}}
    assert (config.port, config.token, config.last_touched_version) == (18801, "tok-3", "2026.3.8")


def test_hand_written_json5_with_comments_and_trailing_commas_parses() -> None:
    text = """{
      // written by hand
      gateway: { mode: 'local', port: 18802, auth: { token: "t", }, },
      /* no agents yet */
    }"""
    config = parse_config(text, PATH)
    assert isinstance(config, OpenClawConfig)
    assert (config.port, config.token, config.roster_shape) == (18802, "t", RosterShape.NONE)


def test_missing_fields_fall_back_to_gateway_defaults() -> None:
    config = parsed({"gateway": {"mode": "local"}})
    assert (config.port, config.bind, config.token, config.last_touched_version) == (
        DEFAULT_PORT,
        "loopback",
        "",
        "",
    )


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('{"gateway": {"port": 1', InvalidKind.SYNTAX),
        ("", InvalidKind.SYNTAX),
        ("[1, 2]", InvalidKind.SHAPE),
        ('{"agents": []}', InvalidKind.SHAPE),
        ('{"agents": {"entries": {"mc-a": 3}}}', InvalidKind.SHAPE),
        ('{"agents": {"list": [{"name": "no id"}]}}', InvalidKind.SHAPE),
    ],
    ids=["truncated", "empty", "array", "agents-array", "entry-not-object", "list-without-id"],
)
def test_invalid_text_is_a_typed_result_not_an_exception(text: str, kind: InvalidKind) -> None:
    result = parse_config(text, PATH)
    assert isinstance(result, ConfigInvalid)
    assert result.kind is kind
    assert str(PATH) in str(result)


def test_unreadable_file_is_a_typed_result(tmp_path: Path) -> None:
    result = read_config(tmp_path / "absent.json")
    assert isinstance(result, ConfigInvalid) and result.kind is InvalidKind.UNREADABLE


@given(st.text(max_size=200))
def test_no_text_makes_parsing_raise(text: str) -> None:
    assert isinstance(parse_config(text, PATH), OpenClawConfig | ConfigInvalid)


@pytest.mark.parametrize(
    ("agent_id", "managed"),
    [(MC, True), (LEAD, True), ("mc-gateway-g1", True), ("main", False), ("mcx", False)],
)
def test_managed_ids_are_the_mission_control_prefixes(agent_id: str, managed: bool) -> None:
    assert is_managed_id(agent_id) is managed


# ---------------------------------------------------------------- diffing


def test_diff_reports_removed_changed_and_added_managed_entries_only() -> None:
    before = {MC: {"name": "a", "workspace": "/w"}, "mc-gone": {"name": "g"}, "main": {}}
    after = {MC: {"name": "b", "workspace": "/w"}, LEAD: {"name": "new"}, "ops": {}}
    diff = diff_managed(before, after)
    assert dict(diff.removed) == {"mc-gone": {"name": "g"}}
    assert dict(diff.changed) == {MC: ("name",)}
    assert set(diff.added) == {LEAD}
    assert [(d.agent_id, d.kind) for d in diff.drift()] == [
        (LEAD, DriftKind.ADDED),
        (MC, DriftKind.CHANGED),
        ("mc-gone", DriftKind.REMOVED),
    ]


def test_identical_snapshots_have_no_drift() -> None:
    entries = {MC: {"name": "a", "heartbeat": {"every": "30m"}}}
    assert not diff_managed(entries, json.loads(json.dumps(entries)))


def test_drift_kinds_match_the_link_contract() -> None:
    # protos/link.proto Drift.Kind
    assert (DriftKind.REMOVED, DriftKind.CHANGED, DriftKind.RESTORED, DriftKind.ADDED) == (
        1,
        2,
        3,
        4,
    )


# ---------------------------------------------------------------- restoring


def test_restore_into_keyed_entries_keeps_everything_else() -> None:
    config = parsed(current_doc())
    document = with_entries(config, {MC: {"name": "a"}}, installed_version="2026.9.6")
    assert isinstance(document, dict)
    assert document["agents"]["entries"][MC] == {"name": "a"}
    assert document["agents"]["entries"]["main"] == {"workspace": "/ws/main"}
    assert document["gateway"] == config.document["gateway"]
    assert MC not in config.document["agents"]["entries"], "the parsed input is not mutated"


def test_restore_into_legacy_list_appends_an_entry_with_its_id() -> None:
    config = parsed(legacy_doc())
    document = with_entries(config, {MC: {"id": MC, "name": "a"}}, installed_version="2026.3.8")
    assert isinstance(document, dict)
    assert document["agents"]["list"] == [{"id": "main"}, {"id": MC, "name": "a"}]


@pytest.mark.parametrize(
    ("in_file", "installed", "written"),
    [
        ("2099.1.1", "2026.9.6", "2026.9.6"),  # newer: lowered, or the gateway won't start
        ("2026.9.6", "2026.9.6", "2026.9.6"),
        ("2026.1.1", "2026.9.6", "2026.1.1"),  # older: left for the gateway to stamp
    ],
)
def test_restore_never_writes_a_stamp_newer_than_the_installed_gateway(
    in_file: str, installed: str, written: str
) -> None:
    doc = current_doc()
    doc["meta"]["lastTouchedVersion"] = in_file
    document = with_entries(parsed(doc), {MC: {"name": "a"}}, installed_version=installed)
    assert isinstance(document, dict)
    assert document["meta"]["lastTouchedVersion"] == written


def test_restore_without_a_stamp_adds_none() -> None:
    doc = current_doc()
    del doc["meta"]
    document = with_entries(parsed(doc), {MC: {"name": "a"}}, installed_version="2026.9.6")
    assert isinstance(document, dict) and "meta" not in document


def test_restore_refuses_when_the_installed_version_is_unknown() -> None:
    result = with_entries(parsed(current_doc()), {MC: {}}, installed_version="")
    assert isinstance(result, RestoreRefused)


def test_restore_entries_writes_atomically_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "openclaw.json"
    text = write(path, current_doc())
    os.chmod(path, 0o644)  # even a loosened file goes back to 0600: it holds the token
    inode = path.stat().st_ino
    result = restore_entries(path, {MC: {"name": "a"}}, installed_version="2026.9.6")
    assert isinstance(result, Restored) and result.agent_ids == (MC,)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.stat().st_ino != inode, "replaced by rename, never written in place"
    on_disk = json.loads(path.read_text())
    assert on_disk["agents"]["entries"][MC] == {"name": "a"}
    assert json.loads(text)["gateway"] == on_disk["gateway"]
    assert [p.name for p in tmp_path.iterdir()] == ["openclaw.json"], "no temp file left"


@pytest.mark.parametrize("broken", ['{"agents": {"entries": {', "{ // half\n gateway: "])
def test_restore_never_writes_over_an_invalid_file(tmp_path: Path, broken: str) -> None:
    path = tmp_path / "openclaw.json"
    write(path, broken)
    result = restore_entries(path, {MC: {"name": "a"}}, installed_version="2026.9.6")
    assert isinstance(result, ConfigInvalid)
    assert path.read_text() == broken


def test_restore_is_refused_when_the_file_changed_since_it_was_read(tmp_path: Path) -> None:
    path = tmp_path / "openclaw.json"
    old = write(path, current_doc())
    newer = write(path, current_doc(**{LEAD: {"name": "by hand"}}))
    result = restore_entries(
        path, {MC: {"name": "a"}}, installed_version="2026.9.6", expected_text=old
    )
    assert isinstance(result, RestoreRefused) and "changed" in result.reason
    assert path.read_text() == newer


def test_restore_refuses_ids_the_sidecar_does_not_manage(tmp_path: Path) -> None:
    path = tmp_path / "openclaw.json"
    text = write(path, current_doc())
    result = restore_entries(path, {"ops": {}}, installed_version="2026.9.6")
    assert isinstance(result, RestoreRefused)
    assert path.read_text() == text


def test_restoring_an_entry_that_is_present_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "openclaw.json"
    text = write(path, current_doc(**{MC: {"name": "kept"}}))
    result = restore_entries(path, {MC: {"name": "old"}}, installed_version="2026.9.6")
    assert isinstance(result, Restored) and result.agent_ids == ()
    assert path.read_text() == text


@pytest.mark.parametrize(
    ("a", "b", "newer"),
    [
        ("2099.1.1", "2026.9.6", True),
        ("2026.10.1", "2026.9.6", True),
        ("2026.9.6", "2026.9.6", False),
        ("2026.3.8", "2026.9.6", False),
        ("2026.9.7-beta.1", "2026.9.6", True),
    ],
)
def test_versions_compare_numerically(a: str, b: str, newer: bool) -> None:
    assert is_newer(a, b) is newer
