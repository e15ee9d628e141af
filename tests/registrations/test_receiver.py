"""The event socket: real unix datagrams in; malformed ones counted, never fatal."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat

import pytest

from trunkproxy.registrations.events import RegisterRequest, RegistrationKey, encode_event
from trunkproxy.registrations.receiver import EventReceiver, ReceiverError

KEY = RegistrationKey("iflo", "sip:4930123@tel.example.test", "tel.example.test", "udp:127.0.0.1:5062")
EVENT = RegisterRequest(KEY, 1764300000.0, "c1", 1, 3600)


async def _until(predicate, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_events_arrive_and_malformed_ones_are_counted(short_dir, send, caplog):
    got = []
    receiver = EventReceiver(short_dir / "ev.sock", got.append)
    await receiver.start()
    try:
        assert stat.S_IMODE(os.stat(short_dir / "ev.sock").st_mode) == 0o660
        send(short_dir / "ev.sock", b"{broken")
        send(short_dir / "ev.sock", encode_event(EVENT))
        send(short_dir / "ev.sock", b'{"event":"register_request"}')
        send(short_dir / "ev.sock", encode_event(EVENT))
        with caplog.at_level(logging.WARNING, logger="trunkproxy.registrations"):
            await _until(lambda: receiver.received + receiver.malformed == 4)
        assert got == [EVENT, EVENT]
        assert (receiver.received, receiver.malformed) == (2, 2)
    finally:
        await receiver.stop()
    assert not (short_dir / "ev.sock").exists()


async def test_a_batch_datagram_carries_events_one_per_line(short_dir, send):
    got = []
    receiver = EventReceiver(short_dir / "ev.sock", got.append)
    await receiver.start()
    try:
        later = RegisterRequest(KEY, 1764300001.0, "c1", 2, 3600)
        send(short_dir / "ev.sock", encode_event(EVENT) + b"\n{broken\n\n" + encode_event(later))
        await _until(lambda: receiver.received + receiver.malformed == 3)
        assert got == [EVENT, later]  # in order; the bad line costs only itself
        assert receiver.malformed == 1
    finally:
        await receiver.stop()


async def test_queued_values_from_kamailio_are_completed_into_events(short_dir, send):
    """Route TICK sends the event queue's values as they are (fields, restored Contact, CSeq and
    Call-ID) after a line with the batch's time; a batch without one takes the time it arrived."""
    got = []
    receiver = EventReceiver(short_dir / "ev.sock", got.append, clock=lambda: 1764300009.0)
    await receiver.start()
    try:
        fields = encode_event(EVENT).decode()[1:-1]
        fields = ",".join(f for f in fields.split(",") if not f.startswith(('"ts"', '"call_id"', '"cseq"')))
        send(short_dir / "ev.sock", f"@1764300002.5\n{fields}|<sip:p@h>|7 c9@pbx\n{fields}||x c9\n\xff||1 c\n".encode("latin-1"))
        await _until(lambda: receiver.received + receiver.malformed == 3)
        assert got == [RegisterRequest(KEY, 1764300002.5, "c9@pbx", 7, 3600)]
        assert receiver.malformed == 2  # a CSeq that is not a number; not UTF-8
        send(short_dir / "ev.sock", f"{fields}||8 c9@pbx".encode())
        await _until(lambda: len(got) == 2)
        assert got[1].cseq == 8 and got[1].ts == 1764300009.0
    finally:
        await receiver.stop()


async def test_a_failing_handler_does_not_stop_the_socket(short_dir, send):
    calls = []

    def handler(event):
        calls.append(event)
        if len(calls) == 1:
            raise RuntimeError("bug")

    receiver = EventReceiver(short_dir / "ev.sock", handler)
    await receiver.start()
    try:
        send(short_dir / "ev.sock", encode_event(EVENT))
        send(short_dir / "ev.sock", encode_event(EVENT))
        await _until(lambda: len(calls) == 2)
        assert receiver.errors == 1
    finally:
        await receiver.stop()


async def test_stale_socket_file_is_replaced(short_dir, send):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(short_dir / "ev.sock"))
    stale.close()  # the file stays behind, nobody receives on it
    got = []
    receiver = EventReceiver(short_dir / "ev.sock", got.append)
    await receiver.start()
    try:
        send(short_dir / "ev.sock", encode_event(EVENT))
        await _until(lambda: got)
    finally:
        await receiver.stop()


async def test_live_socket_is_not_stolen(short_dir):
    first = EventReceiver(short_dir / "ev.sock", lambda e: None)
    await first.start()
    try:
        with pytest.raises(ReceiverError, match="already running"):
            await EventReceiver(short_dir / "ev.sock", lambda e: None).start()
    finally:
        await first.stop()


async def test_regular_file_is_not_removed(short_dir):
    (short_dir / "ev.sock").write_text("keep me")
    with pytest.raises(ReceiverError, match="not a socket"):
        await EventReceiver(short_dir / "ev.sock", lambda e: None).start()
    assert (short_dir / "ev.sock").read_text() == "keep me"


async def test_too_long_path_is_a_clear_error(short_dir):
    with pytest.raises(ReceiverError, match="longer than"):
        await EventReceiver(short_dir / ("x" * 120), lambda e: None).start()
