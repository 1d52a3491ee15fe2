"""The README's API tour is sent as the API would take it: every `curl` to the hub's REST
API names a route that exists, with that method, and every body it sends is one the
route's own model accepts (a 6-character webhook secret the API refuses, once shown
there, fails here)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from pydantic import ValidationError

from hub.api import build_api
from hub.api.core import Route

README = Path(__file__).resolve().parents[2] / "README.md"
API = build_api()
PLACEHOLDER_ID = "00000000-0000-4000-8000-000000000000"


def shell_commands(text: str) -> list[str]:
    """The commands of the README's sh blocks, continuation lines and quotes joined."""
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        pending = ""
        for line in block.splitlines():
            pending = f"{pending}\n{line}" if pending else line
            if pending.endswith("\\"):
                pending = pending[:-1]
                continue
            try:
                shlex.split(pending, comments=True)
            except ValueError:  # a quote still open: the command goes on
                continue
            commands.append(pending)
            pending = ""
    return commands


def expand(value: str) -> str:
    value = value.replace("$API", "/api/v1").replace("http://127.0.0.1:8000", "")
    return re.sub(r"\$\{?[A-Z_]+\}?|\b[A-Z]+_ID\b", PLACEHOLDER_ID, value)


def curl_calls() -> list[tuple[str, str, str | None]]:
    """(method, path with query, body) of every curl the tour sends to the REST API."""
    calls = []
    for command in shell_commands(README.read_text()):
        for part in re.split(r";\s*(?=curl\s)", command):
            words = shlex.split(part, comments=True)
            if not words or words[0] != "curl":
                continue
            method, body, url = None, None, None
            for index, word in enumerate(words):
                if word == "-X":
                    method = words[index + 1]
                elif word == "-d":
                    body = words[index + 1]
                elif word.startswith(("$API", "http://127.0.0.1:8000")):
                    url = word
            if url is None or "/api/v1/" not in expand(url):
                continue
            calls.append((method or ("POST" if body is not None else "GET"), expand(url), body))
    return calls


def route_for(method: str, path: str) -> Route | None:
    for route in API.routes:
        pattern = "/".join(
            "[^/]+" if part.startswith("{") else re.escape(part) for part in route.path.split("/")
        )
        if route.method == method and re.fullmatch(pattern, path):
            return route
    return None


CALLS = curl_calls()


def test_the_tour_is_found() -> None:
    assert len(CALLS) >= 30
    paths = {path for _, path, _ in CALLS}
    assert any("/approvals" in p for p in paths) and any("/activity" in p for p in paths)


@pytest.mark.parametrize(("method", "url", "body"), CALLS, ids=[f"{m} {u}" for m, u, _ in CALLS])
def test_each_call_of_the_tour_is_one_the_api_takes(
    method: str, url: str, body: str | None
) -> None:
    parts = urlsplit(url)
    route = route_for(method, parts.path)
    assert route is not None, f"no route {method} {parts.path}"
    if route.query is not None:
        try:
            route.query.model_validate(dict(parse_qsl(parts.query)))
        except ValidationError as exc:
            pytest.fail(f"{method} {url}: the query is refused: {exc}")
    if body is not None:
        assert route.body is not None, f"{method} {parts.path} takes no body"
        try:
            route.body.model_validate(json.loads(expand(body)))
        except (ValidationError, ValueError) as exc:
            pytest.fail(f"{method} {url}: the body is refused: {exc}")
