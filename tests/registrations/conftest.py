from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def short_dir():
    """A directory with a short path: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="tpreg", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def send():
    """send(path, data): one datagram to a unix socket, as Kamailio's Python does."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def _send(path: Path, data: bytes) -> None:
        sock.sendto(data, str(path))

    yield _send
    sock.close()
