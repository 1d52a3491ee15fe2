"""The sidecar's token index: O(1) lookup by id, sha256 compare, rotation grace, typed errors."""

from __future__ import annotations

import hashlib

import pytest

from hub.provisioning.agent_tokens import TokenKeyring
from missioncontrol.agent_token import TOKEN_CHARS, parse_token_id, sidecar_verifier
from sidecar.credentials import (
    MALFORMED_TOKENS,
    UNKNOWN_TOKENS,
    CredentialIndex,
    ExpiredToken,
    MalformedToken,
    UnknownToken,
    token_id_of,
)
from sidecar.state import Credential

KEYRING = TokenKeyring(b"k" * 32)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Rows:
    """Stands in for LocalState's credentials table."""

    def __init__(self, *creds: Credential) -> None:
        self.rows = list(creds)

    def credentials(self, agent_id: str | None = None) -> list[Credential]:
        return [c for c in self.rows if agent_id is None or c.agent_id == agent_id]


def index_of(*creds: Credential, clock: Clock | None = None) -> CredentialIndex:
    index = CredentialIndex(Rows(*creds), clock=clock or Clock())
    index.reload()
    return index


def credential(agent_id: str, raw: str, not_after: float | None = None) -> Credential:
    return Credential(parse_token_id(raw), agent_id, sidecar_verifier(raw), not_after)


def test_token_minted_by_the_hub_verifies_to_its_agent() -> None:
    token = KEYRING.mint()
    index = index_of(credential("mc-a", token.raw))
    assert index.verify(token.raw) == "mc-a"


def test_token_shape_agrees_with_the_hub() -> None:
    for _ in range(50):
        raw = KEYRING.mint().raw
        assert len(raw) == TOKEN_CHARS
        assert token_id_of(raw) == parse_token_id(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "short",
        "x" * 10_000,  # bounded work: rejected on length alone
        "ABCDEFGHIJKL." + "a" * 43,  # id must be lowercase
        "abcdefghijkl-" + "a" * 43,  # separator
        "abcdefghijkl." + "a" * 42 + "=",  # padding is not URL-safe unpadded base64
        "abcdefghijkl." + "a" * 42 + "é",
        "abcdefghijkl." + "a" * 42 + "\n",
    ],
)
def test_malformed_tokens_are_refused_without_echoing_them(raw: str) -> None:
    index = index_of(credential("mc-a", KEYRING.mint().raw))
    with pytest.raises(MalformedToken) as caught:
        index.verify(raw)
    assert caught.value.reason == "malformed"
    if len(raw) > 4:
        assert raw not in str(caught.value)


def test_unknown_id_and_wrong_secret_are_both_unknown_and_never_echo_the_secret() -> None:
    token = KEYRING.mint()
    index = index_of(credential("mc-a", token.raw))
    stranger = KEYRING.mint().raw
    with pytest.raises(UnknownToken):
        index.verify(stranger)
    forged = token.token_id + "." + "A" * 43  # right id, wrong secret
    with pytest.raises(UnknownToken) as caught:
        index.verify(forged)
    assert caught.value.token_id == token.token_id
    assert forged[13:] not in str(caught.value)


def test_rotated_token_is_accepted_until_its_grace_ends_then_expired() -> None:
    clock = Clock()
    old, new = KEYRING.mint(), KEYRING.mint()
    index = index_of(
        credential("mc-a", new.raw),
        credential("mc-a", old.raw, not_after=clock.now + 600),
        clock=clock,
    )
    assert index.verify(old.raw) == "mc-a"
    assert index.verify(new.raw) == "mc-a"
    clock.now += 601
    with pytest.raises(ExpiredToken, match="ended 1 s ago") as caught:
        index.verify(old.raw)
    assert caught.value.reason == "expired"
    assert index.verify(new.raw) == "mc-a"


def test_reload_picks_up_added_and_removed_credentials() -> None:
    source = Rows()
    index = CredentialIndex(source)
    first, second = KEYRING.mint(), KEYRING.mint()
    source.rows.append(credential("mc-a", first.raw))
    assert index.reload() == 1
    assert index.verify(first.raw) == "mc-a"
    source.rows[:] = [credential("mc-b", second.raw)]
    index.reload()
    with pytest.raises(UnknownToken):
        index.verify(first.raw)
    assert index.verify(second.raw) == "mc-b"
    assert index.agents() == frozenset({"mc-b"})


def test_reload_agent_replaces_only_that_agents_tokens() -> None:
    a_old, a_new, b = KEYRING.mint(), KEYRING.mint(), KEYRING.mint()
    source = Rows(credential("mc-a", a_old.raw), credential("mc-b", b.raw))
    index = CredentialIndex(source)
    index.reload()
    source.rows = [credential("mc-a", a_new.raw), credential("mc-b", b.raw)]  # rotated, no grace
    assert index.reload_agent("mc-a") == 1
    with pytest.raises(UnknownToken):
        index.verify(a_old.raw)
    assert index.verify(a_new.raw) == "mc-a"
    assert index.verify(b.raw) == "mc-b"
    source.rows = [credential("mc-b", b.raw)]  # mc-a removed
    assert index.reload_agent("mc-a") == 0
    with pytest.raises(UnknownToken):
        index.verify(a_new.raw)
    assert index.agents() == frozenset({"mc-b"}) and len(index) == 1


def test_accepted_ahead_tokens_verify_beside_the_old_ones_until_the_agents_reload() -> None:
    old, new = KEYRING.mint(), KEYRING.mint()
    source = Rows(credential("mc-a", old.raw))
    index = CredentialIndex(source)
    index.reload()
    index.accept("mc-a", [credential("mc-a", new.raw)])  # a command under way
    assert index.verify(old.raw) == index.verify(new.raw) == "mc-a"
    index.reload_agent("mc-a")  # the command was not recorded: only the recorded set
    with pytest.raises(UnknownToken):
        index.verify(new.raw)
    assert index.verify(old.raw) == "mc-a"
    index.accept("mc-b", [credential("mc-b", new.raw)])  # an agent still being created
    source.rows.append(credential("mc-b", new.raw))
    index.reload_agent("mc-b")
    assert index.verify(new.raw) == "mc-b" and len(index) == 2


def test_verifier_is_sha256_of_the_whole_raw_token() -> None:
    raw = "abcdefghij01." + "Z" * 43
    index = index_of(
        Credential("abcdefghij01", "mc-hand", hashlib.sha256(raw.encode()).digest(), None)
    )
    assert index.verify(raw) == "mc-hand"


def test_failures_are_charged_to_a_known_token_id_else_to_one_shared_key() -> None:
    minted = KEYRING.mint()
    index = index_of(credential("mc-a", minted.raw))
    guessed = minted.raw[:13] + "A" * 43
    assert index.failure_key(guessed) == minted.token_id  # only that token is held back
    # Ids nobody holds share one key, so inventing ids buys no fresh budget.
    assert {index.failure_key(KEYRING.mint().raw) for _ in range(5)} == {UNKNOWN_TOKENS}
    for junk in ("", "x", "\udcff" * 56, "A" * 56, minted.raw + "x"):
        assert index.failure_key(junk) == MALFORMED_TOKENS
