"""A gateway's workspace root: the directory on its host under which agent workspaces live.

An operator may declare it when creating the gateway (Mission Control's
`workspace_root`), so the hub can render agents' files before the sidecar has ever
connected. A sidecar started without `--workspace-root` follows the declared root;
one started with a different root keeps its own (it never writes where its operator
did not point it) and the hub reports the mismatch with the fix. Pure rules only.
"""

from __future__ import annotations

import posixpath

from missioncontrol.text import TextError, check_name

MAX_WORKSPACE_ROOT_CHARS = 1024


def normalize_workspace_root(text: str) -> str:
    """An absolute POSIX path without `.`/`..` segments or a trailing slash; ValueError
    naming the rule otherwise."""
    try:
        check_name(text, max_chars=MAX_WORKSPACE_ROOT_CHARS)
    except TextError as exc:
        raise ValueError(str(exc)) from None
    if not text.startswith("/"):
        raise ValueError(
            f"must be an absolute path on the gateway host (e.g. /srv/openclaw), not {text!r}"
        )
    segments = text.split("/")
    if any(segment in (".", "..") for segment in segments):
        raise ValueError("must not contain '.' or '..' segments; give the directory itself")
    root = posixpath.normpath(text)
    if root == "/":
        raise ValueError("must be a directory below /, not / itself")
    return root


def effective_workspace_root(declared: str | None, reported: str | None) -> str | None:
    """The root the hub renders workspace paths with: the declared one, else the sidecar's."""
    return declared or reported


def workspace_root_problem(
    declared: str | None, reported: str | None, follows: bool, *, connected_once: bool
) -> str | None:
    """Why the sidecar will not write where the hub renders, with the fix; None if it will."""
    if declared is None or not connected_once or follows or reported in (None, declared):
        return None
    return (
        f"the sidecar writes workspaces under {reported} (its --workspace-root), but this "
        f"gateway was created with workspace_root {declared}, so its agents' files cannot be "
        f"written; run the sidecar with --workspace-root {declared} (an installed service: "
        f"`mc-sidecar install-service --workspace-root {declared}`) or without "
        "--workspace-root, so it follows the hub; or, while no agent has been applied, "
        f'PATCH /api/v1/gateways/{{id}} with {{"workspace_root": "{reported}"}}'
    )
