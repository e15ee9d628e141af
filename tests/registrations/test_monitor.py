"""The monitor end to end inside the control plane: socket -> state -> log line -> SQLite -> restart."""
from __future__ import annotations

import asyncio
import logging
import time

from trunkproxy.registrations.events import RegisterReply, RegisterRequest, RegistrationKey, encode_event
from trunkproxy.registrations.monitor import RegistrationMonitor, format_change
from trunkproxy.registrations.state import Input, State, StateChange
from trunkproxy.registrations.store import RegistrationStore

KEY = RegistrationKey("iflo", "sip:4930123@tel.example.test", "tel.example.test", "udp:127.0.0.1:5062")


def request(cseq: int, expires: int | None = 3600, key=KEY) -> bytes:
    return encode_event(RegisterRequest(key, time.time(), "c1", cseq, expires))


def reply(cseq: int, code: int, reason: str, expires: int | None = None, key=KEY) -> bytes:
    return encode_event(RegisterReply(key, time.time(), "c1", cseq, code, reason, expires))


async def _until(predicate, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _state(monitor: RegistrationMonitor, key=KEY):
    reg = monitor.book.get(key)
    return reg.state if reg else None


async def test_register_expire_and_restart(short_dir, send, caplog):
    caplog.set_level(logging.INFO, logger="trunkproxy.registrations")
    monitor = RegistrationMonitor(short_dir, attribute_trunk=lambda aor, registrar: "telekom")
    await monitor.start()
    try:
        sock = monitor.socket_path
        assert sock == short_dir / "registrations.sock"
        for datagram in (request(1), reply(1, 401, "Unauthorized"), request(2), reply(2, 200, "OK", expires=1)):
            send(sock, datagram)
        await _until(lambda: _state(monitor) is State.REGISTERED)
        assert monitor.book.get(KEY).trunk == "telekom"
        # Nobody refreshes: the monitor's own timer turns it `expired` when the second is up.
        await _until(lambda: _state(monitor) is State.EXPIRED, timeout=3)
    finally:
        await monitor.stop()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("registration ")]
    assert lines == [
        "registration endpoint=iflo trunk=telekom aor=sip:4930123@tel.example.test registrar=tel.example.test "
        f"flow=udp:127.0.0.1:5062 old={old} new={new} code={code} reason={reason}"
        for old, new, code, reason in [
            ("-", "registering", "-", '"REGISTER relayed"'), ("registering", "challenged", 401, "Unauthorized"),
            ("challenged", "registered", 200, "OK"), ("registered", "expired", "-", '"not refreshed before expiry"')]
    ]
    # The state is on disk, and a new `trunkproxy run` picks it up.
    again = RegistrationMonitor(short_dir)
    await again.start()
    try:
        reg = again.book.get(KEY)
        assert (reg.state, reg.trunk, reg.last_code) == (State.EXPIRED, "telekom", 200)
    finally:
        await again.stop()


async def test_registered_state_survives_restart(short_dir, send):
    monitor = RegistrationMonitor(short_dir)
    await monitor.start()
    try:
        send(monitor.socket_path, request(1))
        send(monitor.socket_path, reply(1, 200, "OK", expires=600))
        await _until(lambda: _state(monitor) is State.REGISTERED)
    finally:
        await monitor.stop()
    again = RegistrationMonitor(short_dir)
    await again.start()
    try:
        reg = again.book.get(KEY)
        assert reg.state is State.REGISTERED and 590 < reg.seconds_until_expiry(time.time()) <= 600
    finally:
        await again.stop()


async def test_two_instances_are_kept_apart_over_the_socket(short_dir, send):
    other = KEY._replace(flow="udp:127.0.0.1:5064")
    monitor = RegistrationMonitor(short_dir)
    await monitor.start()
    try:
        send(monitor.socket_path, request(1))
        send(monitor.socket_path, reply(1, 200, "OK", expires=600))
        send(monitor.socket_path, request(1, key=other))
        send(monitor.socket_path, reply(1, 403, "Forbidden", key=other))
        await _until(lambda: _state(monitor, other) is State.FAILED and _state(monitor) is State.REGISTERED)
        assert [r["flow"] for r in monitor.snapshot(state=State.FAILED)] == ["udp:127.0.0.1:5064"]
    finally:
        await monitor.stop()


async def test_a_failing_trunk_lookup_does_not_lose_the_event(short_dir, send):
    def lookup(aor, registrar):
        raise KeyError(aor)

    monitor = RegistrationMonitor(short_dir, attribute_trunk=lookup)
    await monitor.start()
    try:
        send(monitor.socket_path, request(1))
        await _until(lambda: _state(monitor) is State.REGISTERING)
        assert monitor.book.get(KEY).trunk is None
    finally:
        await monitor.stop()


async def test_persisted_file_is_readable_while_running(short_dir, send):
    monitor = RegistrationMonitor(short_dir)
    await monitor.start()
    try:
        send(monitor.socket_path, request(1))
        await _until(lambda: _state(monitor) is State.REGISTERING)

        def persisted() -> list[State]:
            with RegistrationStore(monitor.database_path, readonly=True) as store:
                return [r.state for r in store.load()]

        await _until(lambda: persisted() == [State.REGISTERING])
    finally:
        await monitor.stop()


def test_format_change_quotes_values_with_spaces():
    change = StateChange(KEY, None, State.REGISTERING, State.FAILED, Input.REJECTED, 403, 'No "way"', 0.0)
    assert format_change(change) == (
        "registration endpoint=iflo trunk=- aor=sip:4930123@tel.example.test registrar=tel.example.test "
        'flow=udp:127.0.0.1:5062 old=registering new=failed code=403 reason="No \\"way\\""')


async def test_refresh_without_state_change_is_written_behind(short_dir, send, monkeypatch):
    from trunkproxy.registrations import monitor as monitor_module

    monkeypatch.setattr(monitor_module, "FLUSH_DELAY", 0.3)
    monitor = RegistrationMonitor(short_dir)
    await monitor.start()

    def persisted_expiry() -> int | None:
        with RegistrationStore(monitor.database_path, readonly=True) as store:
            return next(iter(store.load())).granted_expires

    try:
        send(monitor.socket_path, request(1))
        send(monitor.socket_path, reply(1, 200, "OK", 600))
        await _until(lambda: _state(monitor) is State.REGISTERED)
        assert persisted_expiry() == 600  # a state change: on disk at once
        send(monitor.socket_path, request(2))
        send(monitor.socket_path, reply(2, 200, "OK", 900))  # a refresh: still registered
        await _until(lambda: monitor.book.get(KEY).granted_expires == 900)
        assert persisted_expiry() == 600  # not yet: written behind
        await _until(lambda: persisted_expiry() == 900)
    finally:
        await monitor.stop()
