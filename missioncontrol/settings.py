"""One place that turns flags, environment variables and a TOML file into values.

Each program declares its options once (name, help, default, conversion); this
module builds the argparse flags, documents the environment variable and file
key of each in --help, and resolves a value with the precedence
flag > environment > config file > default.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A setting is missing, malformed or unknown; the message names it and its sources."""


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true/false)")


@dataclass(frozen=True)
class Option:
    """One setting: a flag --NAME, an environment variable and a config-file key."""

    name: str
    help: str
    default: Any = None
    convert: Callable[[str], Any] = str
    switch: bool = False  # a boolean flag that takes no value
    metavar: str | None = None

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    def env(self, prefix: str) -> str:
        return prefix + self.key.upper()


def add_options(
    parser: argparse.ArgumentParser, options: Sequence[Option], env_prefix: str
) -> None:
    for option in options:
        where = f"[env {option.env(env_prefix)}, file key {option.key}"
        where += "]" if option.default in (None, False) else f", default {option.default}]"
        help_text = f"{option.help} {where}".replace("%", "%%")  # argparse formats help
        if option.switch:
            parser.add_argument(
                f"--{option.name}",
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                f"--{option.name}", default=None, metavar=option.metavar, help=help_text
            )


def load_config_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None


def resolve(
    options: Sequence[Option],
    args: argparse.Namespace,
    environ: Mapping[str, str],
    env_prefix: str,
    file_values: Mapping[str, Any],
    file_path: Path | None = None,
) -> dict[str, Any]:
    """Return {key: value} for every option; raise SettingsError naming the bad source."""
    known = {option.key for option in options}
    unknown = sorted(set(file_values) - known)
    if unknown:
        raise SettingsError(
            f"config file {file_path} has unknown keys {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(known))}"
        )
    values: dict[str, Any] = {}
    for option in options:
        raw: Any = getattr(args, option.key, None)
        source = f"--{option.name}"
        if raw is None and option.env(env_prefix) in environ:
            raw, source = environ[option.env(env_prefix)], option.env(env_prefix)
        if raw is None and option.key in file_values:
            raw, source = file_values[option.key], f"config key {option.key}"
        if raw is None:
            # String defaults are written as a user would type them; convert them alike.
            default = option.default
            if isinstance(default, str) and not option.switch:
                default = option.convert(default)
            values[option.key] = default
            continue
        try:
            if option.switch:
                values[option.key] = raw if isinstance(raw, bool) else parse_bool(str(raw))
            else:
                values[option.key] = option.convert(str(raw))
        except ValueError as exc:
            raise SettingsError(f"{source}: {exc}") from None
    return values


def config_path_from(args: argparse.Namespace, environ: Mapping[str, str], env: str) -> Path | None:
    raw = getattr(args, "config", None) or environ.get(env)
    return Path(raw).expanduser() if raw else None


def expand_path(text: str) -> Path:
    return Path(os.path.expandvars(text)).expanduser()


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError(f"{text} must be > 0")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(f"{text} must be >= 0")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"{text} must be a whole number > 0")
    return value


def one_of(*choices: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"{text!r}: use {', '.join(choices[:-1])} or {choices[-1]}")
        return text.lower()

    return convert


# Both programs log the same way.
LOG_OPTIONS = (
    Option(
        "log-level",
        "debug, info, warning or error",
        "info",
        convert=one_of("debug", "info", "warning", "error"),
        metavar="LEVEL",
    ),
    Option(
        "log-format",
        "json, console, or auto (console on a terminal)",
        "auto",
        convert=one_of("json", "console", "auto"),
        metavar="FORMAT",
    ),
)
