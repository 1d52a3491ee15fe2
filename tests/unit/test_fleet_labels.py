"""Gateway labels and selectors: what is a valid label, what a selector picks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.fleet.labels import (
    MAX_LABELS,
    LabelError,
    check_labels,
    format_labels,
    parse_labels,
    parse_selector,
)


def test_labels_parse_from_the_cli_shape_and_print_back() -> None:
    labels = parse_labels("region=eu, env=prod,team/owner=ops-1")
    assert labels == {"env": "prod", "region": "eu", "team/owner": "ops-1"}
    assert format_labels(labels) == "env=prod,region=eu,team/owner=ops-1"
    assert parse_labels("") == {}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("env", "not key=value"),
        ("env=prod,env=dev", "given twice"),
        ("env=", "value '' is not valid"),
        ("-env=prod", "key '-env' is not valid"),
        ("env=pr od", "is not valid"),
        ("env==prod", "not key=value"),
        ("k=" + "v" * 64, "is not valid"),
    ],
)
def test_bad_labels_are_refused_naming_the_part(text: str, fragment: str) -> None:
    with pytest.raises(LabelError) as caught:
        parse_labels(text)
    assert fragment in str(caught.value)


def test_too_many_labels_are_refused() -> None:
    with pytest.raises(LabelError, match=f"more than {MAX_LABELS}"):
        check_labels({f"k{i}": "v" for i in range(MAX_LABELS + 1)})


@pytest.mark.parametrize(
    ("selector", "labels", "picked"),
    [
        ("", {}, True),
        ("env=prod", {"env": "prod"}, True),
        ("env==prod", {"env": "prod"}, True),
        ("env=prod", {"env": "dev"}, False),
        ("env=prod", {}, False),
        ("region!=us", {"region": "eu"}, True),
        ("region!=us", {}, True),  # absent is "not us", as in Kubernetes
        ("region!=us", {"region": "us"}, False),
        ("canary", {"canary": "yes"}, True),
        ("canary", {}, False),
        ("!retired", {}, True),
        ("!retired", {"retired": "2026"}, False),
        ("env=prod,region!=us", {"env": "prod", "region": "eu"}, True),
        ("env=prod,region!=us", {"env": "prod", "region": "us"}, False),
    ],
)
def test_selectors_pick_by_every_requirement(
    selector: str, labels: dict[str, str], picked: bool
) -> None:
    assert parse_selector(selector).matches(labels) is picked


@pytest.mark.parametrize(
    "text", ["env=", "=prod", "env=prod,,!", "a b=c", "env!=", "x=" + "y" * 70]
)
def test_bad_selectors_are_refused_with_the_grammar(text: str) -> None:
    with pytest.raises(LabelError, match="key=value, key!=value, key or !key"):
        parse_selector(text)


def test_a_selector_prints_as_it_parses() -> None:
    text = "env=prod,region!=us,canary,!retired"
    assert str(parse_selector(text)) == text
    assert str(parse_selector(" env == prod ")) == "env=prod"


def test_select_keeps_the_given_order() -> None:
    fleet = [("c", {"env": "prod"}), ("a", {"env": "dev"}), ("b", {"env": "prod"})]
    assert parse_selector("env=prod").select(fleet) == ["c", "b"]


names = st.from_regex(r"[a-z0-9]([a-z0-9_.-]{0,10}[a-z0-9])?", fullmatch=True)


@given(st.dictionaries(names, names, max_size=8))
def test_any_valid_labels_round_trip_and_select_themselves(labels: dict[str, str]) -> None:
    assert parse_labels(format_labels(labels)) == dict(sorted(labels.items()))
    if labels:
        assert parse_selector(format_labels(labels)).matches(labels)
