"""Constants and small helpers both ends of the Link agree on."""

from __future__ import annotations

import enum
import time
from typing import cast

from google.protobuf.timestamp_pb2 import Timestamp

from protos import link_pb2 as pb

# Version of the Link contract. Bump only for changes an older peer cannot ignore.
LINK_PROTOCOL = 1
SUPPORTED_LINK_PROTOCOLS = frozenset({1})

# gRPC message ceiling on both ends. The hub refuses to queue a larger command,
# so only a misbehaving peer ever meets the transport limit.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_COMMAND_BYTES = 3 * 1024 * 1024

# Keepalive: a silent peer is noticed within KEEPALIVE_TIME + KEEPALIVE_TIMEOUT (<= 15 s).
KEEPALIVE_TIME_MS = 5_000
KEEPALIVE_TIMEOUT_MS = 5_000
# The server must accept client pings this often, or it answers GOAWAY too_many_pings.
MIN_PING_INTERVAL_MS = 4_000

# How long the hub waits for the first message (Hello) of a new stream.
HELLO_TIMEOUT_S = 10.0

# Sidecars relay coalesced heartbeats at most this often (the hub says so in its
# Welcome). Short, since batches are pipelined: a beat waits for the next flush and the
# hub's next commit (about once a second), so beat -> durable stays near one commit.
HEARTBEAT_FLUSH_MS = 100

# A gateway query (live status, sessions) is answered within this, or the hub gives up;
# the sidecar bounds its own gateway calls below it so it can still say why.
GATEWAY_QUERY_TIMEOUT_S = 10.0
MAX_QUERY_SESSIONS = 200

# A UsageReport carries at most this many (session, day) figures; more wait for the next.
MAX_USAGE_SESSIONS = 200


class GatewayGeneration(enum.IntEnum):
    """Which file set and roster shape a gateway takes; the values are the proto enum's."""

    UNKNOWN = pb.GATEWAY_GENERATION_UNSPECIFIED  # the gateway was never reached
    LEGACY_2026_3 = pb.GATEWAY_GENERATION_LEGACY_2026_3  # protocol 3, agents.list, TOOLS.md
    CURRENT = pb.GATEWAY_GENERATION_CURRENT  # protocol 4, agents.entries, cron scratch

    @classmethod
    def of(cls, value: int) -> GatewayGeneration:
        """The generation a wire value names; one this build does not know is UNKNOWN."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN

    @property
    def template_dir(self) -> str | None:
        """The directory under templates/ its files are rendered from (None: unknown)."""
        return _TEMPLATE_DIRS.get(self)

    @property
    def label(self) -> str | None:
        """How the API names it: its template directory."""
        return self.template_dir

    @property
    def proto(self) -> pb.GatewayGeneration:
        return cast(pb.GatewayGeneration, int(self))


class GatewayErrorKind(enum.IntEnum):
    """What a gateway's error means (classified once, by the sidecar); the proto enum's values.

    RETRY: the gateway works and asked to be asked again (busy, reloading, changed under
    the request). PERMANENT: the request can never succeed as sent. UNREACHABLE: the
    gateway cannot serve the sidecar at all (down, restarting, refused the connection).
    """

    UNSPECIFIED = pb.GATEWAY_ERROR_KIND_UNSPECIFIED  # no gateway error, or an older sidecar
    RETRY = pb.GATEWAY_ERROR_RETRY
    PERMANENT = pb.GATEWAY_ERROR_PERMANENT
    UNREACHABLE = pb.GATEWAY_ERROR_UNREACHABLE

    @classmethod
    def of(cls, value: int) -> GatewayErrorKind:
        try:
            return cls(value)
        except ValueError:
            return cls.UNSPECIFIED

    @property
    def retryable(self) -> bool:
        """Asking again can succeed (the sidecar keeps the command and retries it)."""
        return self in (GatewayErrorKind.RETRY, GatewayErrorKind.UNREACHABLE)

    @property
    def proto(self) -> pb.GatewayErrorKind:
        return cast(pb.GatewayErrorKind, int(self))


_TEMPLATE_DIRS = {
    GatewayGeneration.LEGACY_2026_3: "legacy-2026.3",
    GatewayGeneration.CURRENT: "current",
}


def channel_options() -> list[tuple[str, int]]:
    """gRPC client channel options for the sidecar's link."""
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # This grpc-core only fails a transport on an unanswered ping with a ping timeout.
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # Reconnect pacing is the link client's own (jittered backoff), not grpc-core's.
        ("grpc.enable_retries", 0),
    ]


def server_options() -> list[tuple[str, int]]:
    """gRPC server options for the hub's link listener."""
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # Never share a port: with SO_REUSEPORT a second hub binds the same link port
        # and reconnecting sidecars land on either one.
        ("grpc.so_reuseport", 0),
    ]


def timestamp(epoch_s: float | None = None) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int((time.time() if epoch_s is None else epoch_s) * 1e9))
    return stamp


def epoch_s(stamp: Timestamp) -> float:
    return stamp.ToNanoseconds() / 1e9
