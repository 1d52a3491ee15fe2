"""What both programs' /metrics endpoints share: a registry per process part, and its
Prometheus text exposition over aiohttp.

Every hub and sidecar builds its own `CollectorRegistry` in its composition root (never
the library's global default), so several hubs in one test process count apart. Label
sets are bounded by construction: route templates, statuses, outcomes and reasons,
never agent or gateway ids.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from missioncontrol.version import VERSION

# Seconds: a group commit, a request, a command. Sub-millisecond to a minute.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


def new_registry(program: str) -> CollectorRegistry:
    """A private registry with the program's build info in it."""
    registry = CollectorRegistry(auto_describe=True)
    Gauge(
        f"mc_{program}_build_info",
        f"mc-{program} build: always 1, the version as a label",
        ["version"],
        registry=registry,
    ).labels(VERSION).set(1)
    return registry


def exposition(registry: CollectorRegistry) -> web.Response:
    """The registry in the Prometheus text format, as prometheus-client renders it."""
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
