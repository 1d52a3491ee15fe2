"""The tests' PostgreSQL on loopback: the server `make hubs` starts too
(hub/demo/postgres_server.py), in a temporary directory removed when it stops."""

from hub.demo.postgres_server import (
    INSTALL_HINT,
    PostgresServer,
    PostgresUnavailable,
    server_bin_dir,
)

__all__ = ["INSTALL_HINT", "PostgresServer", "PostgresUnavailable", "server_bin_dir"]
