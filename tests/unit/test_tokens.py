"""Agent tokens: shape, keyed digests, verification, rotation windows, the hub key file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.provisioning import agent_tokens as hub_tokens
from hub.provisioning.agent_tokens import (
    DEFAULT_ROTATION_GRACE_S,
    HUB_KEY_BYTES,
    AgentTokens,
    TokenKeyring,
)
from missioncontrol import agent_token
from missioncontrol.agent_token import (
    SECRET_CHARS,
    TOKEN_CHARS,
    TOKEN_ID_CHARS,
    MalformedTokenError,
    parse_token_id,
    sidecar_verifier,
)
from missioncontrol.private_files import InsecurePermissionsError

HUB_KEY = bytes(range(32))


@pytest.fixture
def keyring() -> TokenKeyring:
    return TokenKeyring(HUB_KEY)


def test_minted_token_has_public_id_and_256_bit_secret(keyring: TokenKeyring) -> None:
    token = keyring.mint()
    token_id, dot, secret = token.raw.partition(".")
    assert dot == "." and len(token.raw) == TOKEN_CHARS == 56
    assert token_id == token.token_id and len(token_id) == TOKEN_ID_CHARS
    assert token_id.isalnum() and token_id == token_id.lower()
    assert len(secret) == SECRET_CHARS
    # 43 URL-safe base64 characters decode to exactly 32 bytes.
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32


def test_mint_never_repeats_ids_or_secrets(keyring: TokenKeyring) -> None:
    tokens = [keyring.mint() for _ in range(500)]
    assert len({t.token_id for t in tokens}) == 500
    assert len({t.raw for t in tokens}) == 500


def test_raw_token_stays_out_of_repr(keyring: TokenKeyring) -> None:
    token = keyring.mint()
    assert token.raw not in repr(token)
    assert token.raw.split(".")[1] not in repr(token)


def test_digest_is_hmac_sha256_under_a_derived_key(keyring: TokenKeyring) -> None:
    token = keyring.mint()
    assert len(token.digest) == 32
    assert keyring.digest(token.raw) == token.digest
    # Not the plain HMAC under the hub key: join tokens use that, agent tokens must differ.
    assert token.digest != hmac.digest(HUB_KEY, token.raw.encode(), "sha256")
    assert token.digest != hashlib.sha256(token.raw.encode()).digest()


def test_digest_depends_on_the_hub_key() -> None:
    token = TokenKeyring(HUB_KEY).mint()
    other = TokenKeyring(b"\x01" * 32)
    assert other.digest(token.raw) != token.digest
    assert not other.verify(token.raw, token.digest)


def test_verify_accepts_the_token_and_rejects_any_other(keyring: TokenKeyring) -> None:
    token = keyring.mint()
    assert keyring.verify(token.raw, token.digest)
    assert not keyring.verify(keyring.mint().raw, token.digest)
    flipped = token.raw[:-1] + ("A" if token.raw[-1] != "A" else "B")
    assert not keyring.verify(flipped, token.digest)
    # Same secret under another id: the id is bound into the MAC.
    other_id = ("a" if token.raw[0] != "a" else "b") + token.raw[1:]
    assert not keyring.verify(other_id, token.digest)


def test_verify_returns_false_for_malformed_input(keyring: TokenKeyring) -> None:
    token = keyring.mint()
    for junk in ("", "x", token.raw + "x", token.raw.upper(), " " + token.raw[1:]):
        assert not keyring.verify(junk, token.digest)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "abc",
        "a" * 56,  # no separator
        "ABCDEFGHIJKL." + "a" * 43,  # upper-case id
        "abcdefghijk." + "a" * 44,  # separator in the wrong place
        "abcdefghijkl:" + "a" * 43,
        "abcdefghijkl." + "a" * 42 + "=",  # padding is not part of the shape
        "abcdefghijkl." + "a" * 42 + "é",
        "abcdefghijkl." + "a" * 42 + "\n",
        "abcdefghijkl." + "a" * 10_000,
    ],
)
def test_parse_rejects_malformed_tokens(raw: str) -> None:
    with pytest.raises(MalformedTokenError) as caught:
        parse_token_id(raw)
    assert raw[13:] == "" or raw[13:] not in str(caught.value)  # never echoes the secret


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(MalformedTokenError):
        parse_token_id(b"abcdefghijkl." + b"a" * 43)  # type: ignore[arg-type]


def test_parse_returns_the_id(keyring: TokenKeyring) -> None:
    token = keyring.mint()
    assert keyring.parse(token.raw) == parse_token_id(token.raw) == token.token_id


def test_huge_input_is_rejected_on_its_length_before_any_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scanned: list[int] = []

    class SpyShape:
        def fullmatch(self, text: str) -> object:
            scanned.append(len(text))
            return None

    monkeypatch.setattr(agent_token, "_TOKEN_SHAPE", SpyShape())
    _rejects("a" * 1_000_000)
    _rejects("a" * (agent_token.TOKEN_CHARS + 1))
    assert scanned == []  # the length check refused both: the pattern never ran
    _rejects("a" * agent_token.TOKEN_CHARS)
    assert scanned == [agent_token.TOKEN_CHARS]  # only a right-length input is scanned


def _rejects(raw: str) -> None:
    with pytest.raises(MalformedTokenError):
        parse_token_id(raw)


@given(st.text(max_size=80))
def test_parse_accepts_only_the_documented_shape(raw: str) -> None:
    try:
        token_id = parse_token_id(raw)
    except MalformedTokenError:
        return
    assert len(raw) == 56 and raw[12] == "." and token_id == raw[:12]


def test_sidecar_verifier_is_sha256_of_the_raw_token(keyring: TokenKeyring) -> None:
    token = keyring.mint()
    assert sidecar_verifier(token.raw) == hashlib.sha256(token.raw.encode()).digest()
    assert token.sidecar_sha256 == sidecar_verifier(token.raw)
    assert token.stored().sidecar_sha256 == token.sidecar_sha256
    with pytest.raises(MalformedTokenError):
        sidecar_verifier("not a token")


def test_short_hub_key_is_refused() -> None:
    with pytest.raises(ValueError, match="fewer than 32"):
        TokenKeyring(b"short")


def test_verification_is_one_hmac_and_no_key_stretching(
    keyring: TokenKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = keyring.mint()
    digests: list[str] = []
    real_digest = hmac.digest

    def counting_digest(key: bytes, message: bytes, digest: str) -> bytes:
        digests.append(digest)
        return real_digest(key, message, digest)

    def refuse(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("a slow KDF on the request path")

    monkeypatch.setattr(hub_tokens.hmac, "digest", counting_digest)
    for slow in ("pbkdf2_hmac", "scrypt"):
        monkeypatch.setattr(hashlib, slow, refuse)
    assert keyring.verify(token.raw, token.digest)
    assert digests == ["sha256"]  # one HMAC-SHA256, whatever the fleet size (see make bench)


# ------------------------------------------------------------------- rotation


def test_rotation_keeps_previous_token_valid_for_the_grace(keyring: TokenKeyring) -> None:
    old, new = keyring.mint(), keyring.mint()
    tokens = AgentTokens(old.stored()).rotated(new, now=1000.0)
    assert tokens.current.token_id == new.token_id
    assert tokens.previous is not None and tokens.previous.token_id == old.token_id
    assert tokens.previous.not_after == 1000.0 + DEFAULT_ROTATION_GRACE_S == 1600.0
    assert [t.token_id for t in tokens.accepted(1599.9)] == [new.token_id, old.token_id]
    assert [t.token_id for t in tokens.accepted(1600.0)] == [new.token_id]


def test_rotation_with_zero_grace_revokes_at_once(keyring: TokenKeyring) -> None:
    old, new = keyring.mint(), keyring.mint()
    tokens = AgentTokens(old.stored()).rotated(new, now=5.0, grace_s=0)
    assert tokens.previous is None
    assert tokens.find(old.token_id, 5.0) is None


def test_second_rotation_within_grace_revokes_the_oldest(keyring: TokenKeyring) -> None:
    first, second, third = keyring.mint(), keyring.mint(), keyring.mint()
    tokens = AgentTokens(first.stored()).rotated(second, now=0.0).rotated(third, now=10.0)
    accepted = {t.token_id for t in tokens.accepted(11.0)}
    assert accepted == {second.token_id, third.token_id}


def test_rotation_to_the_same_token_is_refused(keyring: TokenKeyring) -> None:
    token = keyring.mint()
    with pytest.raises(ValueError):
        AgentTokens(token.stored()).rotated(token, now=0.0)


def test_pruned_drops_an_expired_previous_token(keyring: TokenKeyring) -> None:
    tokens = AgentTokens(keyring.mint().stored()).rotated(keyring.mint(), now=0.0, grace_s=60)
    assert tokens.pruned(59.0) is tokens
    assert tokens.pruned(60.0).previous is None


def test_authenticate_finds_current_and_graced_tokens_only(keyring: TokenKeyring) -> None:
    old, new = keyring.mint(), keyring.mint()
    tokens = AgentTokens(old.stored()).rotated(new, now=0.0, grace_s=60)
    assert keyring.authenticate(new.raw, tokens, 30.0) == tokens.current
    assert keyring.authenticate(old.raw, tokens, 30.0) == tokens.previous
    assert keyring.authenticate(old.raw, tokens, 61.0) is None
    assert keyring.authenticate(keyring.mint().raw, tokens, 30.0) is None
    assert keyring.authenticate("garbage", tokens, 30.0) is None
    # Right id, wrong secret.
    forged = new.token_id + "." + "A" * SECRET_CHARS
    assert keyring.authenticate(forged, tokens, 30.0) is None


# ------------------------------------------------------------------- key file


def test_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "hub.key"
    first = TokenKeyring.from_file(path)
    assert path.stat().st_size == HUB_KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = first.mint()
    again = TokenKeyring.from_file(path)  # a restart keeps verifying old tokens
    assert again.verify(token.raw, token.digest)


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hub.key"
    TokenKeyring.from_file(path)
    path.chmod(0o644)
    with pytest.raises(InsecurePermissionsError, match="chmod 600"):
        TokenKeyring.from_file(path)
