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
    names      in the endpoint's DNS cache (kamcmd): localhost, tenant-b.example.test, SRV records...

Two configurations (fixture `lab`): the provider pinned (`[providers."tel.example.test"] addresses`,
no allow-list; A writes `sip:x@tel.example.test`) and the provider allow-listed
(`allow_destinations = ["127.0.2.0/24"]`; A writes `sip:x@127.0.2.1:PORT`); a few tests use
other allow-lists (all of loopback; host names).

Roads tried, each over UDP and TCP, every method: Request-URI at a victim (addresses, names,
SRV, other spellings, maddr, the pinned provider's IP on another port), DNS failover onto a
victim, a preloaded Route to a victim, in-dialog requests with a forged route (imitations of the
endpoint's Record-Route, made-up tokens, no Route), A's genuine signed route turned to a victim
(Request-URI, extra Route entries), A's route replayed by another instance, stray replies and
Vias aimed at a victim, and tenant B's own TCP connection to the endpoint.

Every attack is sent 3 times, each a fresh transaction with otherwise the same text: the endpoint
memoises decisions and replays them natively, and a replay must refuse as strictly as Python.
What counts is what the victims' sockets received (nothing, after a final drain; checked first,
it is the hole) and what A got back (403; nothing for an ACK). Positive controls in every
configuration (requests and a dialog to the provider, over UDP and TCP, and the genuine use of
a route after the attacks on it) show that the road to the provider is open, so that a refusal
is a refusal and not a broken set-up.
"""
from __future__ import annotations

import base64
import itertools
import re
import selectors
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest

from .endpoint import ProviderPin, TrunkproxyRun
from .procs import KAMCMD, free_port, run_failed, tools_missing, wait_until
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


def _branch(msg: SipMessage) -> str | None:
    """The branch of a message's top Via (a reply carries its request's)."""
    m = re.search(r";\s*branch=([^;,\s]+)", msg.header("Via") or "")
    return m.group(1) if m else None


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

    def forget(self) -> None:
        """Start a test afresh: what earlier tests sent here is not this test's."""
        with self._lock:
            self.messages.clear()

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

    def requests(self, method: str | None = None, branch: str | None = None) -> list[SipMessage]:
        """Requests received (`branch`: the sender's Via branch, anywhere in the Via stack)."""
        with self._lock:
            msgs = list(self.messages)
        return [m for m in msgs if m.is_request and (method is None or m.method == method)
                and (branch is None or any(f"branch={branch}" in v for v in m.headers("Via")))]

    def wait_for(self, method: str, branch: str, timeout: float = REPLY_WAIT_S) -> list[SipMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.requests(method, branch)
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
        self.silent: list[tuple[str, str]] = []  # (what, Via branch) of requests that get no reply

    @property
    def tp(self) -> str:
        """URI suffix naming this tenant's transport."""
        return ";transport=tcp" if self.transport == "tcp" else ""

    def send(self, method: str, ruri: str, *, to_tag: str | None = None, route: list[str] | None = None,
             call_id: str | None = None, cseq: int = 1) -> str:
        """Send a request; return its Via branch (replies are matched by it: the requests of one
        dialog share a Call-ID)."""
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
        self.send_text(text)
        return _branch(SipMessage.parse(text))

    def send_text(self, text: str) -> None:
        self.peer.send(text, self.endpoint.internal_hostport)

    def _fetch(self, timeout: float) -> None:
        self.inbox.extend(self.peer.receive(timeout, until_final=True))

    def final(self, branch: str, timeout: float = REPLY_WAIT_S) -> int | None:
        """The final status of the request sent with this Via branch (None: no answer)."""
        found = self.final_reply(branch, timeout)
        return found.status if found else None

    def final_reply(self, branch: str, timeout: float = REPLY_WAIT_S) -> SipMessage | None:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.inbox:
                if m.status is not None and m.status >= 200 and _branch(m) == branch:
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._fetch(left)

    def attempt(self, what: str, method: str, ruri: str, timeout: float = REPLY_WAIT_S, **kw
                ) -> tuple[str, str, int | None]:
        """One request; (description, method, final status). An ACK's silence is checked later,
        by `answered_silent()`."""
        branch = self.send(method, ruri, **kw)
        if method == "ACK":
            self.silent.append((what, branch))
            self._fetch(ACK_WAIT_S)
            return what, method, None
        return what, method, self.final(branch, timeout)

    def answered_silent(self) -> list[str]:
        """The requests that should have got no reply (ACKs) but did."""
        self._fetch(0.2)
        return [f"{what}: got {m.start_line}" for what, branch in self.silent
                for m in self.inbox if _branch(m) == branch]

    def close(self) -> None:
        self.peer.close()


# --------------------------------------------------------------------------- the lab

# Names in the endpoint's DNS cache (kamcmd dns.add_a / dns.add_srv): what an attacker's DNS
# zone, or a resolver answering `localhost`, would give. Kamailio's resolver does not read
# /etc/hosts, so without these a name never resolves here and a test of names would prove nothing.
DNS_A = {
    "localhost": HOST_IP,
    "tenant-b.example.test": TENANT_B_IP,
    "other.example.test": OTHER_INSTANCE_IP,
    "host.example.test": HOST_IP,
    "loopback.example.test": LOOPBACK_IP,
    "provider.example.test": PROVIDER_IP,
    "dead.example.test": "127.0.2.9",  # nothing listens there (allowed in the allow-listed configs)
}


@dataclass
class Lab:
    config: str  # "pinned" | "allowlisted" | ...
    endpoint: TrunkproxyRun
    provider: SipServer
    provider_other_port: SipServer  # the provider's IP, another port: not pinned
    victims: dict[str, SipServer]
    dead_port: int  # a port on 127.0.2.9 where nothing listens
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

    def kamcmd(self, *args: str) -> str:
        sock = f"unixs:{self.endpoint.state_dir}/run/{ENDPOINT}/ctl.sock"
        res = subprocess.run([KAMCMD, "-s", sock, *args], capture_output=True, text=True, timeout=10)
        assert res.returncode == 0, f"kamcmd {args}: {res.stdout} {res.stderr}"
        return res.stdout

    def dns_a(self, name: str, ip: str) -> None:
        self.kamcmd("dns.add_a", name, "3600", ip, "0")

    def dns_srv(self, name: str, priority: int, port: int, target: str) -> None:
        for proto in ("udp", "tcp"):
            self.kamcmd("dns.add_srv", f"_sip._{proto}.{name}", "3600", str(priority), "0", str(port), target, "0")

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
    if config == "named_allowlist":
        # names in the allow-list match names, never what they resolve to inside a refused network
        return dict(providers=[], allow_destinations=["*.example.test", "localhost", "127.0.2.0/24"])
    raise ValueError(config)


def _build_lab(config: str, make_endpoint, servers: dict[str, SipServer], **endpoint_kw) -> Lab:
    """A lab for `config`; its parties come from `servers` when there (labs alive at the same
    time share them: tenant B can hold 127.0.1.2:5060 only once), else are made and added."""
    def server(name, ip, port=None):
        if name not in servers:
            servers[name] = _server(name, ip, port)
        return servers[name]

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
    lab = Lab(config, endpoint, provider, provider_other, victims, free_port("127.0.2.9"))
    for name, ip in DNS_A.items():
        lab.dns_a(name, ip)
    b = victims["tenant_b"]
    lab.dns_srv("srv-b.example.test", 10, b.port, "tenant-b.example.test")
    # failover: the first SRV target never answers, the second is tenant B (or, the
    # control, the provider)
    lab.dns_srv("failover-b.example.test", 10, lab.dead_port, "dead.example.test")
    lab.dns_srv("failover-b.example.test", 20, b.port, "tenant-b.example.test")
    lab.dns_srv("failover-ok.example.test", 10, lab.dead_port, "dead.example.test")
    lab.dns_srv("failover-ok.example.test", 20, provider.port, "provider.example.test")
    return lab


def _close_tenants(lab: Lab) -> None:
    for t in lab.tenants:
        t.close()
    lab.tenants.clear()


@pytest.fixture
def make_lab(make_endpoint):
    """Factory: make_lab(config, **TrunkproxyRun kwargs) -> a Lab of this test's own (its
    endpoint started for it); stops everything it started."""
    labs: list[Lab] = []
    servers: list[dict[str, SipServer]] = []

    def make(config: str, **endpoint_kw) -> Lab:
        servers.append({})
        lab = _build_lab(config, make_endpoint, servers[-1], **endpoint_kw)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        _close_tenants(lab)
    for own in servers:
        for s in own.values():
            s.close()


@pytest.fixture(scope="module")
def shared_labs(tmp_path_factory):
    """One lab per configuration for the whole module (starting an endpoint per test made the
    suite take 10 minutes). Sharing one is also the stricter test: every attack meets the
    decisions and destinations earlier tests left memoised."""
    why = tools_missing()
    if why:
        pytest.skip(why)
    runs: list[TrunkproxyRun] = []
    servers: dict[str, SipServer] = {}
    labs: dict[str, Lab] = {}

    def make_endpoint(**kw) -> TrunkproxyRun:
        run = TrunkproxyRun(tmp_path_factory.mktemp("isolation"), **kw)
        runs.append(run)
        return run.start()

    def get(config: str) -> Lab:
        if config not in labs:
            labs[config] = _build_lab(config, make_endpoint, servers)
        return labs[config]

    yield get
    for lab in labs.values():
        _close_tenants(lab)
    for run in runs:
        run.stop()
    for s in servers.values():
        s.close()


def _fresh(lab: Lab, request) -> Lab:
    """The shared lab for one test: what its servers received so far forgotten; its tenants
    closed after the test (and the endpoint's log shown if the test failed)."""
    for s in (lab.provider, lab.provider_other_port, *lab.victims.values()):
        s.forget()
    def after() -> None:
        _close_tenants(lab)
        if run_failed(request):
            print(f"\n===== trunkproxy log ({lab.endpoint.log_path}) =====\n{lab.endpoint.log_tail(120)}")

    request.addfinalizer(after)
    return lab


@pytest.fixture(params=["pinned", "allowlisted"])
def lab(request, shared_labs) -> Lab:
    return _fresh(shared_labs(request.param), request)


@pytest.fixture
def pinned_lab(request, shared_labs) -> Lab:
    return _fresh(shared_labs("pinned"), request)


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


def _attack_all(tenant: Tenant, what: str, methods, ruri_for, *, repeats: int = REPEATS,
                timeout: float = REPLY_WAIT_S, **kw):
    """Send every method `repeats` times (fresh transactions); [(description, method, final status)]."""
    outcomes = []
    for method in methods:
        for i in range(repeats):
            ruri = ruri_for(method)
            outcomes.append(tenant.attempt(f"{what} {method} {ruri} #{i + 1}", method, ruri, timeout, **kw))
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
    assert not wrong, f"{len(wrong)} attempt(s) not answered {sorted(allowed)}:\n" + "\n".join(wrong)


@dataclass
class Dialog:
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
    branch = tenant.send("INVITE", lab.provider_uri(), call_id=base)
    ok = tenant.final_reply(branch)
    assert ok is not None and ok.status == 200, \
        f"the call to the provider did not get through: {ok and ok.start_line}; provider got " \
        f"{[m.start_line for m in lab.provider.requests()]}"
    record_route = ok.headers("Record-Route")
    assert len(record_route) >= 2 and all("tpt=" in e for e in record_route), record_route
    to_tag = re.search(r";\s*tag=([^;>\s]+)", ok.header("To")).group(1)
    dialog = Dialog(ok.header("Call-ID"), base, to_tag, record_route, ok.uri_of("Contact"))
    ack = tenant.send("ACK", dialog.remote_target, to_tag=to_tag, route=dialog.route_set, call_id=base, cseq=1)
    assert lab.provider.wait_for("ACK", ack), "the ACK along the signed route did not reach the provider"
    return dialog


def _in_dialog(tenant: Tenant, dialog: Dialog, what: str, method: str, ruri: str, route: list[str] | None):
    cseq = 1 if method in ("ACK", "PRACK") else dialog.next_cseq()
    return _attack_all(tenant, what, (method,), lambda _m: ruri, repeats=1, to_tag=dialog.to_tag, route=route,
                       call_id=dialog.base_call_id, cseq=cseq)[0]


def _along_the_dialog(lab: Lab, tenant: Tenant, dialog: Dialog, method: str,
                      route: list[str] | None = None) -> tuple[int | None, list[SipMessage]]:
    """A genuine in-dialog request: (A's final status, what the provider got of it)."""
    branch = tenant.send(method, dialog.remote_target, to_tag=dialog.to_tag,
                         route=dialog.route_set if route is None else route,
                         call_id=dialog.base_call_id, cseq=dialog.next_cseq())
    status = tenant.final(branch)
    return status, lab.provider.wait_for(method, branch)


# --------------------------------------------------------------------------- positive controls

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_requests_to_the_provider_get_through(lab, transport):
    tenant = lab.tenant(transport)
    got = []
    for method in ("INVITE", "MESSAGE", "OPTIONS", "REGISTER", "SUBSCRIBE"):
        for i in range(2):  # the second one is replayed from the decision cache
            ruri = lab.provider_uri(None if method == "REGISTER" else "4989123")
            branch = tenant.send(method, ruri)
            status = tenant.final(branch)
            arrived = lab.provider.wait_for(method, branch)
            got.append((f"{method} {ruri} #{i + 1}", status, [_sent_from(lab, m) for m in arrived]))
    # each arrived once, over A's transport, from the endpoint's external side
    assert all(status == 200 and via == [transport] for _w, status, via in got), got
    assert not lab.leaks(drain=0.2)


def _sent_from(lab: Lab, msg: SipMessage) -> str:
    """The transport a request arrived over; "udp from another socket" when a UDP one did not come
    from the endpoint's external socket (a TCP connection's source port says nothing)."""
    ip, port, proto = msg.src
    if proto == "udp" and (ip, port) != (lab.endpoint.external_ip, lab.endpoint.external_port):
        return f"udp from {ip}:{port}"
    return proto


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_in_dialog_requests_along_the_signed_route_reach_the_provider(lab, transport):
    tenant = lab.tenant(transport)
    dialog = _establish_dialog(lab, tenant)
    for method in ("INFO", "INFO", "UPDATE", "MESSAGE", "BYE"):
        status, arrived = _along_the_dialog(lab, tenant, dialog, method)
        assert status == 200 and [_sent_from(lab, m) for m in arrived] == [transport], (method, status, arrived)
    assert not lab.leaks(drain=0.2)


# --------------------------------------------------------------------------- a) Request-URI

def _targets(lab: Lab, tp: str) -> dict[str, tuple[str, str]]:
    """name -> (host part of a URI, the victim it leads to)."""
    b, other = lab.victims["tenant_b"], lab.victims["other_instance"]
    host, loop = lab.victims["host_service"], lab.victims["loopback_service"]
    targets = {
        "tenant_b": (f"{b.hostport}{tp}", "tenant_b"),
        "other_instance": (f"{other.hostport}{tp}", "other_instance"),
        "host_service": (f"{host.hostport}{tp}", "host_service"),
        "loopback_service": (f"{loop.hostport}{tp}", "loopback_service"),
        # names (the endpoint's DNS cache, DNS_A)
        "localhost_name": (f"localhost:{host.port}{tp}", "host_service"),
        "tenant_b_name": (f"tenant-b.example.test:{b.port}{tp}", "tenant_b"),
        "other_instance_name": (f"other.example.test:{other.port}{tp}", "other_instance"),
        "loopback_name": (f"loopback.example.test:{loop.port}{tp}", "loopback_service"),
        "tenant_b_srv": (f"srv-b.example.test{tp}", "tenant_b"),  # SRV -> tenant-b.example.test:port
    }
    if b.port == 5060:
        targets["tenant_b_default_port"] = (f"{TENANT_B_IP}{tp}", "tenant_b")
    return targets


REQUEST_URI_TARGETS = ["tenant_b", "tenant_b_default_port", "other_instance", "host_service", "loopback_service",
                       "localhost_name", "tenant_b_name", "other_instance_name", "loopback_name", "tenant_b_srv"]


@pytest.mark.parametrize("target", REQUEST_URI_TARGETS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_request_uri_at_a_forbidden_destination_is_refused(lab, transport, target):
    tenant = lab.tenant(transport)
    targets = _targets(lab, tenant.tp)
    if target not in targets:
        pytest.skip("tenant B could not bind port 5060")
    hostpart, _victim = targets[target]
    outcomes = _attack_all(tenant, target, OUT_OF_DIALOG_METHODS, lambda m: _ruri(m, hostpart))
    _assert_isolated(lab, [tenant], outcomes)


def _spellings(lab: Lab, tp: str) -> dict[str, str]:
    b, host = lab.victims["tenant_b"], lab.victims["host_service"]
    return {
        "ipv4_mapped_ipv6": f"[::ffff:{TENANT_B_IP}]:{b.port}{tp}",
        "decimal_ipv4": f"2130706690:{b.port}{tp}",  # 127.0.1.2 as one number
        "hex_ipv4": f"0x7f000102:{b.port}{tp}",
        "octal_ipv4": f"0177.0.1.02:{b.port}{tp}",
        "short_ipv4": f"127.1:{host.port}{tp}",  # inet_aton: 127.0.0.1
        "trailing_dot_name": f"localhost.:{host.port}{tp}",
        "upper_case_name": f"LOCALHOST:{host.port}{tp}",
    }


@pytest.mark.parametrize("spelling", ["ipv4_mapped_ipv6", "decimal_ipv4", "hex_ipv4", "octal_ipv4", "short_ipv4",
                                      "trailing_dot_name", "upper_case_name"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_other_spellings_of_a_forbidden_destination_reach_nobody(lab, transport, spelling):
    """Spellings a C library would turn into tenant B's or the host's address. Kamailio resolves
    some of them, some not at all: refused (403) or nothing could be sent (503), never sent."""
    tenant = lab.tenant(transport)
    hostpart = _spellings(lab, tenant.tp)[spelling]
    outcomes = _attack_all(tenant, spelling, OUT_OF_DIALOG_METHODS, lambda m: _ruri(m, hostpart))
    _assert_isolated(lab, [tenant], outcomes, allowed=frozenset({403, 503}))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_maddr_on_a_provider_uri_does_not_redirect(lab, transport):
    """`maddr` names another destination inside the provider's URI: the request goes to the
    provider (this Kamailio does not honour maddr) or is refused; tenant B gets nothing."""
    tenant = lab.tenant(transport)
    suffix = f";maddr={TENANT_B_IP}" + (";transport=tcp" if transport == "tcp" else "")

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
    # the pinned address itself is open, also when written as an address (the control)
    branch = tenant.send("OPTIONS", f"sip:100@{lab.provider.hostport}{tenant.tp}")
    assert tenant.final(branch) == 200 and lab.provider.wait_for("OPTIONS", branch)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_dns_failover_does_not_lead_to_a_forbidden_destination(lab, transport):
    """SRV: the first target never answers (TCP: refuses the connection), the second is tenant
    B. The control, same shape with the provider second, shows that failover does happen."""
    tenant = lab.tenant(transport)
    branch = tenant.send("OPTIONS", f"sip:100@failover-ok.example.test{tenant.tp}")
    status = tenant.final(branch, timeout=8.0)
    assert status == 200 and lab.provider.wait_for("OPTIONS", branch), f"control: failover to the provider: {status}"
    outcomes = _attack_all(tenant, "failover", ("OPTIONS", "MESSAGE", "INVITE"),
                           lambda m: f"sip:100@failover-b.example.test{tenant.tp}", repeats=2, timeout=8.0)
    # 403 when the refusal was the last try; 408/503 when the dead target's was
    _assert_isolated(lab, [tenant], outcomes, allowed=frozenset({403, 408, 503}))


# --------------------------------------------------------------------------- b) preloaded Route

PRELOADED_HOPS = ["tenant_b", "other_instance", "host_service", "loopback_service", "localhost_name",
                  "tenant_b_name", "tenant_b_srv"]


@pytest.mark.parametrize("hop", PRELOADED_HOPS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_preloaded_route_to_a_forbidden_destination_is_refused(lab, transport, hop):
    """R-URI at the provider (pinned or allowed), the Route leads elsewhere: in SIP the Route
    wins, so the destination is the Route's, and it is refused."""
    tenant = lab.tenant(transport)
    hostpart, _victim = _targets(lab, tenant.tp)[hop]
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
    for A), Request-URI at tenant B or a host service: 403 (ACK: nothing), nothing received."""
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
    along it (Request-URI, or a Route entry added before or after the endpoint's) is refused;
    the dialog itself still works afterwards."""
    tenant = lab.tenant(transport)
    dialog = _establish_dialog(lab, tenant)
    victim = lab.victims[target]
    victim_uri = victim.uri("100", transport)
    victim_hop = f"<sip:{victim.hostport}{tenant.tp};lr>"
    variants = [
        ("route set, R-URI at victim", victim_uri, dialog.route_set),
        ("Record-Route order, R-URI at victim", victim_uri, dialog.record_route),
        ("first signed entry only, R-URI at victim", victim_uri, dialog.route_set[:1]),
        ("victim hop after the signed route", dialog.remote_target, dialog.route_set + [victim_hop]),
        ("victim hop before the signed route", dialog.remote_target, [victim_hop] + dialog.route_set),
    ]
    outcomes = []
    for what, ruri, route in variants:
        for method in IN_DIALOG_METHODS:
            for _ in range(REPEATS):
                outcomes.append(_in_dialog(tenant, dialog, what, method, ruri, route))
    _assert_isolated(lab, [tenant], outcomes)
    # the genuine use of the same route still works: the refusals above were not a broken dialog
    status, arrived = _along_the_dialog(lab, tenant, dialog, "BYE")
    assert status == 200 and arrived, ("control BYE", status, arrived)


def test_signed_route_in_the_wrong_order_never_leaves_from_the_internal_side(lab):
    """A's genuine route in Record-Route order (external entry first) towards its own provider:
    refused, or sent from the external socket; never from the internal one (UDP shows the
    socket a request was sent from)."""
    tenant = lab.tenant("udp")
    dialog = _establish_dialog(lab, tenant)
    got = []
    for method in ("INFO", "MESSAGE", "OPTIONS", "INFO"):
        status, arrived = _along_the_dialog(lab, tenant, dialog, method, route=dialog.record_route)
        got.append((method, status, [_sent_from(lab, m) for m in arrived]))
    assert all((status == 403 and not sent) or (status == 200 and sent == ["udp"]) for _m, status, sent in got), got
    status, arrived = _along_the_dialog(lab, tenant, dialog, "BYE")
    assert status == 200 and arrived, ("control BYE", status, arrived)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_signed_route_of_another_tenant_is_refused(lab, transport):
    """The token in A's Record-Route was issued for A's address: another instance replaying A's
    route (towards A's provider, an allowed destination, with A's Call-ID and tags) gets 403."""
    tenant = lab.tenant(transport)
    dialog = _establish_dialog(lab, tenant)
    stranger = lab.tenant(transport, STRANGER_IP)
    before = len(lab.provider.requests())
    outcomes = []
    for method in ("BYE", "INFO", "MESSAGE", "INVITE", "ACK"):
        for order, route in (("route set", dialog.route_set), ("Record-Route order", dialog.record_route)):
            outcomes += _attack_all(stranger, f"stolen {order}", (method,), lambda _m: dialog.remote_target,
                                    to_tag=dialog.to_tag, route=route, call_id=dialog.base_call_id,
                                    cseq=1 if method == "ACK" else 900 + len(outcomes))
    time.sleep(DRAIN_S)
    reached = [m.start_line for m in lab.provider.requests()[before:]]
    assert not reached, f"the provider got the stranger's requests: {reached}"
    _assert_isolated(lab, [stranger], outcomes, victims=[])
    # A itself still hangs up along its route
    status, arrived = _along_the_dialog(lab, tenant, dialog, "BYE")
    assert status == 200 and arrived, ("control BYE", status, arrived)


# --------------------------------------------------------------------------- e) replies and Vias

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_replies_cannot_be_aimed_at_another_tenant(lab, transport):
    """Replies go back along a transaction only: a reply of no transaction whose next Via names
    tenant B goes nowhere, and the endpoint's replies to A's requests go to A whatever its Via
    claims (sent-by, received, maddr at B)."""
    tenant = lab.tenant(transport)
    b = lab.victims["tenant_b"]
    proto = transport.upper()
    internal = lab.internal
    for n, vias in enumerate((
        [f"SIP/2.0/{proto} {internal};branch=z9hG4bK-stray-a", f"SIP/2.0/UDP {b.hostport};branch=z9hG4bK-b"],
        [f"SIP/2.0/{proto} {internal};branch=z9hG4bK-stray-b",
         f"SIP/2.0/UDP 192.0.2.99:5060;received={TENANT_B_IP};rport={b.port};branch=z9hG4bK-b"],
        [f"SIP/2.0/UDP {b.hostport};branch=z9hG4bK-stray-c"],
    )):
        for status in ("200 OK", "180 Ringing", "403 Forbidden"):
            lines = [f"SIP/2.0 {status}"] + [f"Via: {v}" for v in vias] + [
                "From: <sip:a@tel.example.test>;tag=1", "To: <sip:b@tel.example.test>;tag=2",
                f"Call-ID: stray-{n}-{status[:3]}-{time.monotonic_ns()}", "CSeq: 1 INVITE",
                f"Contact: <sip:x@{b.hostport}>", "Content-Length: 0"]
            tenant.send_text("\r\n".join(lines) + "\r\n\r\n")
    # requests whose Via claims to be tenant B (no rport): the answers still go to A's address
    for via_params in (f";received={TENANT_B_IP}", f";maddr={TENANT_B_IP}", ""):
        for ruri in (lab.provider_uri(), f"sip:100@{b.hostport}{tenant.tp}"):
            branch = f"z9hG4bK-via-{time.monotonic_ns()}"
            text = request("OPTIONS", ruri, tenant.peer)
            text = re.sub(r"Via: SIP/2.0/UDP [^\r\n]+",
                          f"Via: SIP/2.0/{proto} {b.hostport};branch={branch}{via_params}", text, count=1)
            tenant.send_text(text)
            # too many hops: answered before anything else looks at the request
            tenant.send_text(text.replace("Max-Forwards: 70", "Max-Forwards: 0").replace(branch, branch + "-mf"))
    leaks = lab.leaks()
    assert not leaks, f"{len(leaks)} message(s) reached a victim:\n" + "\n".join(leaks)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tenant_b_tcp_connection_to_the_endpoint_is_not_reused_for_a(lab, transport):
    """Tenant B keeps a TCP connection open to the internal side, as a PBX does. Kamailio reuses
    open connections by address: A aiming at that connection's address (Request-URI, preloaded
    Route, or along A's own signed route) must not have its requests written into it."""
    b = lab.tenant("tcp", TENANT_B_IP)
    branch = b.send("OPTIONS", lab.provider_uri())
    assert b.final(branch) == 200, "tenant B's own request to its provider"
    b_conn = f"{b.peer.hostport};transport=tcp"
    tenant = lab.tenant(transport)
    dialog = _establish_dialog(lab, tenant)
    outcomes = _attack_all(tenant, "R-URI at B's connection", OUT_OF_DIALOG_METHODS, lambda m: _ruri(m, b_conn))
    outcomes += _attack_all(tenant, "Route to B's connection", OUT_OF_DIALOG_METHODS,
                            lambda m: lab.provider_uri(None if m == "REGISTER" else "4989123"),
                            route=[f"<sip:{lab.internal}{tenant.tp};lr>", f"<sip:{b_conn};lr>"])
    for method in IN_DIALOG_METHODS:
        outcomes.append(_in_dialog(tenant, dialog, "signed route, R-URI at B's connection", method,
                                   f"sip:100@{b_conn}", dialog.route_set))
    b._fetch(DRAIN_S)
    foreign = [m.start_line for m in b.inbox if _branch(m) != branch]
    assert not foreign, f"tenant B's connection carried A's traffic: {foreign}"
    _assert_isolated(lab, [tenant], outcomes)


# --------------------------------------------------------------------------- allow-list precedence

def test_broad_allow_list_keeps_instance_networks_and_host_addresses_refused(make_lab):
    """allow_destinations = ["127.0.0.0/8"]: the longest prefix wins, so the instance network
    (/24) and the host's own address (/32) stay refused; the provider on loopback (a tie with
    loopback /8, which goes to the allow-list) is allowed."""
    lab = make_lab("broad_allowlist")
    tenant = lab.tenant("udp")
    branch = tenant.send("OPTIONS", f"sip:100@{lab.provider.hostport}")
    assert tenant.final(branch) == 200 and lab.provider.wait_for("OPTIONS", branch)
    targets = _targets(lab, "")
    outcomes = []
    for name in ("tenant_b", "other_instance", "host_service", "localhost_name", "tenant_b_name"):
        hostpart, _victim = targets[name]
        outcomes += _attack_all(tenant, name, ("INVITE", "MESSAGE", "OPTIONS", "REGISTER"),
                                lambda m: _ruri(m, hostpart))
    _assert_isolated(lab, [tenant], outcomes, victims=["tenant_b", "other_instance", "host_service"])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_allow_listed_names_resolving_inside_are_refused(make_lab, transport):
    """allow_destinations names `*.example.test` and `localhost`: a name matches, but what it
    resolves to (tenant B, the other instance, the host, loopback) is still refused. The
    provider's name, resolving to an allowed network, gets through."""
    lab = make_lab("named_allowlist")
    tenant = lab.tenant(transport)
    branch = tenant.send("OPTIONS", f"sip:100@provider.example.test:{lab.provider.port}{tenant.tp}")
    assert tenant.final(branch) == 200 and lab.provider.wait_for("OPTIONS", branch)
    targets = _targets(lab, tenant.tp)
    outcomes = []
    for name in ("localhost_name", "tenant_b_name", "other_instance_name", "loopback_name", "tenant_b_srv"):
        hostpart, _victim = targets[name]
        outcomes += _attack_all(tenant, name, ("INVITE", "MESSAGE", "OPTIONS", "REGISTER"),
                                lambda m: _ruri(m, hostpart))
    _assert_isolated(lab, [tenant], outcomes)


# --------------------------------------------------------------------------- counted and logged

def _refused_total(run: TrunkproxyRun) -> float:
    return run.metrics().get("trunkproxy_destinations_refused_total", endpoint=ENDPOINT) or 0.0


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
