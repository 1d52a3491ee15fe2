"""openclaw.json: parse it, read what the sidecar needs, diff managed entries, restore one.

Everything here is a pure function over text or parsed documents, except `read_config`
and `restore_entries`, which touch the file. A file that cannot be read, parsed or
understood yields a `ConfigInvalid` value: callers branch on the type, nothing raises,
and nothing is ever written on top of a file that did not parse.

The roster has two shapes: current gateways key entries by id under `agents.entries`;
the 2026.3 generation keeps an `agents.list` array of `{id, ...}` objects.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import json5

MANAGED_PREFIXES = ("mc-", "lead-", "mc-gateway-")
DEFAULT_PORT = 18789
CONFIG_MODE = 0o600  # the file holds the gateway token

Entry = Mapping[str, Any]


def is_managed_id(agent_id: str) -> bool:
    """Agent ids Mission Control creates: `mc-<uuid>`, `lead-<uuid>`, `mc-gateway-<id>`."""
    return agent_id.startswith(MANAGED_PREFIXES)


class RosterShape(enum.StrEnum):
    ENTRIES = "entries"  # agents.entries {id: entry}, current gateways
    LIST = "list"  # agents.list [{id, ...}], the 2026.3 generation
    NONE = "none"  # no roster yet (fresh install: only the implicit `main`)


class InvalidKind(enum.StrEnum):
    UNREADABLE = "unreadable"  # missing file, permission, not UTF-8
    SYNTAX = "syntax"  # neither JSON nor JSON5 (hand edit in progress, truncated write)
    SHAPE = "shape"  # parses, but not the structure a gateway accepts


@dataclass(frozen=True)
class ConfigInvalid:
    """Why openclaw.json could not be used. A value, not an exception."""

    path: Path
    kind: InvalidKind
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind.value}: {self.message}"


@dataclass(frozen=True)
class OpenClawConfig:
    """A parsed openclaw.json and the facts the sidecar reads from it."""

    path: Path
    text: str
    document: Mapping[str, Any]
    roster_shape: RosterShape
    entries: Mapping[str, Entry] = field(repr=False)  # every roster entry by id

    @property
    def gateway(self) -> Mapping[str, Any]:
        gateway = self.document.get("gateway")
        return gateway if isinstance(gateway, Mapping) else {}

    @property
    def port(self) -> int:
        port = self.gateway.get("port")
        return port if isinstance(port, int) and not isinstance(port, bool) else DEFAULT_PORT

    @property
    def bind(self) -> str:
        bind = self.gateway.get("bind")
        return bind if isinstance(bind, str) else "loopback"

    @property
    def connect_host(self) -> str:
        """Where a local client dials: loopback unless the gateway binds one custom address.

        The gateway only keeps a device-less backend client's scopes on loopback, so
        every bind mode that includes loopback is dialled there.
        """
        custom = self.gateway.get("customBindHost")
        if self.bind == "custom" and isinstance(custom, str) and custom:
            return custom
        return "127.0.0.1"

    @property
    def token(self) -> str:
        auth = self.gateway.get("auth")
        token = auth.get("token") if isinstance(auth, Mapping) else None
        return token if isinstance(token, str) else ""

    @property
    def last_touched_version(self) -> str:
        meta = self.document.get("meta")
        stamp = meta.get("lastTouchedVersion") if isinstance(meta, Mapping) else None
        return stamp if isinstance(stamp, str) else ""

    def managed_entries(self) -> dict[str, Entry]:
        return {agent_id: e for agent_id, e in self.entries.items() if is_managed_id(agent_id)}


ParseResult = OpenClawConfig | ConfigInvalid


def parse_config(text: str, path: Path) -> ParseResult:
    """Parse openclaw.json text: strict JSON first (what the gateway writes), then JSON5."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        try:
            document = json5.loads(text)
        except ValueError as exc:
            return ConfigInvalid(path, InvalidKind.SYNTAX, f"not JSON or JSON5: {exc}")
        except Exception as exc:  # json5 raises assorted types on odd input
            return ConfigInvalid(path, InvalidKind.SYNTAX, f"not JSON or JSON5: {exc!r}")
    if not isinstance(document, dict):
        return ConfigInvalid(path, InvalidKind.SHAPE, "top level is not an object")
    roster = _roster(document)
    if isinstance(roster, str):
        return ConfigInvalid(path, InvalidKind.SHAPE, roster)
    shape, entries = roster
    return OpenClawConfig(path, text, document, shape, entries)


def read_config(path: Path) -> ParseResult:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return ConfigInvalid(path, InvalidKind.UNREADABLE, str(exc))
    return parse_config(text, path)


def _roster(document: Mapping[str, Any]) -> tuple[RosterShape, dict[str, Entry]] | str:
    """The roster's shape and entries by id, or a message saying what is malformed."""
    agents = document.get("agents")
    if agents is None:
        return RosterShape.NONE, {}
    if not isinstance(agents, Mapping):
        return "agents is not an object"
    keyed = agents.get("entries")
    listed = agents.get("list")
    if keyed is not None:
        if not isinstance(keyed, Mapping):
            return "agents.entries is not an object"
        for agent_id, entry in keyed.items():
            if not isinstance(entry, Mapping):
                return f"agents.entries.{agent_id} is not an object"
        # A gateway that finds both drops `list` at startup; `entries` is what counts.
        return RosterShape.ENTRIES, dict(keyed)
    if listed is not None:
        if not isinstance(listed, list):
            return "agents.list is not an array"
        entries: dict[str, Entry] = {}
        for index, entry in enumerate(listed):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str):
                return f"agents.list[{index}] is not an object with a string id"
            entries[entry["id"]] = entry
        return RosterShape.LIST, entries
    return RosterShape.NONE, {}


# ---------------------------------------------------------------- diffing


class DriftKind(enum.IntEnum):
    """Values match the Link contract's Drift.Kind."""

    REMOVED = 1
    CHANGED = 2
    RESTORED = 3
    ADDED = 4


@dataclass(frozen=True)
class Drift:
    agent_id: str
    kind: DriftKind
    detail: str = ""


@dataclass(frozen=True)
class ManagedDiff:
    removed: Mapping[str, Entry]  # id -> the entry as it was before
    changed: Mapping[str, tuple[str, ...]]  # id -> top-level keys that differ
    added: Mapping[str, Entry]  # id -> the new entry

    def __bool__(self) -> bool:
        return bool(self.removed or self.changed or self.added)

    def drift(self) -> tuple[Drift, ...]:
        found = [
            Drift(i, DriftKind.REMOVED, "entry removed from openclaw.json") for i in self.removed
        ]
        found += [
            Drift(i, DriftKind.CHANGED, "changed: " + ", ".join(keys))
            for i, keys in self.changed.items()
        ]
        found += [Drift(i, DriftKind.ADDED, "entry added to openclaw.json") for i in self.added]
        return tuple(sorted(found, key=lambda d: (d.agent_id, d.kind)))


def diff_managed(before: Mapping[str, Entry], after: Mapping[str, Entry]) -> ManagedDiff:
    """Compare managed entries (by id) of two snapshots; other ids are ignored."""
    old = {i: e for i, e in before.items() if is_managed_id(i)}
    new = {i: e for i, e in after.items() if is_managed_id(i)}
    changed: dict[str, tuple[str, ...]] = {}
    for agent_id in old.keys() & new.keys():
        keys = sorted(
            k
            for k in old[agent_id].keys() | new[agent_id].keys()
            if old[agent_id].get(k) != new[agent_id].get(k)
        )
        if keys:
            changed[agent_id] = tuple(keys)
    return ManagedDiff(
        removed={i: old[i] for i in sorted(old.keys() - new.keys())},
        changed=dict(sorted(changed.items())),
        added={i: new[i] for i in sorted(new.keys() - old.keys())},
    )


# ---------------------------------------------------------------- versions

_VERSION_PART = re.compile(r"\d+")


def version_key(version: str) -> tuple[int, ...]:
    """`2026.9.6` -> (2026, 9, 6); suffixes such as `-beta.1` are ignored."""
    core = version.strip().split("-", 1)[0]
    return tuple(int(p) for p in _VERSION_PART.findall(core))


def is_newer(version: str, than: str) -> bool:
    return version_key(version) > version_key(than)


# ---------------------------------------------------------------- restoring


@dataclass(frozen=True)
class Restored:
    """The entries were written back; `config` is the file as written."""

    agent_ids: tuple[str, ...]
    config: OpenClawConfig


@dataclass(frozen=True)
class RestoreRefused:
    """Nothing was written, and why."""

    reason: str


RestoreResult = Restored | RestoreRefused | ConfigInvalid


def with_entries(
    config: OpenClawConfig, entries: Mapping[str, Entry], *, installed_version: str
) -> dict[str, Any] | RestoreRefused:
    """A copy of the document with `entries` put back into the roster.

    Entries already present are left alone. The `meta.lastTouchedVersion` stamp is
    never raised: a stamp newer than the installed gateway makes that gateway refuse
    to start, so a newer one is lowered to the installed version.
    """
    if not installed_version or not version_key(installed_version):
        return RestoreRefused("installed gateway version is unknown; not touching its stamp")
    document = copy.deepcopy(dict(config.document))
    agents = document.setdefault("agents", {})
    missing = {i: e for i, e in entries.items() if i not in config.entries}
    if config.roster_shape is RosterShape.LIST:
        roster = agents.setdefault("list", [])
        for agent_id, entry in missing.items():
            roster.append({**copy.deepcopy(dict(entry)), "id": agent_id})
    else:
        # A fresh current-generation file has no roster; gateways read agents.entries.
        keyed = agents.setdefault("entries", {})
        for agent_id, entry in missing.items():
            restored = copy.deepcopy(dict(entry))
            restored.pop("id", None)
            keyed[agent_id] = restored
    stamp = config.last_touched_version
    if stamp and is_newer(stamp, installed_version):
        document["meta"]["lastTouchedVersion"] = installed_version
    return document


def render(document: Mapping[str, Any]) -> str:
    """The gateway's own format: 2-space JSON, UTF-8 kept as is, trailing newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_atomic(path: Path, text: str, *, mode: int = CONFIG_MODE) -> None:
    """Write via a temp file in the same directory, fsync, rename; the file keeps `mode`."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def restore_entries(
    path: Path,
    entries: Mapping[str, Entry],
    *,
    installed_version: str,
    expected_text: str | None = None,
) -> RestoreResult:
    """Put removed managed entries back into openclaw.json on disk.

    The file is re-read first; if it no longer parses nothing is written. With
    `expected_text`, the write happens only if the file still holds exactly that text
    (a compare-and-swap against a concurrent writer such as the gateway).
    """
    bad = [i for i in entries if not is_managed_id(i)]
    if bad:
        return RestoreRefused(f"not managed by the sidecar: {', '.join(sorted(bad))}")
    current = read_config(path)
    if isinstance(current, ConfigInvalid):
        return current
    if expected_text is not None and current.text != expected_text:
        return RestoreRefused("openclaw.json changed since it was read; re-read and retry")
    document = with_entries(current, entries, installed_version=installed_version)
    if isinstance(document, RestoreRefused):
        return document
    text = render(document)
    restored = parse_config(text, path)
    if isinstance(restored, ConfigInvalid):  # cannot happen for a document we built
        return RestoreRefused(f"restored document does not parse: {restored.message}")
    ids = tuple(sorted(i for i in entries if i not in current.entries))
    if not ids:
        return Restored((), current)
    try:
        write_atomic(path, text)
    except OSError as exc:
        return RestoreRefused(f"could not write {path}: {exc}")
    return Restored(ids, restored)


def managed_ids(ids: Iterable[str]) -> frozenset[str]:
    return frozenset(i for i in ids if is_managed_id(i))
