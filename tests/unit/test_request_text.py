"""Every string any request model takes is checked: valid UTF-8, no control characters,
and one line unless the field says it holds free text. Tried on every route's models,
so a new field or route is covered by being declared."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel, ValidationError

from hub.api import build_api
from hub.api.core import Strict

BAD_EVERYWHERE = {"nul": "a\x00b", "escape": "a\x1b[2Jb", "surrogate": "a\ud800b", "del": "a\x7f"}
BAD_IN_A_NAME = {"newline": "line one\nline two", "carriage return": "a\rb"}


def request_models() -> list[type[BaseModel]]:
    models: set[type[BaseModel]] = set()
    for route in build_api().routes:
        for model in (route.query, route.body):
            if model is not None:
                models.add(model)
    return sorted(models, key=lambda m: m.__name__)


def string_fields(model: type[BaseModel]) -> list[tuple[str, str | None]]:
    """(field, its text kind) for every field that may hold a string."""
    found = []
    for name, info in model.model_fields.items():
        if "str" in repr(info.annotation) or "Any" in repr(info.annotation):
            extra = info.json_schema_extra
            kind = extra.get("x-text") if isinstance(extra, dict) else None
            found.append((name, kind if isinstance(kind, str) else None))
    return found


CASES = [(model, name, kind) for model in request_models() for name, kind in string_fields(model)]


def test_the_routes_take_string_fields_at_all() -> None:
    assert len(CASES) > 30  # the walk found the API's text, so the checks below mean something


@pytest.mark.parametrize(("model", "field", "kind"), CASES, ids=lambda v: getattr(v, "__name__", v))
def test_bad_text_is_refused_naming_the_field(
    model: type[BaseModel], field: str, kind: str | None
) -> None:
    bad = dict(BAD_EVERYWHERE)
    if kind is None:
        bad.update(BAD_IN_A_NAME)
    if kind == "opaque":
        bad = {"surrogate": BAD_EVERYWHERE["surrogate"]}  # a secret may hold any character
    for what, value in bad.items():
        with pytest.raises(ValidationError) as refused:
            model.model_validate({field: _shaped(model, field, value)})
        fields = {error["loc"][0] for error in refused.value.errors() if error["loc"]}
        assert field in fields, (what, refused.value.errors())


def _shaped(model: type[BaseModel], field: str, value: str) -> object:
    """The bad text in the shape the field takes (a string, or inside a mapping)."""
    annotation = repr(model.model_fields[field].annotation)
    if annotation.startswith("dict") or ("dict[" in annotation and "str |" not in annotation[:12]):
        return {"role": value}
    return value


def test_free_text_keeps_its_line_breaks_and_names_stay_one_line() -> None:
    board = typing.cast(type[Strict], _model("BoardCreate"))
    parsed = board.model_validate(
        {"name": "Ops", "gateway_id": "gw", "description": "first line\nsecond line\ttab"}
    )
    assert parsed.description == "first line\nsecond line\ttab"  # type: ignore[attr-defined]
    with pytest.raises(ValidationError, match="one line"):
        board.model_validate({"name": "Ops\nInjected: yes", "gateway_id": "gw"})


def _model(name: str) -> type[BaseModel]:
    return next(m for m in request_models() if m.__name__ == name)
