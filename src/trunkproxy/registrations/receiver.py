"""The unix datagram socket that Kamailio's Python sends REGISTER events to.

The only I/O of the event path: datagrams in (one event, or a batch of events one per line:
JSON objects or event queue values, the latter after a line stating the batch's time),
parsed events handed to `on_event`. A malformed
datagram (or an `on_event` that raises) is logged and counted, never allowed to stop the socket.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import time
from pathlib import Path
from typing import Callable

from trunkproxy.registrations.events import EventError, RegisterEvent, parse_event
from trunkproxy.routing.event_queue import batch_time

log = logging.getLogger("trunkproxy.registrations")

_MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the terminating NUL on Linux


class ReceiverError(Exception):
    """The socket cannot be bound; the message says which path and why."""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: "EventReceiver") -> None:
        self._receiver = receiver

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._receiver._datagram(data)

    def error_received(self, exc: Exception) -> None:
        log.warning("event socket error: %s", exc)


class EventReceiver:
    """Binds `socket_path` (a unix datagram socket) and calls `on_event(event)` for each event.

    `mode` is applied to the socket file so Kamailio (possibly another user) may send to it.
    """

    def __init__(self, socket_path: Path | str, on_event: Callable[[RegisterEvent], None], *,
                 mode: int = 0o660, clock: Callable[[], float] = time.time) -> None:
        self.socket_path = Path(socket_path)
        self._on_event = on_event
        self._clock = clock
        self._mode = mode
        self._transport: asyncio.DatagramTransport | None = None
        self.received = 0
        """Well-formed events handed on."""
        self.malformed = 0
        """Datagrams that were not valid events (logged and dropped)."""
        self.errors = 0
        """Events whose handler raised (logged; the socket keeps going)."""

    async def start(self) -> None:
        path = str(self.socket_path)
        if len(os.fsencode(path)) > _MAX_UNIX_PATH:
            raise ReceiverError(f"{path}: unix socket path longer than {_MAX_UNIX_PATH} bytes; use a shorter state_dir")
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.socket_path)
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self), local_addr=path, family=socket.AF_UNIX)
        except OSError as exc:
            raise ReceiverError(f"{path}: cannot bind the event socket ({exc.strerror or exc})") from exc
        self._transport = transport
        os.chmod(path, self._mode)
        log.debug("listening for REGISTER events on %s", path)

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            try:
                self.socket_path.unlink()
            except FileNotFoundError:
                pass

    def _datagram(self, data: bytes) -> None:
        # a datagram carries one event or a batch of them, one per line (parse_event reads
        # both forms: a JSON object, a value as Kamailio's event queue holds it); queued
        # values take the time the batch states, else the time it arrived
        lines = data.split(b"\n")
        stated = batch_time(lines[0].decode("ascii", "replace")) if lines[0].startswith(b"@") else None
        if stated is not None:
            del lines[0]
        when = stated if stated is not None else self._clock()
        for line in lines:
            if line.strip():
                self._line(line, when)

    def _line(self, data: bytes, when: float) -> None:
        try:
            event = parse_event(data, when)
        except EventError as exc:
            self.malformed += 1
            log.warning("dropped malformed REGISTER event (%s): %r", exc, data[:200])
            return
        self.received += 1
        try:
            self._on_event(event)
        except Exception:  # noqa: BLE001 - the socket must outlive a bug in a handler
            self.errors += 1
            log.exception("REGISTER event handler failed for %s", event.key)


def _remove_stale(path: Path) -> None:
    """Remove a socket file left behind by a previous run; refuse if it is alive or not a socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ReceiverError(f"{path}: exists and is not a socket; remove it or choose another state_dir")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody bound to it: stale
        return
    finally:
        probe.close()
    raise ReceiverError(f"{path}: another process is receiving on this socket (is `trunkproxy run` already running?)")
