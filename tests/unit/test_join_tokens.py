"""Join tokens: minting, the stored keyed hash, and every reason a token is refused."""

from __future__ import annotations

import re

import pytest

from hub.pki import join_tokens as join_tokens
from hub.pki.join_tokens import (
    DEFAULT_TTL_S,
    JoinTokenExpiredError,
    JoinTokenMalformedError,
    JoinTokenRecord,
    JoinTokenUnknownError,
    JoinTokenUsedError,
    JoinTokenWrongGatewayError,
)
from missioncontrol.pki import JoinString, MalformedJoinStringError, normalize_fingerprint

HUB_KEY = b"k" * 32
NOW = 1_800_000_000.0
FINGERPRINT = "ab" * 32


def mint(gateway_id: str | None = "gw-a", **kwargs: object) -> tuple[str, JoinTokenRecord]:
    return join_tokens.mint(HUB_KEY, gateway_id, now=NOW, **kwargs)  # type: ignore[arg-type]


def test_token_has_the_id_dot_secret_shape_and_defaults():
    raw, record = mint()
    assert re.fullmatch(r"[a-z0-9]{8}\.[a-z0-9]{32}", raw)
    assert record.token_id == raw.split(".")[0]
    assert record.expires_at - record.created_at == DEFAULT_TTL_S == 30 * 60
    assert record.max_uses == 1
    assert record.uses == 0


def test_record_holds_a_keyed_hash_not_the_secret():
    raw, record = mint()
    secret = raw.split(".")[1]
    assert secret.encode() not in record.secret_hmac
    assert secret not in repr(record)
    assert record.secret_hmac == join_tokens.hash_token(HUB_KEY, raw)
    assert record.secret_hmac != join_tokens.hash_token(b"z" * 32, raw)


def test_tokens_are_distinct():
    assert len({mint()[0] for _ in range(100)}) == 100


def test_valid_token_grants_its_gateway():
    raw, record = mint("gw-a")
    grant = join_tokens.check(HUB_KEY, raw, record, now=NOW + 60)
    assert grant.gateway_id == "gw-a"
    assert grant.bound
    assert grant.uses_left_after == 0


def test_naming_the_tokens_own_gateway_is_fine():
    raw, record = mint("gw-a")
    assert join_tokens.check(HUB_KEY, raw, record, now=NOW, gateway_id="gw-a").gateway_id == "gw-a"


def test_expired_token_says_how_long_ago_and_how_to_get_a_new_one():
    raw, record = mint("gw-a")
    with pytest.raises(JoinTokenExpiredError) as refused:
        join_tokens.check(HUB_KEY, raw, record, now=record.expires_at + 12 * 60)
    assert str(refused.value) == (
        f"join token {record.token_id} expired 12 min ago; "
        "create a new one with `mc-hub gateway join-token gw-a`"
    )
    assert refused.value.code == "join_token_expired"


def test_token_is_expired_exactly_at_its_expiry():
    raw, record = mint()
    join_tokens.check(HUB_KEY, raw, record, now=record.expires_at - 0.001)
    with pytest.raises(JoinTokenExpiredError, match="expired 0 s ago"):
        join_tokens.check(HUB_KEY, raw, record, now=record.expires_at)


def test_single_use_token_cannot_be_used_twice():
    raw, record = mint("gw-a")
    join_tokens.check(HUB_KEY, raw, record, now=NOW)
    used = record.used_once()
    with pytest.raises(JoinTokenUsedError) as refused:
        join_tokens.check(HUB_KEY, raw, used, now=NOW)
    assert str(refused.value).startswith(f"join token {record.token_id} already used; ")
    assert "`mc-hub gateway join-token gw-a`" in str(refused.value)


def test_token_for_one_gateway_does_not_enroll_another():
    raw, record = mint("gw-a")
    with pytest.raises(JoinTokenWrongGatewayError) as refused:
        join_tokens.check(HUB_KEY, raw, record, now=NOW, gateway_id="gw-b")
    assert f"join token {record.token_id} is for gateway gw-a, not gw-b" in str(refused.value)
    assert "`mc-hub gateway join-token gw-b`" in str(refused.value)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "abcdefgh",
        "abcdefgh.",
        ".0123456789abcdefghij0123456789ab",
        "ABCDEFGH.0123456789abcdefghij0123456789ab",
        "abcdefg.0123456789abcdefghij0123456789ab",
        "abcdefgh.0123456789abcdefghij0123456789a",
        "abcdefgh-0123456789abcdefghij0123456789ab",
        "abcdefgh.0123456789abcdefghij0123456789ab.extra",
        "abcdefgh.0123456789abcdefghij01234567 9ab",
    ],
)
def test_malformed_token_is_refused_with_the_expected_shape(raw: str):
    _, record = mint()
    with pytest.raises(JoinTokenMalformedError, match="expected 8 and 32 lowercase"):
        join_tokens.check(HUB_KEY, raw, record, now=NOW)
    with pytest.raises(JoinTokenMalformedError):
        join_tokens.token_id_of(raw)


def test_unknown_id_and_wrong_secret_are_refused_alike():
    raw, record = mint()
    token_id = raw.split(".")[0]
    wrong_secret = f"{token_id}.{'0' * 32}"
    with pytest.raises(JoinTokenUnknownError) as unknown:
        join_tokens.check(HUB_KEY, raw, None, now=NOW)
    with pytest.raises(JoinTokenUnknownError) as mismatch:
        join_tokens.check(HUB_KEY, wrong_secret, record, now=NOW)
    assert str(unknown.value) == str(mismatch.value)
    assert "mc-hub gateway join-token GATEWAY" in str(unknown.value)


def test_secret_is_checked_before_revealing_expiry_or_use():
    _, record = mint()
    forged = f"{record.token_id}.{'1' * 32}"
    with pytest.raises(JoinTokenUnknownError):
        join_tokens.check(HUB_KEY, forged, record.used_once(), now=record.expires_at + 1)


def test_token_checked_with_another_hub_key_is_unknown():
    raw, record = mint()
    with pytest.raises(JoinTokenUnknownError):
        join_tokens.check(b"o" * 32, raw, record, now=NOW)


def test_multi_use_token_counts_down_then_is_used_up():
    raw, record = mint(None, uses=3, ttl_s=3600)
    grants = []
    for _ in range(3):
        grants.append(join_tokens.check(HUB_KEY, raw, record, now=NOW))
        record = record.used_once()
    assert [g.uses_left_after for g in grants] == [2, 1, 0]
    with pytest.raises(JoinTokenUsedError, match=r"used up \(all 3 uses\)"):
        join_tokens.check(HUB_KEY, raw, record, now=NOW)


def test_unbound_token_enrolls_a_new_gateway_or_the_named_one():
    raw, record = mint(None, uses=5)
    new = join_tokens.check(HUB_KEY, raw, record, now=NOW)
    named = join_tokens.check(HUB_KEY, raw, record, now=NOW, gateway_id="gw-c")
    assert (new.gateway_id, new.bound) == (None, False)
    assert (named.gateway_id, named.bound) == ("gw-c", False)


def test_unbound_token_refuses_a_gateway_id_that_cannot_be_certified():
    raw, record = mint(None)
    with pytest.raises(JoinTokenMalformedError, match="cannot go into a certificate"):
        join_tokens.check(HUB_KEY, raw, record, now=NOW, gateway_id="../etc")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ttl_s": 0}, "ttl"),
        ({"ttl_s": 2 * 86400}, "ttl"),
        ({"uses": 0}, "uses"),
        ({"uses": 10_001}, "uses"),
    ],
)
def test_mint_bounds(kwargs: dict[str, float], match: str):
    with pytest.raises(ValueError, match=match):
        mint(**kwargs)  # type: ignore[arg-type]


def test_short_hub_key_is_refused():
    with pytest.raises(ValueError, match="hub key"):
        join_tokens.mint(b"short", None, now=NOW)


# ------------------------------------------------------------------- join string


def test_join_string_pins_the_ca_and_checks_as_the_token():
    raw, record = mint()
    text = join_tokens.join_string(raw, FINGERPRINT)
    assert text == f"{raw}@sha256:{FINGERPRINT}"
    parsed = JoinString.parse(text)
    assert parsed.token == raw
    assert parsed.ca_fingerprint == FINGERPRINT
    assert join_tokens.token_id_of(text) == record.token_id
    assert join_tokens.check(HUB_KEY, text, record, now=NOW).gateway_id == "gw-a"


def test_bare_token_is_a_join_string_without_pin():
    raw, _ = mint()
    assert JoinString.parse(raw) == JoinString(token=raw)
    assert str(JoinString(token=raw)) == raw


@pytest.mark.parametrize(
    "suffix",
    ["@", "@sha1:" + "ab" * 20, "@sha256:" + "ab" * 31, "@sha256:" + "zz" * 32, "@" + "ab" * 32],
)
def test_join_string_with_a_broken_pin_is_refused(suffix: str):
    raw, _ = mint()
    with pytest.raises(MalformedJoinStringError):
        JoinString.parse(raw + suffix)


def test_fingerprint_accepts_common_spellings():
    colons = ":".join(["AB"] * 32)
    assert normalize_fingerprint(f"SHA256:{colons}") == FINGERPRINT
    assert normalize_fingerprint(f"  {FINGERPRINT.upper()} ") == FINGERPRINT
