"""Where the registration monitor keeps its files under the configured `state_dir`."""
from __future__ import annotations

from pathlib import Path

DATABASE_NAME = "registrations.sqlite"
SOCKET_NAME = "registrations.sock"


def database_path(state_dir: Path | str) -> Path:
    """The SQLite file with every registration's state."""
    return Path(state_dir) / DATABASE_NAME


def socket_path(state_dir: Path | str) -> Path:
    """The unix datagram socket Kamailio's Python sends REGISTER events to."""
    return Path(state_dir) / SOCKET_NAME
