"""Hand-crafted SIP over UDP for tests that need exact bytes (attacks, malformed input)."""
from __future__ import annotations

import itertools
import socket
import time

from .sipmsg import SipMessage

_seq = itertools.count(1)


class UdpPeer:
    """A UDP socket on 127.0.0.x that sends raw SIP and collects whatever comes back."""

    def __init__(self, ip: str = "127.0.0.1", port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, port))
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
