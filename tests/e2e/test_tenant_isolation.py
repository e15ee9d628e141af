"""Tenant isolation: on a shared host, a PBX instance reaches its providers through the endpoint,
and nothing else: not another tenant, not another address of the instance networks, not a
service on the host (docs/routing.md, "Tenant isolation").

Layout, loopback only:

    endpoint   internal 127.0.0.1:free, external 127.0.0.1:free; instance_networks 127.0.1.0/24
    tenant A   127.0.1.1: raw UDP peer and raw TCP connections (the attacker)
    tenant B   127.0.1.2:5060 UDP+TCP (a free port when 5060 is taken)        victim
    instance   127.0.1.50:free UDP+TCP, another address in the instance networks   victim
    host       127.0.0.1:free (a host address), 127.0.0.5:free (loopback)      victims
    provider   127.0.2.1:free UDP+TCP: answers every request 200 (Record-Route echoed, Contact at
               itself), so that A sets up real dialogs and gets the endpoint's signed Record-Route

Two configurations (fixture `lab`): the provider pinned (`[providers."tel.example.test"] addresses`,
no allow-list; A writes `sip:x@tel.example.test`) and the provider allow-listed
(`allow_destinations = ["127.0.2.0/24"]`; A writes `sip:x@127.0.2.1:PORT`).

Every attack is sent 3 times, each a fresh transaction with otherwise the same text: the endpoint
memoises decisions and replays them natively, and a replay must refuse as strictly as Python.
What counts is what the victims' sockets received (nothing, after a final drain) and what A
got back (403; nothing for an ACK). Positive controls in every configuration (requests and a
dialog to the provider, over UDP and TCP) show that the road to the provider is open, so that a
refusal is a refusal and not a broken set-up.
"""
from __future__ import annotations

import base64
import itertools
import re
import selectors
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .endpoint import ProviderPin, TrunkproxyRun
from .procs import free_port, wait_until
from .rawsip import TcpPeer, UdpPeer, request, take_stream_message, via_tcp
from .sipmsg import COMPACT, SipMessage

pytestmark = pytest.mark.e2e

ENDPOINT = "iflo"
PROVIDER_HOST = "tel.example.test"
INSTANCE_NETWORKS = ["127.0.1.0/24"]
TENANT_A_IP = "127.0.1.1"
TENANT_B_IP = "127.0.1.2"
OTHER_INSTANCE_IP = "127.0.1.50"
STRANGER_IP = "127.0.1.3"  # a third instance address, used to replay A's signed route
HOST_IP = "127.0.0.1"  # an address of the host (the endpoint's own)
LOOPBACK_IP = "127.0.0.5"  # loopback, not bound by anything else
PROVIDER_IP = "127.0.2.1"

REPEATS = 3  # each attack: once decided by Python, then replayed (decision cache)
REPLY_WAIT_S = 2.0  # per request, for its final reply
ACK_WAIT_S = 0.3  # an ACK gets no reply; a late one is still caught by the final drain
DRAIN_S = 1.0  # once per test, before reading what the victims received

OUT_OF_DIALOG_METHODS = ("INVITE", "BYE", "MESSAGE", "NOTIFY", "OPTIONS", "SUBSCRIBE", "REGISTER")
IN_DIALOG_METHODS = ("INVITE", "BYE", "MESSAGE", "NOTIFY", "OPTIONS", "SUBSCRIBE", "REGISTER",
                     "INFO", "UPDATE", "REFER", "PRACK", "ACK")
TRANSPORTS = ("udp", "tcp")


# --------------------------------------------------------------------------- a SIP party

_tags = itertools.count(1)


def _canon(name: str) -> str:
    return COMPACT.get(name.lower(), name.lower())


class SipServer:
    """A SIP party on ip:port, UDP and TCP, served by a thread: records every message it gets and
    answers each request except ACK with 200 OK (Record-Route echoed, Contact at itself; a
    REGISTER's Contact echoed with Expires). Victims answer too: a relayed attack then shows as
    the victim's 200 at A, as it would from a real PBX."""

    def __init__(self, name: str, ip: str, port: int):
        self.name, self.ip = name, ip
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.udp.bind((ip, port))
            self.port = self.udp.getsockname()[1]
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.tcp.bind((ip, self.port))
            self.tcp.listen(16)
        except OSError:
            self.udp.close()
            self.tcp.close()
            raise
        self.tcp.setblocking(False)
        self.udp.setblocking(False)
        self.messages: list[SipMessage] = []
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.udp, selectors.EVENT_READ)
        self._sel.register(self.tcp, selectors.EVENT_READ)
        self._conns: dict[socket.socket, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sip-{name}", daemon=True)
        self._thread.start()

    @property
    def hostport(self) -> str:
        return f"{self.ip}:{self.port}"

    def uri(self, user: str | None = "100", transport: str = "udp") -> str:
        user_part = f"{user}@" if user else ""
        return f"sip:{user_part}{self.hostport}" + (";transport=tcp" if transport == "tcp" else "")

    # --- the thread

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _events in self._sel.select(0.1):
                sock = key.fileobj
                try:
                    if sock is self.udp:
                        self._on_datagram()
                    elif sock is self.tcp:
                        conn, _addr = self.tcp.accept()
                        conn.setblocking(False)
                        self._conns[conn] = b""
                        self._sel.register(conn, selectors.EVENT_READ)
                    else:
                        self._on_stream(sock)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    if sock in self._conns:
                        self._drop(sock)

    def _on_datagram(self) -> None:
        data, src = self.udp.recvfrom(65535)
        msg = SipMessage.parse(data.decode(errors="replace"), (src[0], src[1], "udp"))
        self._record(msg)
        answer = self._answer(msg, "udp")
        if answer:
            self.udp.sendto(answer, src)

    def _on_stream(self, conn: socket.socket) -> None:
        chunk = conn.recv(65535)
        if not chunk:
            self._drop(conn)
            return
        buf = self._conns[conn] + chunk
        src = (*conn.getpeername(), "tcp")
        while True:
            data, buf = take_stream_message(buf)
            if data is None:
                break
            msg = SipMessage.parse(data.decode(errors="replace"), src)
            self._record(msg)
            answer = self._answer(msg, "tcp")
            if answer:
                conn.setblocking(True)
                conn.settimeout(2.0)
                conn.sendall(answer)
                conn.setblocking(False)
        self._conns[conn] = buf

    def _drop(self, conn: socket.socket) -> None:
        self._conns.pop(conn, None)
        try:
            self._sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def _record(self, msg: SipMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def _answer(self, req: SipMessage, transport: str) -> bytes | None:
        if not req.is_request or req.method == "ACK":
            return None
        lines = ["SIP/2.0 200 OK"]
        lines += [f"Via: {v}" for n, v in req.raw_headers if _canon(n) == "via"]
        lines += [f"Record-Route: {v}" for n, v in req.raw_headers if _canon(n) == "record-route"]
        to = req.header("To") or ""
        if ";tag=" not in to:
            to += f";tag={self.name}-{next(_tags)}"
        lines += [f"From: {req.header('From')}", f"To: {to}", f"Call-ID: {req.header('Call-ID')}",
                  f"CSeq: {req.header('CSeq')}"]
        if req.method == "REGISTER":
            lines += [f"Contact: {c};expires=60" for c in req.headers("Contact") if c.strip() != "*"]
        elif req.method not in ("BYE", "CANCEL"):
            lines.append(f"Contact: <{self.uri(self.name, transport)}>")
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    # --- what the tests read

    def requests(self, method: str | None = None, call_id: str | None = None) -> list[SipMessage]:
        with self._lock:
            msgs = list(self.messages)
        return [m for m in msgs if m.is_request and (method is None or m.method == method)
                and (call_id is None or m.header("Call-ID") == call_id)]

    def wait_for(self, method: str, call_id: str, timeout: float = REPLY_WAIT_S) -> list[SipMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.requests(method, call_id)
            if found:
                return found
            time.sleep(0.02)
        return []

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        for conn in list(self._conns):
            self._drop(conn)
        self._sel.close()
        self.udp.close()
        self.tcp.close()


def _server(name: str, ip: str, port: int | None = None) -> SipServer:
    """A SipServer on `port` (5060 for tenant B) or, when that is taken or not given, a free port."""
    if port is not None:
        try:
            return SipServer(name, ip, port)
        except OSError:
            pass
    return SipServer(name, ip, free_port(ip))


# --------------------------------------------------------------------------- a tenant

class Tenant:
    """A PBX instance as an attacker: raw requests to the endpoint's internal side over one UDP
    socket or one TCP connection; every message that comes back is kept in `inbox`."""

    def __init__(self, endpoint: TrunkproxyRun, ip: str, transport: str):
        self.endpoint, self.transport = endpoint, transport
        self.peer = UdpPeer(ip) if transport == "udp" else TcpPeer(endpoint.internal_hostport, ip)
        self.inbox: list[SipMessage] = []
        self.silent_call_ids: list[tuple[str, str]] = []  # (what, Call-ID) of requests that get no reply

    @property
    def tp(self) -> str:
        """URI suffix naming this tenant's transport."""
        return ";transport=tcp" if self.transport == "tcp" else ""

    def send(self, method: str, ruri: str, *, to_tag: str | None = None, route: list[str] | None = None,
             call_id: str | None = None, cseq: int = 1) -> str:
        """Send a request; return its Call-ID as written."""
        extra = []
        if route:
            extra.append("Route: " + ", ".join(route))
        if method in ("INVITE", "SUBSCRIBE", "NOTIFY", "REGISTER", "UPDATE", "REFER"):
            extra.append(f"Contact: <sip:4930111@{self.peer.hostport}{self.tp}>")
        if method in ("SUBSCRIBE", "NOTIFY"):
            extra.append("Event: presence")
        if method == "NOTIFY":
            extra.append("Subscription-State: active;expires=60")
        if method in ("SUBSCRIBE", "REGISTER"):
            extra.append("Expires: 60")
        if method == "REFER":
            extra.append(f"Refer-To: <sip:4989123@{PROVIDER_HOST}>")
        if method == "PRACK":
            extra.append("RAck: 1 1 INVITE")
        body = ""
        if method == "MESSAGE":
            extra.append("Content-Type: text/plain")
            body = "hello"
        text = request(method, ruri, self.peer, extra="\n".join(extra), to_tag=to_tag, body=body,
                       cseq=cseq, call_id=call_id)
        if self.transport == "tcp":
            text = via_tcp(text)
        self.peer.send(text, self.endpoint.internal_hostport)
        return SipMessage.parse(text).header("Call-ID")

    def _fetch(self, timeout: float) -> None:
        self.inbox.extend(self.peer.receive(timeout, until_final=True))

    def final(self, call_id: str, timeout: float = REPLY_WAIT_S) -> int | None:
        """The final status of the request with this Call-ID (the first one; None: no answer)."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.inbox:
                if m.status is not None and m.status >= 200 and m.header("Call-ID") == call_id:
                    return m.status
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._fetch(left)

    def reply(self, call_id: str, status: int) -> SipMessage | None:
        return next((m for m in self.inbox if m.status == status and m.header("Call-ID") == call_id), None)

    def attempt(self, what: str, method: str, ruri: str, **kw) -> tuple[str, str, int | None]:
        """One attack; (description, method, final status). An ACK's silence is checked by
        `answered_silent()`."""
        call_id = self.send(method, ruri, **kw)
        if method == "ACK":
            self.silent_call_ids.append((what, call_id))
            self._fetch(ACK_WAIT_S)
            return what, method, None
        return what, method, self.final(call_id)

    def answered_silent(self) -> list[str]:
        """The requests that should have got no reply (ACKs) but did."""
        self._fetch(0.2)
        return [f"{what}: got {m.start_line}" for what, cid in self.silent_call_ids
                for m in self.inbox if m.header("Call-ID") == cid]

    def close(self) -> None:
        self.peer.close()


# --------------------------------------------------------------------------- the lab

@dataclass
class Lab:
    config: str  # "pinned" | "allowlisted" | ...
    endpoint: TrunkproxyRun
    provider: SipServer
    provider_other_port: SipServer  # the provider's IP, another port: not pinned
    victims: dict[str, SipServer]
    tenants: list[Tenant] = field(default_factory=list)

    def tenant(self, transport: str, ip: str = TENANT_A_IP) -> Tenant:
        t = Tenant(self.endpoint, ip, transport)
        self.tenants.append(t)
        return t

    def provider_uri(self, user: str | None = "4989123") -> str:
        """What tenant A writes to reach its provider: the pinned name, or the allow-listed address."""
        host = PROVIDER_HOST if self.config == "pinned" else self.provider.hostport
        return f"sip:{user}@{host}" if user else f"sip:{host}"

    @property
    def internal(self) -> str:
        return self.endpoint.internal_hostport

    @property
    def external(self) -> str:
        return self.endpoint.external_hostport

    def leaks(self, names: list[str] | None = None, drain: float = DRAIN_S) -> list[str]:
        """What reached the victims (after one drain): one line per message."""
        time.sleep(drain)
        out = []
        for name, victim in self.victims.items():
            if names is not None and name not in names:
                continue
            out += [f"{name} ({victim.hostport}) received {m.start_line!r} via {m.src}" for m in victim.messages]
        return out


def _provider_endpoint_kwargs(config: str, provider: SipServer) -> dict:
    if config == "pinned":
        return dict(providers=[ProviderPin(PROVIDER_HOST, [provider.hostport])], allow_destinations=None)
    if config == "allowlisted":
        return dict(providers=[], allow_destinations=["127.0.2.0/24"])
    if config == "broad_allowlist":
        # the whole of loopback allowed: the instance networks (/24) and the host's own
        # addresses (/32) are more specific and stay refused; loopback (/8) ties and is allowed
        return dict(providers=[], allow_destinations=["127.0.0.0/8"])
    raise ValueError(config)


@pytest.fixture
def make_lab(make_endpoint):
    """Factory: make_lab(config, **TrunkproxyRun kwargs) -> Lab; stops everything it started."""
    servers: list[SipServer] = []
    labs: list[Lab] = []

    def make(config: str, **endpoint_kw) -> Lab:
        def server(name, ip, port=None):
            s = _server(name, ip, port)
            servers.append(s)
            return s

        provider = server("provider", PROVIDER_IP)
        provider_other = server("provider-other-port", PROVIDER_IP)
        victims = {
            "tenant_b": server("tenant-b", TENANT_B_IP, 5060),
            "other_instance": server("other-instance", OTHER_INSTANCE_IP),
            "host_service": server("host-service", HOST_IP),
            "loopback_service": server("loopback-service", LOOPBACK_IP),
        }
        if config == "pinned":
            victims["provider_other_port"] = provider_other
        endpoint = make_endpoint(instance_networks=INSTANCE_NETWORKS,
                                 **_provider_endpoint_kwargs(config, provider), **endpoint_kw)
        lab = Lab(config, endpoint, provider, provider_other, victims)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        for t in lab.tenants:
            t.close()
    for s in servers:
        s.close()


@pytest.fixture(params=["pinned", "allowlisted"])
def lab(request, make_lab) -> Lab:
    return make_lab(request.param)


@pytest.fixture
def pinned_lab(make_lab) -> Lab:
    return make_lab("pinned")


# --------------------------------------------------------------------------- helpers

def _ruri(method: str, hostport_and_params: str) -> str:
    """A Request-URI at `hostport_and_params`: no user part for REGISTER."""
    return f"sip:{hostport_and_params}" if method == "REGISTER" else f"sip:100@{hostport_and_params}"


def _rr(hostport: str, tp: str, extra: str = "") -> str:
    """A Route entry that looks like one of the endpoint's Record-Route entries."""
    return f"<sip:{hostport}{tp};r2=on;lr{extra}>"


def _forged_token(ip: str, port: int, transport: str = "udp") -> str:
    payload = f"{transport}|{ip}|{port}|sip:{ip}:{port}".encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + ".AAAAAAAAAAAAAAAA"


def _attack_all(tenant: Tenant, what: str, methods, ruri_for, *, repeats: int = REPEATS, **kw):
    """Send every method `repeats` times (fresh transactions); [(description, final status)]."""
    outcomes = []
    for method in methods:
        for i in range(repeats):
            ruri = ruri_for(method)
            outcomes.append(tenant.attempt(f"{what} {method} {ruri} #{i + 1}", method, ruri, **kw))
    return outcomes


def _assert_isolated(lab: Lab, tenants: list[Tenant], outcomes, *, allowed=frozenset({403}),
                     victims: list[str] | None = None) -> None:
    """Nothing reached the victims (checked first: that is the hole), then each attempt got an
    allowed final status (ACKs: no reply at all)."""
    leaks = lab.leaks(victims)
    assert not leaks, f"{len(leaks)} message(s) reached a victim:\n" + "\n".join(leaks)
    wrong = [f"{what}: got {status}" for what, method, status in outcomes
             if method != "ACK" and status not in allowed]
    for t in tenants:
        wrong += t.answered_silent()
    assert not wrong, f"{len(wrong)} attempt(s) not refused as {sorted(allowed)}:\n" + "\n".join(wrong)


@dataclass
class Dialog:
    tenant: Tenant
    call_id: str  # as written ("base@ip")
    base_call_id: str
    to_tag: str
    record_route: list[str]  # as the 200 brought it
    remote_target: str
    cseq: int = 1

    @property
    def route_set(self) -> list[str]:
        """The UAC's route set: the Record-Route reversed (RFC 3261 12.1.2)."""
        return list(reversed(self.record_route))

    def next_cseq(self) -> int:
        self.cseq += 1
        return self.cseq


_dialogs = itertools.count(1)


def _establish_dialog(lab: Lab, tenant: Tenant) -> Dialog:
    """A real call from tenant A to the provider through the endpoint: INVITE, 200, ACK."""
    base = f"dlg-{next(_dialogs)}-{time.monotonic_ns()}"
    call_id = tenant.send("INVITE", lab.provider_uri(), call_id=base)
    status = tenant.final(call_id)
    assert status == 200, f"the provider's call did not get through: {status}; provider got " \
                          f"{[m.start_line for m in lab.provider.requests()]}"
    ok = tenant.reply(call_id, 200)
    record_route = ok.headers("Record-Route")
    assert len(record_route) >= 2 and all("tpt=" in e for e in record_route), record_route
    to_tag = re.search(r";\s*tag=([^;>\s]+)", ok.header("To")).group(1)
    dialog = Dialog(tenant, call_id, base, to_tag, record_route, ok.uri_of("Contact"))
    tenant.send("ACK", dialog.remote_target, to_tag=to_tag, route=dialog.route_set, call_id=base, cseq=1)
    assert lab.provider.wait_for("ACK", call_id), "the ACK along the signed route did not reach the provider"
    return dialog


def _in_dialog(tenant: Tenant, dialog: Dialog, what: str, method: str, ruri: str, route: list[str] | None):
    cseq = 1 if method in ("ACK", "PRACK") else dialog.next_cseq()
    return tenant.attempt(f"{what} {method} {ruri}", method, ruri, to_tag=dialog.to_tag, route=route,
                          call_id=dialog.base_call_id, cseq=cseq)


# --------------------------------------------------------------------------- positive controls

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_requests_to_the_provider_get_through(lab, transport):
    tenant = lab.tenant(transport)
    got = []
    for method in ("INVITE", "MESSAGE", "OPTIONS", "REGISTER", "SUBSCRIBE"):
        for i in range(2):  # the second one is replayed from the decision cache
            ruri = lab.provider_uri(None if method == "REGISTER" else "4989123")
            call_id = tenant.send(method, ruri)
            status = tenant.final(call_id)
            arrived = lab.provider.wait_for(method, call_id)
            got.append((f"{method} {ruri} #{i + 1}", status, [m.src[2] for m in arrived]))
    assert all(status == 200 and via for _w, status, via in got), got
    assert all(via == [transport] for _w, _s, via in got), got
    assert not lab.leaks(drain=0.2)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_in_dialog_requests_along_the_signed_route_reach_the_provider(lab, transport):
    tenant = lab.tenant(transport)
    dialog = _establish_dialog(lab, tenant)
    for method in ("INFO", "INFO", "UPDATE", "BYE"):
        what, _m, status = _in_dialog(tenant, dialog, "signed route", method, dialog.remote_target,
                                      dialog.route_set)
        assert status == 200, (what, status)
        assert lab.provider.wait_for(method, dialog.call_id), what
    assert not lab.leaks(drain=0.2)


# --------------------------------------------------------------------------- a) Request-URI

def _request_uri_targets(lab: Lab, tp: str) -> dict[str, tuple[str, str]]:
    """name -> (host part of the Request-URI, victim it must not reach)."""
    b, other = lab.victims["tenant_b"], lab.victims["other_instance"]
    host, loop = lab.victims["host_service"], lab.victims["loopback_service"]
    targets = {
        "tenant_b": (f"{b.hostport}{tp}", "tenant_b"),
        "other_instance": (f"{other.hostport}{tp}", "other_instance"),
        "host_service": (f"{host.hostport}{tp}", "host_service"),
        "loopback_service": (f"{loop.hostport}{tp}", "loopback_service"),
        "localhost_name": (f"localhost:{host.port}{tp}", "host_service"),
        "ipv4_mapped_ipv6": (f"[::ffff:{TENANT_B_IP}]:{b.port}{tp}", "tenant_b"),
        "decimal_ipv4": (f"2130706690:{b.port}{tp}", "tenant_b"),  # 127.0.1.2 as one number
        "hex_ipv4": (f"0x7f000102:{b.port}{tp}", "tenant_b"),
        "short_ipv4": (f"127.1:{host.port}{tp}", "host_service"),  # inet_aton: 127.0.0.1
        "trailing_dot_name": (f"localhost.:{host.port}{tp}", "host_service"),
    }
    if b.port == 5060:
        targets["tenant_b_default_port"] = (f"{TENANT_B_IP}{tp}", "tenant_b")
    return targets


REQUEST_URI_TARGETS = ["tenant_b", "tenant_b_default_port", "other_instance", "host_service", "loopback_service",
                       "localhost_name", "ipv4_mapped_ipv6", "decimal_ipv4", "hex_ipv4", "short_ipv4",
                       "trailing_dot_name"]


@pytest.mark.parametrize("target", REQUEST_URI_TARGETS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_request_uri_at_a_forbidden_destination_is_refused(lab, transport, target):
    tenant = lab.tenant(transport)
    targets = _request_uri_targets(lab, tenant.tp)
    if target not in targets:
        pytest.skip("tenant B could not bind port 5060")
    hostpart, victim = targets[target]
    outcomes = _attack_all(tenant, target, OUT_OF_DIALOG_METHODS, lambda m: _ruri(m, hostpart))
    _assert_isolated(lab, [tenant], outcomes)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_maddr_on_a_provider_uri_does_not_redirect(lab, transport):
    """`maddr` names another destination inside the provider's URI: the request goes to the
    provider (Kamailio does not honour maddr) or is refused; tenant B gets nothing."""
    tenant = lab.tenant(transport)
    suffix = f";maddr={TENANT_B_IP}" + (f";transport=tcp" if transport == "tcp" else "")

    def ruri_for(method):
        return lab.provider_uri(None if method == "REGISTER" else "100") + suffix

    outcomes = _attack_all(tenant, "maddr", OUT_OF_DIALOG_METHODS, ruri_for)
    _assert_isolated(lab, [tenant], outcomes, allowed=frozenset({403, 200}))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pinned_provider_ip_does_not_open_its_other_ports(pinned_lab, transport):
    """A pin is ip AND port: the provider's address on another port is loopback like any other."""
    lab = pinned_lab
    tenant = lab.tenant(transport)
    other = lab.provider_other_port
    outcomes = _attack_all(tenant, "provider ip, other port", OUT_OF_DIALOG_METHODS,
                           lambda m: _ruri(m, f"{other.hostport}{tenant.tp}"))
    _assert_isolated(lab, [tenant], outcomes)
    # and the pinned port itself is open (the control, in the same run)
    call_id = tenant.send("OPTIONS", f"sip:100@{lab.provider.hostport}{tenant.tp}")
    assert tenant.final(call_id) == 200 and lab.provider.wait_for("OPTIONS", call_id)


# --------------------------------------------------------------------------- b) preloaded Route

PRELOADED_HOPS = ["tenant_b", "other_instance", "host_service", "loopback_service", "localhost_name"]


@pytest.mark.parametrize("hop", PRELOADED_HOPS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_preloaded_route_to_a_forbidden_destination_is_refused(lab, transport, hop):
    """R-URI at the provider (pinned or allowed), the Route leads elsewhere: the Route wins in
    SIP, so the destination is the Route's, and it is refused."""
    tenant = lab.tenant(transport)
    hostpart, _victim = _request_uri_targets(lab, tenant.tp)[hop]
    own = f"<sip:{lab.internal}{tenant.tp};lr>"
    outcomes = []
    for form, route in (("after our entry", [own, f"<sip:{hostpart};lr>"]),
                        ("alone", [f"<sip:{hostpart};lr>"]),
                        ("after our entry, one line", [f"{own},<sip:{hostpart};lr>"])):
        outcomes += _attack_all(tenant, f"Route {form} -> {hop}", OUT_OF_DIALOG_METHODS,
                                lambda m: lab.provider_uri(None if m == "REGISTER" else "4989123"), route=route)
    _assert_isolated(lab, [tenant], outcomes)


# --------------------------------------------------------------------------- c) forged in-dialog

FORGED_ROUTES = ["internal_external", "external_internal", "internal_external_fake_tpt",
                 "external_internal_fake_tpt", "internal_only", "foreign_only", "no_route"]


@pytest.mark.parametrize("route_kind", FORGED_ROUTES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_forged_in_dialog_request_is_refused(lab, transport, route_kind):
    """A made-up To tag and a Route imitating the endpoint's Record-Route (no valid signed token
    for A), Request-URI at tenant B or a host service: 403, nothing received."""
    tenant = lab.tenant(transport)
    tp = tenant.tp
    b, host = lab.victims["tenant_b"], lab.victims["host_service"]
    fake = f";tpt={_forged_token(TENANT_B_IP, b.port, tenant.transport)}"
    outcomes = []
    for victim in (b, host):
        routes = {
            "internal_external": [_rr(lab.internal, tp), _rr(lab.external, tp)],
            "external_internal": [_rr(lab.external, tp), _rr(lab.internal, tp)],
            "internal_external_fake_tpt": [_rr(lab.internal, tp, fake), _rr(lab.external, tp, fake)],
            "external_internal_fake_tpt": [_rr(lab.external, tp, fake), _rr(lab.internal, tp, fake)],
            "internal_only": [f"<sip:{lab.internal}{tp};lr>"],
            "foreign_only": [f"<sip:{victim.hostport}{tp};lr>"],
            "no_route": None,
        }
        outcomes += _attack_all(tenant, f"{route_kind} -> {victim.name}", IN_DIALOG_METHODS,
                                lambda m: _ruri(m, f"{victim.hostport}{tp}"),
                                to_tag="made-up", route=routes[route_kind])
    _assert_isolated(lab, [tenant], outcomes)


# --------------------------------------------------------------------------- d) the real signed route

@pytest.mark.parametrize("target", ["tenant_b", "other_instance", "host_service", "loopback_service"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_real_signed_route_cannot_be_turned_to_another_destination(lab, transport, target):
    """A's own dialog, with the endpoint's genuine signed Record-Route: any other destination
    along it (Request-URI, or a Route entry added before or after ours) is refused; the dialog
    itself still works afterwards."""
    tenant = lab.tenant(transport)
    dialog = _establish_dialog(lab, tenant)
    victim = lab.victims[target]
    victim_uri = victim.uri("100", transport)
    victim_hop = f"<sip:{victim.hostport}{tenant.tp};lr>"
    variants = [
        ("route set, R-URI at victim", lambda: victim_uri, dialog.route_set),
        ("Record-Route order, R-URI at victim", lambda: victim_uri, dialog.record_route),
        ("first signed entry only, R-URI at victim", lambda: victim_uri, dialog.route_set[:1]),
        ("victim hop after the signed route", lambda: dialog.remote_target, dialog.route_set + [victim_hop]),
        ("victim hop before the signed route", lambda: dialog.remote_target, [victim_hop] + dialog.route_set),
    ]
    outcomes = []
    for what, ruri, route in variants:
        for method in IN_DIALOG_METHODS:
            for _ in range(REPEATS):
                outcomes.append(_in_dialog(tenant, dialog, what, method, ruri(), route))
    _assert_isolated(lab, [tenant], outcomes)
    # the genuine use of the same route still works: the refusals above were not a broken dialog
    what, _m, status = _in_dialog(tenant, dialog, "control", "BYE", dialog.remote_target, dialog.route_set)
    assert status == 200 and lab.provider.wait_for("BYE", dialog.call_id), (what, status)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_signed_route_of_another_tenant_is_refused(lab, transport):
    """The token in A's Record-Route was issued for A's address: another instance replaying A's
    route (towards A's provider, an allowed destination, and with A's Call-ID) gets 403."""
    tenant = lab.tenant(transport)
    dialog = _establish_dialog(lab, tenant)
    stranger = lab.tenant(transport, STRANGER_IP)
    before = len(lab.provider.requests())
    outcomes = []
    for method in ("BYE", "INFO", "MESSAGE", "INVITE", "ACK"):
        for order, route in (("route set", dialog.route_set), ("Record-Route order", dialog.record_route)):
            for _ in range(REPEATS):
                cseq = 1 if method == "ACK" else 900 + len(outcomes)
                outcomes.append(stranger.attempt(f"stolen {order} {method}", method, dialog.remote_target,
                                                 to_tag=dialog.to_tag, route=route, call_id=dialog.base_call_id,
                                                 cseq=cseq))
    time.sleep(DRAIN_S)
    reached = [m.start_line for m in lab.provider.requests()[before:]]
    assert not reached, f"the provider got the stranger's requests: {reached}"
    _assert_isolated(lab, [stranger], outcomes, victims=[])
    # A itself still hangs up along its route
    what, _m, status = _in_dialog(tenant, dialog, "control", "BYE", dialog.remote_target, dialog.route_set)
    assert status == 200 and lab.provider.wait_for("BYE", dialog.call_id), (what, status)


# --------------------------------------------------------------------------- allow-list precedence

def test_broad_allow_list_keeps_instance_networks_and_host_addresses_refused(make_lab):
    """allow_destinations = ["127.0.0.0/8"]: the longest prefix wins, so the instance network
    (/24) and the host's own address (/32) stay refused; the provider on loopback (a tie with
    loopback /8) is allowed."""
    lab = make_lab("broad_allowlist")
    tenant = lab.tenant("udp")
    call_id = tenant.send("OPTIONS", f"sip:100@{lab.provider.hostport}")
    assert tenant.final(call_id) == 200 and lab.provider.wait_for("OPTIONS", call_id)
    targets = _request_uri_targets(lab, "")
    outcomes = []
    for name in ("tenant_b", "other_instance", "host_service", "localhost_name"):
        hostpart, _victim = targets[name]
        outcomes += _attack_all(tenant, name, ("INVITE", "MESSAGE", "OPTIONS", "REGISTER"),
                                lambda m: _ruri(m, hostpart))
    _assert_isolated(lab, [tenant], outcomes, victims=["tenant_b", "other_instance", "host_service"])


# --------------------------------------------------------------------------- counted and logged

def _refused_total(run: TrunkproxyRun) -> float:
    with urllib.request.urlopen(run.api_url + "/metrics", timeout=5) as resp:
        body = resp.read().decode()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == "trunkproxy_destinations_refused_total" and sample.labels.get("endpoint") == ENDPOINT:
                return sample.value
    return 0.0


def test_refusals_are_counted_and_logged(make_lab):
    lab = make_lab("pinned", api_port=free_port())
    tenant = lab.tenant("udp")
    before = _refused_total(lab.endpoint)
    b = lab.victims["tenant_b"]
    outcomes = _attack_all(tenant, "tenant_b", ("INVITE",), lambda m: _ruri(m, b.hostport))
    _assert_isolated(lab, [tenant], outcomes, victims=["tenant_b"])
    wait_until(lambda: _refused_total(lab.endpoint) >= before + REPEATS, timeout=5.0,
               message=f"trunkproxy_destinations_refused_total{{endpoint={ENDPOINT!r}}} >= {before + REPEATS}")

    def logged():
        return [line for line in lab.endpoint.log().splitlines()
                if "refused" in line and TENANT_A_IP in line and TENANT_B_IP in line]

    wait_until(logged, timeout=5.0, message=f"a log line with 'refused', {TENANT_A_IP} and {TENANT_B_IP}")
