"""Gateway labels (`env=prod`) and the selectors that pick gateways by them.

Pure logic, no I/O. A label is a key and a value, both 1 to 63 characters of letters,
digits and `-_.` that start and end with a letter or digit; a key may carry one
`prefix/` (Kubernetes' shape, so operators' habits carry over). A gateway has at most
MAX_LABELS of them.

A selector is a comma-separated list of requirements, all of which must hold:
`key=value` (or `key==value`), `key!=value` (also true when the key is absent, as in
Kubernetes), `key` (present), `!key` (absent). The empty selector picks every gateway.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MAX_LABELS = 32
MAX_SELECTOR_CHARS = 1000
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
_KEY = re.compile(rf"^(?:[a-z0-9](?:[a-z0-9.-]{{0,251}}[a-z0-9])?/)?{_NAME}$")
_VALUE = re.compile(rf"^{_NAME}$")
SHAPE = (
    "1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit "
    "(a key may have one 'prefix/')"
)


class LabelError(ValueError):
    """A label or selector is malformed; the message names the part and the fix."""


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise LabelError(f"label key {key!r} is not valid: use {SHAPE}")
    return key


def check_value(key: str, value: str) -> str:
    if not _VALUE.fullmatch(value):
        raise LabelError(f"label {key}: value {value!r} is not valid: use {SHAPE}")
    return value


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels, validated, as a plain dict sorted by key."""
    if len(labels) > MAX_LABELS:
        raise LabelError(
            f"{len(labels)} labels is more than {MAX_LABELS}; keep the ones selectors use"
        )
    return {check_key(k): check_value(k, v) for k, v in sorted(labels.items())}


def parse_labels(text: str) -> dict[str, str]:
    """`env=prod,region=eu` (the CLI's --labels) as validated labels."""
    labels: dict[str, str] = {}
    for part in _parts(text):
        key, sep, value = part.partition("=")
        if not sep or value.startswith("="):
            raise LabelError(f"label {part!r} is not key=value; write e.g. env=prod")
        key, value = key.strip(), value.strip()
        if key in labels:
            raise LabelError(f"label {key} is given twice; give each key once")
        labels[key] = value
    return check_labels(labels)


def format_labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "exists", "!exists"
    value: str | None = None

    def holds(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "=":
            return present and labels[self.key] == self.value
        if self.op == "!=":
            return not present or labels[self.key] != self.value
        if self.op == "exists":
            return present
        return not present

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!exists":
            return f"!{self.key}"
        return f"{self.key}{self.op}{self.value}"


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.holds(labels) for r in self.requirements)

    def select(self, labelled: Iterable[tuple[str, Mapping[str, str]]]) -> list[str]:
        """The ids, in the order given, whose labels match."""
        return [gateway_id for gateway_id, labels in labelled if self.matches(labels)]

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def parse_selector(text: str) -> Selector:
    """`env=prod,region!=us,canary,!retired` as a Selector; "" selects every gateway."""
    if len(text) > MAX_SELECTOR_CHARS:
        raise LabelError(f"selector is over {MAX_SELECTOR_CHARS} characters")
    requirements: list[Requirement] = []
    for part in _parts(text):
        if "!=" in part:
            key, _, value = part.partition("!=")
            op = "!="
        elif "=" in part:
            key, _, value = part.partition("=")
            op = "="
            value = value.removeprefix("=")  # key==value
        else:
            key, value = part, ""
            op = "exists"
            if key.startswith("!"):
                key, op = key[1:].strip(), "!exists"
        key, value = key.strip(), value.strip()
        try:
            check_key(key)
            requirement = Requirement(
                key, op, check_value(key, value) if op in ("=", "!=") else None
            )
        except LabelError as exc:
            raise LabelError(
                f"selector part {part!r}: {exc}; write key=value, key!=value, key or !key, "
                "joined by commas"
            ) from None
        requirements.append(requirement)
    return Selector(tuple(requirements))


def _parts(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]
