"""The package version and the version-skew rule between hub and sidecar."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("mission-control-sidecar")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0.0.0"

# How many minor versions a sidecar may lag behind the hub (Kubernetes-style skew).
MAX_SIDECAR_MINOR_LAG = 2


class VersionSkewError(ValueError):
    """A sidecar version the hub does not accept."""


def parse_version(text: str) -> tuple[int, int, int]:
    """Parse "MAJOR.MINOR.PATCH" (extra suffixes ignored) into integers."""
    core = text.strip().lstrip("v").split("+", 1)[0].split("-", 1)[0]
    parts = core.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:3]):
        raise VersionSkewError(f"unparseable version {text!r}; expected MAJOR.MINOR.PATCH")
    major, minor, *rest = (int(p) for p in parts[:3])
    return major, minor, rest[0] if rest else 0


def check_sidecar_version(sidecar: str, hub: str = VERSION) -> None:
    """Accept a sidecar up to two minor versions older than the hub, never newer."""
    s_major, s_minor, _ = parse_version(sidecar)
    h_major, h_minor, _ = parse_version(hub)
    if s_major != h_major or s_minor > h_minor:
        raise VersionSkewError(
            f"sidecar {sidecar} is newer than hub {hub} or of another major version; "
            "upgrade the hub first, then the sidecars"
        )
    if h_minor - s_minor > MAX_SIDECAR_MINOR_LAG:
        raise VersionSkewError(
            f"sidecar {sidecar} is more than {MAX_SIDECAR_MINOR_LAG} minor versions older than "
            f"hub {hub}; upgrade the sidecar"
        )
