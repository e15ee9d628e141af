"""A hand-driven SIP user agent over UDP for dialog tests that need every state in reach (offers
and answers in any message, re-INVITEs, UPDATE, PRACK, CANCEL), and an RTP peer that counts
what reaches it and from where."""
from __future__ import annotations

import itertools
import re
import socket
import struct
import time
from dataclasses import dataclass, field

from .rawsip import UdpPeer
from .sipmsg import SipMessage

_seq = itertools.count(1)


def _hostport_of(uri: str) -> tuple[str, int]:
    m = re.search(r"sip:(?:[^@;>]*@)?([^;>:]+)(?::(\d+))?", uri)
    assert m, uri
    return m.group(1), int(m.group(2) or 5060)


def _uri(value: str) -> str:
    m = re.search(r"<([^>]*)>", value)
    return m.group(1) if m else value.split(";", 1)[0].strip()


def sdp(ip: str, port: int, *, direction: str = "sendrecv", version: int = 1, profile: str = "RTP/AVP",
        extra: str = "") -> str:
    lines = ["v=0", f"o=- 4242 {version} IN IP4 {ip}", "s=-", f"c=IN IP4 {ip}", "t=0 0",
             f"m=audio {port} {profile} 8 0 101", "a=rtpmap:8 PCMA/8000", "a=rtpmap:0 PCMU/8000",
             "a=rtpmap:101 telephone-event/8000", "a=ptime:20", f"a={direction}"]
    lines += [line for line in extra.strip().split("\n") if line]
    return "\r\n".join(lines) + "\r\n"


def sdp_address(body: str) -> tuple[str, int]:
    """The audio stream's connection address and port of an SDP body."""
    conn = re.findall(r"^c=IN IP[46] (\S+)", body, re.M)
    media = re.search(r"^m=audio (\d+)", body, re.M)
    assert conn and media, body
    return conn[-1], int(media.group(1))


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    local_uri: str
    remote_uri: str
    remote_tag: str | None = None
    remote_target: str | None = None
    route_set: list[str] = field(default_factory=list)
    cseq: int = 1
    invite_branch: str = ""


class SipUa:
    """One party (a PBX or a provider) on 127.0.0.x. `outbound`: where its out-of-dialog
    requests go (the endpoint, for a PBX)."""

    def __init__(self, ip: str, name: str, outbound: str | None = None, sock: socket.socket | None = None):
        self.peer = UdpPeer(ip, sock=sock)
        self.name = name
        self.outbound = outbound
        self.inbox: list[SipMessage] = []
        self._invite_ruri: dict[str, str] = {}
        # replies to where the request came from, not to its Via (as a NAT in front of the
        # sender would carry them back to it)
        self.reply_to_source = False

    @property
    def hostport(self) -> str:
        return self.peer.hostport

    @property
    def contact(self) -> str:
        return f"<sip:{self.name}@{self.hostport}>"

    def close(self) -> None:
        self.peer.close()

    # --- receiving

    def expect(self, want, timeout: float = 3.0) -> SipMessage:
        """The first message (kept or new) for which want(msg) holds; others stay in the inbox."""
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.inbox:
                if want(msg):
                    self.inbox.remove(msg)
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: nothing matching within {timeout}s; inbox: "
                                     f"{[m.start_line for m in self.inbox]}")
            self.inbox.extend(self.peer.receive(min(left, 0.2), until_final=False))

    def expect_request(self, method: str, timeout: float = 3.0) -> SipMessage:
        return self.expect(lambda m: m.is_request and m.method == method, timeout)

    def expect_status(self, method: str, status: int | None = None, timeout: float = 3.0,
                      final: bool = False, dialog: Dialog | None = None) -> SipMessage:
        """A reply (to `dialog`'s requests only, when given); a negative final reply to an
        INVITE is acknowledged (hop by hop, RFC 3261 17.1.1.3)."""
        msg = self.expect(lambda m: not m.is_request and m.method == method
                          and (status is None or m.status == status) and (not final or m.status >= 200)
                          and (dialog is None or m.header("Call-ID") == dialog.call_id), timeout)
        if method == "INVITE" and msg.status >= 300:
            self._ack_negative(msg)
        return msg

    def _ack_negative(self, reply: SipMessage) -> None:
        via = reply.header("Via")
        branch = re.search(r"branch=([^;\s]+)", via).group(1)
        lines = [f"ACK {self._invite_ruri.get(reply.header('Call-ID'), 'sip:x@invalid')} SIP/2.0",
                 f"Via: SIP/2.0/UDP {self.hostport};branch={branch};rport", "Max-Forwards: 70",
                 f"From: {reply.header('From')}", f"To: {reply.header('To')}", f"Call-ID: {reply.header('Call-ID')}",
                 f"CSeq: {reply.header('CSeq').split()[0]} ACK", "Content-Length: 0"]
        target = _hostport_of("sip:" + self.outbound) if self.outbound else reply.src[:2]
        self.peer.sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), target)

    # --- sending

    def _send_request(self, dialog: Dialog, method: str, ruri: str, *, body: str = "", to_tag: str | None,
                      extra: str = "", cseq: int | None = None, branch: str | None = None) -> str:
        branch = branch or f"z9hG4bK-{self.name}-{next(_seq)}-{time.monotonic_ns()}"
        to = f"<{dialog.remote_uri}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [f"{method} {ruri} SIP/2.0", f"Via: SIP/2.0/UDP {self.hostport};branch={branch};rport",
                 "Max-Forwards: 70", f"From: <{dialog.local_uri}>;tag={dialog.local_tag}", f"To: {to}",
                 f"Call-ID: {dialog.call_id}", f"CSeq: {cseq or dialog.cseq} {method}", f"Contact: {self.contact}"]
        lines += [f"Route: {r}" for r in dialog.route_set]
        lines += [line for line in extra.strip().split("\n") if line]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        if dialog.route_set and ";lr" in dialog.route_set[0]:
            target = _hostport_of(_uri(dialog.route_set[0]))
        elif self.outbound and not to_tag:
            target = _hostport_of("sip:" + self.outbound)
        else:
            target = _hostport_of(ruri)
        self.peer.sock.sendto(("\r\n".join(lines) + "\r\n\r\n" + body).encode(), target)
        return branch

    def send_register(self, registrar: str, user: str = "4930111", expires: int = 300) -> str:
        """A REGISTER for `user@registrar` to the outbound proxy; returns its Call-ID."""
        n = next(_seq)
        call_id = f"reg-{n}-{time.monotonic_ns()}@{self.peer.ip}"
        lines = [f"REGISTER sip:{registrar} SIP/2.0",
                 f"Via: SIP/2.0/UDP {self.hostport};branch=z9hG4bK-reg-{n}-{time.monotonic_ns()};rport",
                 "Max-Forwards: 70", f"From: <sip:{user}@{registrar}>;tag=reg{n}", f"To: <sip:{user}@{registrar}>",
                 f"Call-ID: {call_id}", "CSeq: 1 REGISTER", f"Contact: <sip:{user}@{self.hostport}>",
                 f"Expires: {expires}", "Content-Length: 0"]
        self.peer.sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), _hostport_of("sip:" + self.outbound))
        return call_id

    def invite(self, ruri: str, body: str = "", extra: str = "") -> Dialog:
        n = next(_seq)
        dialog = Dialog(call_id=f"media-{n}-{time.monotonic_ns()}@{self.peer.ip}", local_tag=f"{self.name}{n}",
                        local_uri=f"sip:{self.name}@{self.peer.ip}", remote_uri=ruri, remote_target=ruri)
        dialog.invite_branch = self._send_request(dialog, "INVITE", ruri, body=body, to_tag=None, extra=extra)
        self._invite_ruri[dialog.call_id] = ruri
        return dialog

    def cancel(self, dialog: Dialog) -> None:
        self._send_request(dialog, "CANCEL", dialog.remote_target, to_tag=None, branch=dialog.invite_branch)

    def confirm(self, dialog: Dialog, reply: SipMessage) -> None:
        """Learn the dialog from a 18x/2xx to our INVITE (route set reversed, remote target)."""
        dialog.remote_tag = re.search(r"tag=([^;>\s]+)", reply.header("To")).group(1)
        dialog.route_set = list(reversed(reply.headers("Record-Route")))
        dialog.remote_target = _uri(reply.header("Contact"))

    def ack(self, dialog: Dialog, body: str = "") -> None:
        self._send_request(dialog, "ACK", dialog.remote_target, body=body, to_tag=dialog.remote_tag)

    def request(self, dialog: Dialog, method: str, body: str = "", extra: str = "") -> None:
        dialog.cseq += 1
        self._send_request(dialog, method, dialog.remote_target, body=body, to_tag=dialog.remote_tag, extra=extra)

    def accept(self, invite: SipMessage) -> Dialog:
        """The dialog of an INVITE received (its route set as received)."""
        n = next(_seq)
        return Dialog(call_id=invite.header("Call-ID"), local_tag=f"{self.name}{n}",
                      local_uri=_uri(invite.header("To")), remote_uri=_uri(invite.header("From")),
                      remote_tag=re.search(r"tag=([^;>\s]+)", invite.header("From")).group(1),
                      remote_target=_uri(invite.header("Contact")), route_set=invite.headers("Record-Route"),
                      cseq=100)

    def reply(self, request: SipMessage, code: int, reason: str, *, dialog: Dialog | None = None, body: str = "",
              extra: str = "") -> None:
        to = request.header("To")
        if dialog is not None and "tag=" not in to and code > 100:
            to += f";tag={dialog.local_tag}"
        lines = [f"SIP/2.0 {code} {reason}"]
        lines += [f"Via: {v}" for v in request.headers("Via")]
        lines += [f"Record-Route: {r}" for r in request.headers("Record-Route")]
        lines += [f"From: {request.header('From')}", f"To: {to}", f"Call-ID: {request.header('Call-ID')}",
                  f"CSeq: {request.header('CSeq')}"]
        if dialog is not None and code < 300:
            lines.append(f"Contact: {self.contact}")
        lines += [line for line in extra.strip().split("\n") if line]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        via = request.header("Via")
        host, port = re.search(r"SIP/2.0/UDP ([^;:\s]+):?(\d*)", via).groups()
        rport = re.search(r";rport=(\d+)", via)
        received = re.search(r";received=([^;\s]+)", via)
        target = (received.group(1) if received else host, int(rport.group(1) if rport else port or 5060))
        if self.reply_to_source and request.src:
            target = request.src[:2]
        self.peer.sock.sendto(("\r\n".join(lines) + "\r\n\r\n" + body).encode(), target)


class RtpPeer:
    """A media socket: sends RTP (PCMA, 20 ms frames) to an address and counts what arrives,
    by source."""

    def __init__(self, ip: str, pair: tuple[socket.socket, socket.socket] | None = None):
        """`pair`: RTP and RTCP sockets already bound (ports N and N+1)."""
        self.sock, self.rtcp = pair or self._bind_pair(ip)
        self.ip, self.port = self.sock.getsockname()
        self.ssrc = next(_seq) + 0x1000
        self.seq = 0

    @staticmethod
    def _bind_pair(ip: str) -> tuple[socket.socket, socket.socket]:
        """An even RTP port and the RTCP port above it (RFC 3550)."""
        for _ in range(100):
            rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rtp.bind((ip, 0))
            port = rtp.getsockname()[1]
            if port % 2 == 0:
                rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    rtcp.bind((ip, port + 1))
                    return rtp, rtcp
                except OSError:
                    rtcp.close()
            rtp.close()
        raise RuntimeError(f"no RTP/RTCP port pair free on {ip}")

    def close(self) -> None:
        self.sock.close()
        self.rtcp.close()

    def send(self, to: tuple[str, int], count: int, interval: float = 0.002) -> None:
        for _ in range(count):
            self.seq += 1
            header = struct.pack("!BBHII", 0x80, 8, self.seq & 0xFFFF, self.seq * 160, self.ssrc)
            self.sock.sendto(header + b"\xd5" * 160, to)
            time.sleep(interval)

    def send_rtcp(self, to: tuple[str, int]) -> None:
        # an empty receiver report: V=2, RC=0, PT=201, length 1
        self.rtcp.sendto(struct.pack("!BBHI", 0x80, 201, 1, self.ssrc), to)

    def received(self, timeout: float = 1.0, sock: socket.socket | None = None) -> list[tuple[str, int]]:
        """Sources of the packets that arrive until `timeout` passes with none."""
        sock = sock or self.sock
        sources = []
        sock.settimeout(timeout)
        while True:
            try:
                _data, src = sock.recvfrom(2048)
            except socket.timeout:
                return sources
            sources.append(src)
