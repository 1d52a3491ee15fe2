"""The dashboard's templates and static files, loaded once when the hub starts.

Autoescaping is on for every dashboard template (the workspace templates in
templates/ are another environment and keep theirs off): a value is escaped unless
a template marks it safe, and only the chart markup (charts.py, escaped itself) is.
Static files are read into memory at start and served with a content hash in their
URL, so nothing reads the disk while a page is served.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from missioncontrol.timefmt import iso


@dataclass(frozen=True)
class StaticFile:
    name: str
    body: bytes
    content_type: str
    version: str  # a hash of the body: part of its URL, so it may be cached for ever


CONTENT_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


def load_static() -> dict[str, StaticFile]:
    files: dict[str, StaticFile] = {}
    for item in resources.files("hub.ui").joinpath("static").iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if not item.is_file() or suffix not in CONTENT_TYPES:
            continue
        body = item.read_bytes()
        files[item.name] = StaticFile(
            item.name, body, CONTENT_TYPES[suffix], hashlib.sha256(body).hexdigest()[:12]
        )
    return files


def _epoch(value: float | str | None) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def ago(value: float | str | None, now: float) -> str:
    """ "3 min ago", "in 25 s", "never" for a time the page shows."""
    at = _epoch(value)
    if at is None:
        return "never"
    seconds = now - at
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            amount = math.floor(seconds / size)
            text = f"{amount} {unit}"
            return f"in {text}" if future else f"{text} ago"
    return "just now"


def iso_of(value: float | str | None) -> str:
    at = _epoch(value)
    return iso(at) or ""


def signed(value: int | None) -> str:
    if value is None:
        return ""
    return f"+{value}" if value > 0 else f"{value}" if value < 0 else "±0"


def build_environment(static: dict[str, StaticFile]) -> Environment:
    env = Environment(
        loader=PackageLoader("hub.ui", "templates"),
        autoescape=select_autoescape(("html",), default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ago"] = ago
    env.filters["iso"] = iso_of
    env.filters["signed"] = signed

    def static_url(name: str) -> str:
        return f"/ui/static/{name}?v={static[name].version}"

    env.globals["static_url"] = static_url
    return env


def precompile(env: Environment) -> None:
    """Compile every template now, so a first request does not read the disk."""
    for name in env.list_templates(extensions=("html",)):
        env.get_template(name)
