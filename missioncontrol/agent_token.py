"""The shape of an agent token, shared by the hub (which mints) and the sidecar (which checks).

A raw token is `<12 lowercase letters or digits>.<43 URL-safe base64 characters>`:
a public id (the lookup key) and a 256-bit secret.
"""

from __future__ import annotations

import hashlib
import re

TOKEN_ID_CHARS = 12
SECRET_CHARS = 43  # unpadded base64 of 32 bytes
TOKEN_CHARS = TOKEN_ID_CHARS + 1 + SECRET_CHARS

_TOKEN_SHAPE = re.compile(rf"[a-z0-9]{{{TOKEN_ID_CHARS}}}\.[A-Za-z0-9_-]{{{SECRET_CHARS}}}")
MALFORMED = (
    f"agent token is malformed: expected {TOKEN_ID_CHARS} lowercase letters or digits, "
    f"'.', then {SECRET_CHARS} URL-safe base64 characters; send the whole content of "
    "the agent's .mc-agent-token file"
)


class MalformedTokenError(ValueError):
    """Not an agent token. The message never echoes the input (it may be a secret)."""


def parse_token_id(raw: str) -> str:
    """The public id of a raw agent token; raises MalformedTokenError.

    The length is checked first and the shape with an anchored regex over a fixed
    length, so hostile input costs O(1) before it is rejected.
    """
    if not isinstance(raw, str) or len(raw) != TOKEN_CHARS or not _TOKEN_SHAPE.fullmatch(raw):
        raise MalformedTokenError(MALFORMED)
    return raw[:TOKEN_ID_CHARS]


def sidecar_verifier(raw: str) -> bytes:
    """sha256 of the raw token: what the sidecar checks agent calls against locally."""
    parse_token_id(raw)
    return hashlib.sha256(raw.encode("ascii")).digest()
