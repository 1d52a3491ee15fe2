"""Text from outside: what both programs accept, and how they bound what they keep.

Names (of gateways, boards, agents, tasks, people) end up in prompt files, log lines
and HTML; free text (descriptions, comments) in prompt files. So input text must be
valid Unicode that UTF-8 can carry (no lone surrogates, which is how undecodable bytes
arrive), free of NUL and other control characters (a name also of line breaks), and
bounded. A value that breaks a rule is refused with the rule it broke; nothing is
silently rewritten, except text a peer reports that is only kept to be shown
(`displayable`: an error message, a host name).
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class TextError(ValueError):
    """Text that breaks a rule; the message says which (never echoing the text)."""


def check_name(value: str, *, max_chars: int | None = None) -> str:
    """One line of text: no control characters or line breaks, 1 to `max_chars`."""
    _check_encodable(value)
    found = _CONTROL.search(value)
    if found:
        raise TextError(
            f"contains the control character U+{ord(found.group()):04X} at position "
            f"{found.start()}; a name is one line of printable text"
        )
    return _check_length(value, max_chars)


def check_text(value: str, *, max_chars: int | None = None) -> str:
    """Free text: line breaks and tabs allowed, other control characters not."""
    _check_encodable(value)
    found = _CONTROL_BUT_LINES.search(value)
    if found:
        raise TextError(
            f"contains the control character U+{ord(found.group()):04X} at position "
            f"{found.start()}; only line breaks and tabs are allowed"
        )
    return _check_length(value, max_chars, allow_empty=True)


def displayable(value: str, *, max_chars: int) -> str:
    """A peer's text made safe to keep and show: undecodable parts and control
    characters become U+FFFD, and it is cut to `max_chars` (marked as cut)."""
    value = _SURROGATE.sub("\ufffd", value)
    value = _CONTROL_BUT_LINES.sub("\ufffd", value)
    if len(value) > max_chars:
        mark = " …[cut]"
        value = value[: max(max_chars - len(mark), 0)] + mark
    return value


def encodable(value: str) -> str:
    """`value` with each lone surrogate (what a JSON escape like \\ud800 decodes to)
    replaced by U+FFFD, and nothing else changed, so UTF-8 and protobuf can carry it."""
    return _SURROGATE.sub("\ufffd", value)


def is_encodable(value: str) -> bool:
    """Whether UTF-8 can carry `value` (a lone surrogate means it came from bad bytes)."""
    return not _SURROGATE.search(value)


def _check_encodable(value: str) -> None:
    found = _SURROGATE.search(value)
    if found:
        raise TextError(
            f"is not valid UTF-8 (an undecodable byte or lone surrogate at position "
            f"{found.start()}); send UTF-8 text"
        )


def _check_length(value: str, max_chars: int | None, *, allow_empty: bool = False) -> str:
    if not allow_empty and not value.strip():
        raise TextError("is empty; give at least one visible character")
    if max_chars is not None and len(value) > max_chars:
        raise TextError(f"is {len(value)} characters; at most {max_chars} are allowed")
    return value
