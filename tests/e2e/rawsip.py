"""Hand-crafted SIP over UDP for tests that need exact bytes (attacks, malformed input)."""
from __future__ import annotations

import itertools
import socket
import time

from .sipmsg import SipMessage

_seq = itertools.count(1)


class UdpPeer:
    """A UDP socket on 127.0.0.x that sends raw SIP and collects whatever comes back."""

    def __init__(self, ip: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None):
        """`sock`: one already bound (e.g. in a network namespace, netns.udp_sockets_in)."""
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((ip, port))
        self.sock = sock
        self.ip, self.port = self.sock.getsockname()

    @property
    def hostport(self) -> str:
        return f"{self.ip}:{self.port}"

    def send(self, text: str, to: str) -> None:
        host, port = to.rsplit(":", 1)
        self.sock.sendto(text.replace("\n", "\r\n").encode() if "\r\n" not in text else text.encode(),
                         (host, int(port)))

    def send_bytes(self, data: bytes, to: str) -> None:
        host, port = to.rsplit(":", 1)
        self.sock.sendto(data, (host, int(port)))

    def receive(self, timeout: float = 1.0, until_final: bool = True) -> list[SipMessage]:
        """Messages received within `timeout` (stops early after a final response)."""
        out: list[SipMessage] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, src = self.sock.recvfrom(65535)
            except socket.timeout:
                break
            msg = SipMessage.parse(data.decode(errors="replace"), (src[0], src[1], "udp"))
            out.append(msg)
            if until_final and msg.status is not None and msg.status >= 200:
                break
        return out

    def close(self) -> None:
        self.sock.close()


def request(method: str, ruri: str, peer: UdpPeer, *, extra: str = "", to_tag: str | None = None,
            body: str = "", cseq: int = 1, call_id: str | None = None) -> str:
    n = next(_seq)
    to = f"<{ruri}>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {peer.hostport};branch=z9hG4bK-raw-{n}-{time.monotonic_ns()};rport",
        "Max-Forwards: 70",
        f"From: <sip:attacker@{peer.ip}>;tag=raw{n}",
        f"To: {to}",
        f"Call-ID: {call_id or f'raw-{n}-{time.monotonic_ns()}'}@{peer.ip}",
        f"CSeq: {cseq} {method}",
    ]
    lines += [line for line in extra.strip("\n").split("\n") if line]
    lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


def take_stream_message(buffer: bytes) -> tuple[bytes | None, bytes]:
    """(one whole SIP message, the rest) from the start of a TCP stream buffer; (None, buffer)
    while the message is incomplete. CRLF keepalives (RFC 5626 pings/pongs) are skipped."""
    data = buffer.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None, data
    length = 0
    for line in data[:end].split(b"\r\n")[1:]:
        name, _sep, value = line.partition(b":")
        if name.strip().lower() in (b"content-length", b"l"):
            length = int(value.strip() or b"0")
    total = end + 4 + length
    if len(data) < total:
        return None, data
    return data[:total], data[total:]


class TcpPeer:
    """A TCP connection from 127.0.0.x to a SIP server (an endpoint's internal side): sends raw
    SIP and collects what comes back on that connection. Build requests with `request()` and
    `via_tcp()` (the Via must say TCP)."""

    transport = "tcp"

    def __init__(self, to: str, ip: str = "127.0.0.1", port: int = 0, timeout: float = 3.0):
        host, dport = to.rsplit(":", 1)
        self.remote = to
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.settimeout(timeout)
        self.sock.connect((host, int(dport)))
        self.ip, self.port = self.sock.getsockname()
        self._buf = b""
        self.closed_by_peer = False

    @property
    def hostport(self) -> str:
        return f"{self.ip}:{self.port}"

    def send(self, text: str, to: str | None = None) -> None:
        """Send on the connection (`to`, if given, must be the address it is connected to)."""
        if to is not None and to != self.remote:
            raise ValueError(f"this TCP peer is connected to {self.remote}, not {to}")
        self.sock.sendall(text.replace("\n", "\r\n").encode() if "\r\n" not in text else text.encode())

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self, timeout: float = 1.0, until_final: bool = True) -> list[SipMessage]:
        """Messages received within `timeout` (stops early after a final response)."""
        out: list[SipMessage] = []
        deadline = time.monotonic() + timeout
        src = (*self.sock.getpeername(), "tcp")
        while True:
            data, self._buf = take_stream_message(self._buf)
            if data is not None:
                msg = SipMessage.parse(data.decode(errors="replace"), src)
                out.append(msg)
                if until_final and msg.status is not None and msg.status >= 200:
                    break
                continue
            left = deadline - time.monotonic()
            if left <= 0 or self.closed_by_peer:
                break
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65535)
            except socket.timeout:
                break
            if not chunk:
                self.closed_by_peer = True
                break
            self._buf += chunk
        return out

    def close(self) -> None:
        self.sock.close()


def via_tcp(text: str) -> str:
    """A `request()` made for a TcpPeer: its top Via says TCP."""
    return text.replace("Via: SIP/2.0/UDP ", "Via: SIP/2.0/TCP ", 1)
