"""What the store refuses, and why: one base every part's refusals share.

The API answers each kind with its own status (hub/api/core.py `refused`), so a
rule deep in the store says *why* it refused and never *how HTTP says so*.
"""

from __future__ import annotations

import enum


class Refusal(enum.StrEnum):
    """Why the store refused a request; the API answers each with its own status."""

    INVALID = "invalid"  # the input is wrong (422, naming the field when there is one)
    NOT_FOUND = "not_found"  # what it names does not exist (404)
    FORBIDDEN = "forbidden"  # the caller may not do this (403)
    CONFLICT = "conflict"  # the current state does not allow it (409)


class StoreError(Exception):
    """A requested change is refused; the message says why and `refusal` what kind."""

    refusal = Refusal.INVALID


class UnknownGateway(StoreError):
    refusal = Refusal.NOT_FOUND
