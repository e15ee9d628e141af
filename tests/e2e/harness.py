"""End-to-end harness: a real provider (Kamailio registrar), SIPp peers, network namespaces.

Everything here is bounded: every subprocess has a timeout, every daemon is stopped by its PID
(SIGTERM, then SIGKILL of its own process group), every namespace is deleted in teardown.
Network traffic stays on loopback or in namespaces the test created.

Main pieces (see tests/e2e/README.md for examples):
    free_port(ip)                          -> int, free for UDP and TCP
    KamailioProcess(workdir, cfg_path, ip, port, netns=None, ...)   start/stop/ping/log
    ProviderRegistrar(workdir, ip, port, users=..., min_expires=..., pstn=..., ...)
    Sipp(workdir).run(scenario, target, vars=..., calls=1, rsa=..., ...) -> SippResult
    Sipp(workdir).background(scenario, ...) -> SippProcess (.wait() -> SippResult, .stop())
    NetNamespace(name) / Topology (host namespace with veth uplinks named ens5, ens6, ...)
"""
from __future__ import annotations

import base64
import csv
import io
import itertools
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from .sipmsg import SipMessage

E2E_DIR = Path(__file__).resolve().parent
SCENARIO_DIR = E2E_DIR / "scenarios"
PROVIDER_TMPL = E2E_DIR / "provider" / "registrar.cfg.tmpl"

DOMAIN = "tel.example.test"
DEFAULT_USERS = {"4930111": "secret111", "4930222": "secret222", "4930333": "secret333"}
# Only these networks are ever sent to (loopback and the documentation ranges used in netns).
ALLOWED_SUBNETS = "127.0.0.0/8,198.51.100.0/24,203.0.113.0/24"
# The "unreachable" address PBX scenarios put in Contact by default (TEST-NET-1, never routed
# here: the provider refuses to send there, and namespaces have no default route).
UNREACHABLE_CONTACT = "192.0.2.99:5060"

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
KAMCMD = shutil.which("kamcmd") or "/usr/sbin/kamcmd"
SIPP = shutil.which("sipp") or "/usr/bin/sipp"


def tools_missing() -> str | None:
    """Why e2e tests cannot run here (None when Kamailio and SIPp are installed)."""
    missing = [p for p in (KAMAILIO, SIPP, KAMCMD) if not os.access(p, os.X_OK)]
    return f"not installed: {', '.join(missing)} (scripts/install-system-deps --test)" if missing else None


# --------------------------------------------------------------------------- ports

_handed_out: set[int] = set()


def _port_range() -> tuple[int, int] | None:
    """E2E_PORT_RANGE=LO-HI restricts the ports the harness picks (e.g. 5200-5299)."""
    spec = os.environ.get("E2E_PORT_RANGE", "")
    if not spec:
        return None
    lo, hi = spec.split("-")
    return int(lo), int(hi)


def _is_free(ip: str, port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_port(ip: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `ip`, never handed out twice by this process.

    Checks only the current namespace: for an address inside a fresh namespace any port is free.
    """
    rng = _port_range()
    if rng:
        candidates = list(range(rng[0], rng[1] + 1))
        random.shuffle(candidates)
    else:
        candidates = (0 for _ in range(200))
    for cand in candidates:
        if cand in _handed_out:
            continue
        if cand == 0:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((ip, 0))
            cand = s.getsockname()[1]
            s.close()
            if cand in _handed_out:
                continue
        if _is_free(ip, cand):
            _handed_out.add(cand)
            return cand
    raise RuntimeError(f"no free port on {ip} (E2E_PORT_RANGE={os.environ.get('E2E_PORT_RANGE')})")


# --------------------------------------------------------------------------- SIP probe

_PROBE = r"""
import socket, sys, uuid
ip, port, proto, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
s = socket.socket(fam, kind); s.settimeout(timeout)
try:
    s.connect((ip, port))
    lip, lport = s.getsockname()[:2]
    tag = uuid.uuid4().hex[:10]
    msg = (f"OPTIONS sip:{ip}:{port} SIP/2.0\r\n"
           f"Via: SIP/2.0/{proto.upper()} {lip}:{lport};branch=z9hG4bK{tag};rport\r\n"
           f"Max-Forwards: 70\r\nFrom: <sip:probe@{lip}>;tag={tag}\r\nTo: <sip:{ip}:{port}>\r\n"
           f"Call-ID: probe-{tag}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    s.send(msg.encode())
    data = s.recv(65535).decode(errors="replace")
    print(data.split("\r\n", 1)[0])
except OSError as e:
    print("ERR", e)
"""


def sip_ping(ip: str, port: int, transport: str = "udp", netns: str | None = None,
             timeout: float = 0.5) -> int | None:
    """Send one OPTIONS; return the status code of the first reply, or None (no answer)."""
    cmd = [sys.executable, "-c", _PROBE, ip, str(port), transport, str(timeout)]
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 5).stdout
    except subprocess.TimeoutExpired:
        return None
    m = re.match(r"SIP/2\.0 (\d{3})", out)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------- processes

def _stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM the process (by PID); SIGKILL its own process group after `timeout`."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # started with start_new_session: pgid == pid
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    # children left behind in the group (Kamailio workers) after the main process exited
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def netns_prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


class KamailioProcess:
    """One Kamailio started in the foreground from a config file, with its own runtime dir.

    Ready when an OPTIONS to ip:port gets any reply. Log (stderr) goes to `workdir/kamailio.log`.
    """

    def __init__(self, workdir: Path, cfg_path: Path, ip: str, port: int, *,
                 netns: str | None = None, children: int = 2, transport_probe: str = "udp",
                 extra_args: Sequence[str] = (), name: str = "kamailio",
                 rundir: Path | None = None):
        self.workdir = Path(workdir)
        self.cfg_path = Path(cfg_path)
        self.ip, self.port, self.netns = ip, port, netns
        self.children = children
        self.transport_probe = transport_probe
        self.extra_args = list(extra_args)
        self.name = name
        self.rundir = rundir or (self.workdir / f"{name}-run")
        self.log_path = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    def command(self) -> list[str]:
        return netns_prefix(self.netns) + [
            KAMAILIO, "-f", str(self.cfg_path), "-DD", "-E", "-n", str(self.children),
            "-Y", str(self.rundir), "-P", str(self.rundir / "kamailio.pid"),
            "-m", "64", "-M", "8", *self.extra_args]

    def check_config(self) -> None:
        res = subprocess.run([KAMAILIO, "-c", "-f", str(self.cfg_path)], capture_output=True,
                             text=True, timeout=20)
        if res.returncode != 0:
            raise RuntimeError(f"{self.name}: config check failed:\n{res.stderr[-4000:]}")

    def start(self, timeout: float = 15.0) -> "KamailioProcess":
        self.rundir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            if sip_ping(self.ip, self.port, self.transport_probe, self.netns) is not None:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not answering on {self.ip}:{self.port} after "
                           f"{timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 80) -> str:
        """The last lines of the log, E2E-RCV/SND lines decoded to a readable summary."""
        return "\n".join(_readable(line) for line in self.log().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float = 5.0) -> re.Match:
        """Wait until `pattern` (regex) appears in the log; return the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log())
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: /{pattern}/ not in log after {timeout}s:\n"
                                     f"{self.log_tail()}")
            time.sleep(0.1)

    def rpc(self, *args: str, timeout: float = 5.0) -> str:
        """Run a kamcmd command over the ctl socket (the cfg must load ctl on rundir/ctl.sock).

        kamcmd sends numeric-looking arguments as integers: prefix "s:" to force a string.
        """
        res = subprocess.run([KAMCMD, "-s", f"unix:{self.rundir / 'ctl.sock'}", *args],
                             capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"kamcmd {' '.join(args)}: {res.stderr or res.stdout}")
        return res.stdout

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _readable(line: str) -> str:
    m = re.search(r"E2E-(RCV|SND)\|([^|]*)\|([^|]*)\|([^|]*)\|([A-Za-z0-9+/=]+)", line)
    if not m:
        return line
    kind, ip, port, proto, b64 = m.groups()
    try:
        msg = SipMessage.parse(base64.b64decode(b64).decode(errors="replace"))
    except ValueError:
        return line
    arrow = "<-" if kind == "RCV" else "->"
    return (f"{line[:m.start()]}{kind} {arrow} {ip}:{port}/{proto}: {msg.start_line} | "
            f"CSeq: {msg.header('CSeq')} | Call-ID: {msg.header('Call-ID')}")


# --------------------------------------------------------------------------- provider

# $sndto(proto) is a number in Kamailio; $pr is a name
_PROTO_NUMBERS = {"1": "udp", "2": "tcp", "3": "tls", "4": "sctp", "5": "ws", "6": "wss"}


@dataclass
class LoggedMessage:
    """A message the provider received (direction 'in') or sent ('out')."""
    direction: str
    peer: tuple[str, int, str]   # (ip, port, proto) it came from / went to
    msg: SipMessage

    def __getattr__(self, name):  # delegate .method, .status, .header() ... to the message
        return getattr(self.msg, name)


class ProviderRegistrar(KamailioProcess):
    """The trunk provider: Kamailio registrar for `domain` with digest auth (see the cfg template).

    users:        {user: password}; AoR user == auth user.
    min_expires:  REGISTERs below it get 423 Interval Too Brief (with Min-Expires).
    pstn:         (ip, port[, transport]) where INVITEs to unregistered numbers go (a SIPp UAS);
                  None: 404.
    auth_invite:  challenge those outgoing INVITEs with 407.
    """

    def __init__(self, workdir: Path, ip: str = "127.0.0.1", port: int | None = None, *,
                 users: Mapping[str, str] | None = None, domain: str = DOMAIN,
                 min_expires: int = 10, max_expires: int = 3600, default_expires: int = 3600,
                 max_contacts: int = 10, nonce_expire: int = 300,
                 pstn: tuple | None = None, auth_invite: bool = False, qop: bool = True,
                 fr_timer_ms: int = 3000, fr_inv_timer_ms: int = 10000,
                 netns: str | None = None, debug: int = 2, children: int = 2,
                 name: str = "provider"):
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        port = port or free_port(ip)
        super().__init__(workdir, workdir / f"{name}.cfg", ip, port, netns=netns,
                         children=children, name=name)
        self.domain = domain
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.render(min_expires=min_expires, max_expires=max_expires,
                    default_expires=default_expires, max_contacts=max_contacts,
                    nonce_expire=nonce_expire, pstn=pstn, auth_invite=auth_invite, qop=qop,
                    fr_timer_ms=fr_timer_ms, fr_inv_timer_ms=fr_inv_timer_ms, debug=debug)

    def render(self, *, pstn, auth_invite, qop, **values) -> None:
        defines = []
        pstn_uri = ""
        if pstn:
            host, pport, *rest = pstn
            transport = rest[0] if rest else "udp"
            pstn_uri = f"sip:{host}:{pport}" + (f";transport={transport}" if transport != "udp" else "")
            defines.append("#!define WITH_PSTN")
        if auth_invite:
            defines.append("#!define WITH_AUTH_INVITE")
        for u, p in list(self.users.items()):
            if not re.fullmatch(r"[A-Za-z0-9_.+-]+", u) or '"' in p or "\\" in p:
                raise ValueError(f"user/password not usable in the cfg: {u!r}")
        users = "\n".join(f'\t$sht(users=>{u}) = "{p}";' for u, p in self.users.items())
        subst = dict(values, defines="\n".join(defines), users=users, domain=self.domain,
                     ip=self.ip, port=self.port, children=self.children, rundir=self.rundir,
                     pstn_uri=pstn_uri, challenge_flags="1" if qop else "0",
                     allowed_subnets=ALLOWED_SUBNETS)
        text = PROVIDER_TMPL.read_text()
        for k, v in subst.items():
            text = text.replace(f"@@{k}@@", str(v))
        left = re.findall(r"@@\w+@@", re.sub(r"(?m)^#.*$", "", text))
        if left:
            raise ValueError(f"unrendered template variables: {left}")
        self.cfg_path.write_text(text)

    # --- addressing
    @property
    def hostport(self) -> str:
        return f"{self.ip}:{self.port}"

    def uri(self, user: str | None = None, transport: str = "udp") -> str:
        u = f"sip:{user + '@' if user else ''}{self.hostport}"
        return u + (f";transport={transport}" if transport != "udp" else "")

    # --- what went over the wire
    def _logged(self, kind: str, direction: str) -> list[LoggedMessage]:
        out = []
        for m in re.finditer(rf"E2E-{kind}\|([^|]*)\|([^|]*)\|([^|]*)\|([A-Za-z0-9+/=]+)", self.log()):
            ip, port, proto, b64 = m.groups()
            try:
                text = base64.b64decode(b64).decode(errors="replace")
            except ValueError:
                continue
            peer = (ip, int(port) if port.isdigit() else 0, _PROTO_NUMBERS.get(proto, proto))
            out.append(LoggedMessage(direction, peer, SipMessage.parse(text, peer)))
        return out

    def received(self, method: str | None = None) -> list[LoggedMessage]:
        """Messages the provider received, in order (requests and replies).

        `method` filters requests by method and replies by CSeq method ('INVITE' gives both).
        """
        msgs = self._logged("RCV", "in")
        return [m for m in msgs if method is None or m.msg.method == method]

    def sent(self, method: str | None = None) -> list[LoggedMessage]:
        msgs = self._logged("SND", "out")
        return [m for m in msgs if method is None or m.msg.method == method]

    def events(self, kind: str) -> list[list[str]]:
        """Other E2E log lines: SAVED, AUTHFAIL, REFUSED, BADROUTE, DROPPED, INSANE."""
        return [line.split("E2E-" + kind + "|", 1)[1].split("|")
                for line in self.log().splitlines() if "E2E-" + kind + "|" in line]

    # --- runtime control and state
    def set_register_reply(self, reply: str | int | None) -> None:
        """None: normal; 'drop': ignore REGISTERs; a code (503): answer every REGISTER with it."""
        self.rpc("htable.sets", "ctl", "register_reply", "s:" + ("" if reply is None else str(reply)))

    def set_invite_reply(self, reply: str | int | None) -> None:
        self.rpc("htable.sets", "ctl", "invite_reply", "s:" + ("" if reply is None else str(reply)))

    def contacts(self, user: str) -> list[dict]:
        """Registered contacts of `user` ([] if none): dicts with 'contact', 'path', 'expires',
        'received', 'user_agent', 'socket' (parsed from `kamcmd ul.lookup`)."""
        try:
            out = self.rpc("ul.lookup", "location", "s:" + user)
        except RuntimeError as e:
            if "not found" in str(e).lower() or "404" in str(e):
                return []
            raise
        contacts: list[dict] = []
        for line in out.splitlines():
            m = re.match(r"\s*(\w[\w-]*):\s*(.*)$", line)
            if not m:
                continue
            key, value = m.group(1).lower(), m.group(2).strip()
            if key == "address":
                contacts.append({"contact": value})
            elif contacts:
                contacts[-1][key.replace("-", "_")] = None if value == "[not set]" else value
        return contacts

    def wait_registered(self, user: str, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            c = self.contacts(user)
            if c:
                return c
            if time.monotonic() > deadline:
                raise AssertionError(f"{user} not registered at the provider after {timeout}s")
            time.sleep(0.1)


# --------------------------------------------------------------------------- SIPp

# SIPp keywords that are not ours (everything else in [..] must be given as a key)
_SIPP_KEYWORDS = {
    "service", "remote_ip", "remote_port", "transport", "local_ip", "local_ip_type", "local_port",
    "len", "call_number", "call_id", "cseq", "pid", "branch", "last_branch", "next_url",
    "routes", "peer_tag_param", "media_ip", "media_port", "media_ip_type", "auto_media_port",
    "server_ip", "clock_tick", "users", "userid", "timestamp", "sipp_version", "tdmmap",
    "fill", "authentication", "msg_retrans", "field", "file", "rtpstream_audio_port",
}

# Defaults for the keys our scenarios use (README lists them per scenario). Values may refer
# to {local_ip}, {local_port}, {target} and {transport}, filled by Sipp at run time.
KEY_DEFAULTS = {
    "domain": DOMAIN,
    "user": "4930111",
    "password": "secret111",
    "auth_user": "{user}",
    "expires": "3600",
    "contact_host": UNREACHABLE_CONTACT,
    "route": "sip:{target};lr",
    "from_user": "4989000",
    "to_user": "4930111",
    "callee": "4989123",
    "extra_header": "X-E2E: pbx",
}


@dataclass
class SippResult:
    scenario: str
    returncode: int | None
    stats: dict[str, str]
    errors: str
    messages: str
    stdout: str
    command: list[str] = field(default_factory=list)
    timed_out: bool = False

    def _count(self, name: str) -> int:
        try:
            return int(self.stats.get(name, "0") or 0)
        except ValueError:
            return 0

    @property
    def successful(self) -> int:
        return self._count("SuccessfulCall(C)")

    @property
    def failed(self) -> int:
        return self._count("FailedCall(C)")

    @property
    def retransmissions(self) -> int:
        return self._count("Retransmissions(C)")

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.failed == 0 and self.successful > 0

    def diagnostics(self) -> str:
        return (f"sipp {self.scenario}: rc={self.returncode} timed_out={self.timed_out} "
                f"successful={self.successful} failed={self.failed}\n"
                f"command: {' '.join(self.command)}\n--- errors:\n{self.errors[-3000:]}\n"
                f"--- messages (tail):\n{self.messages[-6000:]}\n--- stdout (tail):\n"
                f"{self.stdout[-1500:]}")

    def assert_ok(self, calls: int | None = None) -> "SippResult":
        assert self.ok and (calls is None or self.successful == calls), self.diagnostics()
        return self


_run_ids = itertools.count(1)


class SippProcess:
    """A SIPp running in the background (typically a UAS). `.wait()` / `.stop()` -> SippResult."""

    def __init__(self, proc: subprocess.Popen, files: dict[str, Path], scenario: str,
                 command: list[str], local: tuple[str, int]):
        self.proc, self.files, self.scenario, self.command = proc, files, scenario, command
        self.local_ip, self.local_port = local
        self._result: SippResult | None = None

    @property
    def hostport(self) -> str:
        return f"{self.local_ip}:{self.local_port}"

    def wait(self, timeout: float = 30.0) -> SippResult:
        timed_out = False
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_process(self.proc)
        return self._collect(timed_out)

    def stop(self) -> SippResult:
        if self._result is None:
            if self.proc.poll() is None:
                # SIGUSR1 would dump; SIGTERM makes SIPp write its final stats and exit
                _stop_process(self.proc, timeout=3)
            return self._collect(False)
        return self._result

    def _collect(self, timed_out: bool) -> SippResult:
        if self._result is None:
            self._result = _collect(self.scenario, self.proc.returncode, self.files,
                                    self.command, timed_out)
        return self._result

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _collect(scenario: str, rc: int | None, files: dict[str, Path], command: list[str],
             timed_out: bool) -> SippResult:
    stats: dict[str, str] = {}
    text = _read(files["stats"])
    rows = list(csv.reader(io.StringIO(text), delimiter=";"))
    if len(rows) >= 2:
        stats = dict(zip(rows[0], rows[-1]))
    return SippResult(scenario, rc, stats, _read(files["errors"]), _read(files["messages"]),
                      _read(files["stdout"]), command, timed_out)


class Sipp:
    """Runs SIPp scenarios from tests/e2e/scenarios (or a path), bounded in calls and time.

    vars: values for the scenario's own [keys] (see KEY_DEFAULTS and README); passed with -key.
    """

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def scenario_path(scenario: str | Path) -> Path:
        p = Path(scenario)
        if p.exists():
            return p
        p = SCENARIO_DIR / (str(scenario) if str(scenario).endswith(".xml") else f"{scenario}.xml")
        if not p.exists():
            raise FileNotFoundError(p)
        return p

    @staticmethod
    def scenario_keys(path: Path) -> set[str]:
        text = path.read_text()
        names = set(re.findall(r"\[([a-z_][a-z0-9_]*)\]", text))
        names |= set(re.findall(r"\[authentication[^\]]*?=\[([a-z_]+)\]", text))
        return {n for n in names if n not in _SIPP_KEYWORDS and not n.startswith("last_")
                and not re.fullmatch(r"field\d+", n)}

    def _build(self, scenario, target, *, vars, calls, rate, transport, local_ip, local_port,
               rsa, timeout, netns, extra_args, inf_rows, pause_ms=None):
        path = self.scenario_path(scenario)
        if target is None and rsa and not _is_server(path):
            target = rsa
        run = f"{path.stem}-{next(_run_ids)}-{uuid.uuid4().hex[:6]}"
        files = {k: self.workdir / f"{run}.{k}" for k in ("stats", "errors", "messages", "stdout")}
        local_port = local_port or free_port(local_ip)
        tflag = {"udp": "u1", "tcp": "t1"}[transport]
        fmt = dict(local_ip=local_ip, local_port=local_port, transport=transport,
                   target=rsa or target or "")
        values = dict(KEY_DEFAULTS, **{k: str(v) for k, v in (vars or {}).items()})
        keys = self.scenario_keys(path)
        missing = keys - set(values)
        if missing:
            raise ValueError(f"{path.name}: no value for key(s) {sorted(missing)}")
        # A scenario may ask for other default behaviours in its comment block, e.g.
        # "default_behaviors: all" (abort on unexpected messages, so a 403 fails a REGISTER
        # at once). Calls keep "all,-abortunexp": a multi-worker proxy may reorder 180/200.
        m = re.search(r"default_behaviors:\s*(\S+)", path.read_text())
        behaviors = m.group(1) if m else "all,-abortunexp"
        cmd = netns_prefix(netns) + [
            SIPP, *([target] if target else []), "-sf", str(path), "-t", tflag,
            "-i", local_ip, "-bind_local", "-p", str(local_port), "-m", str(calls),
            "-timeout", f"{timeout}s", "-timeout_error", "-nostdin", "-aa",
            "-default_behaviors", behaviors,
            "-trace_stat", "-stf", str(files["stats"]), "-fd", "1",
            "-trace_err", "-error_file", str(files["errors"]),
            "-trace_msg", "-message_file", str(files["messages"]),
            "-max_recv_loops", "1000", "-recv_timeout", f"{max(1, int(timeout))}s",
        ]
        if rate:
            cmd += ["-r", str(rate)]
        if pause_ms is not None:
            cmd += ["-d", str(int(pause_ms))]
        if rsa:
            cmd += ["-rsa", rsa]
        plain = {kk: vv for kk, vv in values.items() if "{" not in vv}

        def value(k: str) -> str:
            # a key may refer to another key ({user}) and to run facts ({local_ip}, {target})
            return values[k].format(**fmt, **plain)

        for k in sorted(keys):
            cmd += ["-key", k, value(k)]
        if "[authentication]" in path.read_text():
            # SIPp 3.6 mangles keywords nested in [authentication ...]: use -au/-ap instead
            cmd += ["-au", value("auth_user"), "-ap", value("password")]
        if inf_rows:
            inf = self.workdir / f"{run}.csv"
            inf.write_text("SEQUENTIAL\n" + "".join(";".join(map(str, r)) + "\n" for r in inf_rows))
            cmd += ["-inf", str(inf)]
        cmd += list(extra_args)
        return path, files, cmd, (local_ip, local_port)

    def run(self, scenario: str | Path, target: str | None = None, *,
            vars: Mapping[str, object] | None = None, calls: int = 1, rate: float | None = None,
            transport: str = "udp", local_ip: str = "127.0.0.1", local_port: int | None = None,
            rsa: str | None = None, timeout: float = 15, netns: str | None = None,
            pause_ms: int | None = None, extra_args: Sequence[str] = (),
            inf_rows: Iterable[Sequence] | None = None) -> SippResult:
        """Run a client scenario to completion (at most `timeout` s) and return its result.

        target: 'ip:port' the R-URI/remote is built from ([remote_ip]); rsa: 'ip:port' where
        messages are actually sent (the outbound proxy).
        """
        path, files, cmd, _ = self._build(
            scenario, target, vars=vars, calls=calls, rate=rate, transport=transport,
            local_ip=local_ip, local_port=local_port, rsa=rsa, timeout=timeout, netns=netns,
            pause_ms=pause_ms, extra_args=extra_args, inf_rows=inf_rows)
        with open(files["stdout"], "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=timeout + 10)
            except subprocess.TimeoutExpired:
                timed_out = True
                _stop_process(proc)
        return _collect(path.stem, proc.returncode, files, cmd, timed_out)

    def background(self, scenario: str | Path, target: str | None = None, *,
                   vars: Mapping[str, object] | None = None, calls: int = 1,
                   transport: str = "udp", local_ip: str = "127.0.0.1",
                   local_port: int | None = None, rsa: str | None = None, timeout: float = 30,
                   netns: str | None = None, pause_ms: int | None = None,
                   extra_args: Sequence[str] = (), inf_rows: Iterable[Sequence] | None = None,
                   ready_timeout: float = 5.0) -> SippProcess:
        """Start SIPp in the background (a UAS when target is None). It exits by itself after
        `calls` calls or `timeout` s; `.wait()`/`.stop()` collect the result."""
        path, files, cmd, local = self._build(
            scenario, target, vars=vars, calls=calls, rate=None, transport=transport,
            local_ip=local_ip, local_port=local_port, rsa=rsa, timeout=timeout, netns=netns,
            pause_ms=pause_ms, extra_args=extra_args, inf_rows=inf_rows)
        out = open(files["stdout"], "wb")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        sp = SippProcess(proc, files, path.stem, cmd, local)
        if target is None:
            _wait_bound(proc, local, transport, netns, ready_timeout, files)
        return sp


def _is_server(path: Path) -> bool:
    """A scenario whose first command is a <recv> is a server (UAS) scenario."""
    m = re.search(r"<(send|recv|pause|nop)\b", path.read_text().split("<scenario", 1)[-1])
    return bool(m and m.group(1) == "recv")


def _wait_bound(proc, local, transport, netns, timeout, files) -> None:
    """Wait until a background SIPp has bound its port (it may still be parsing otherwise)."""
    ip, port = local
    proto = "-u" if transport == "udp" else "-t"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sipp exited early ({proc.returncode}):\n{_read(files['stdout'])[-3000:]}")
        out = subprocess.run(netns_prefix(netns) + ["ss", "-Hln", proto, f"sport = :{port}"],
                             capture_output=True, text=True, timeout=5).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"sipp did not bind {ip}:{port} within {timeout}s")


# --------------------------------------------------------------------------- namespaces

_ns_ids = itertools.count(1)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespace tests need root (ip netns add)"
    if not shutil.which("ip"):
        return "iproute2 (ip) not installed"
    return None


class NetNamespace:
    """A named network namespace `tpe2e-...` with lo up; deleted by .delete() (idempotent)."""

    def __init__(self, role: str = "ns"):
        self.name = f"tpe2e-{os.getpid() % 100000}-{next(_ns_ids)}-{role}"[:48]
        self.created = False

    def create(self) -> "NetNamespace":
        _ip("netns", "add", self.name)
        self.created = True
        _ip("-n", self.name, "link", "set", "lo", "up")
        return self

    def delete(self) -> None:
        if self.created:
            # processes still inside keep the namespace alive but it loses its name; the
            # fixtures stop their processes before this runs
            _ip("netns", "delete", self.name, check=False)
            self.created = False

    def run(self, *cmd: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True,
                              text=True, timeout=timeout)

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.delete()


@dataclass
class Uplink:
    iface: str          # the host-side name, like production: ens5
    host_ip: str        # e.g. 198.51.100.1
    peer: NetNamespace  # the provider's namespace ("the internet behind ens5")
    peer_ip: str        # e.g. 198.51.100.2
    peer_iface: str = "uplink"


class Topology:
    """A CSP host as a namespace with veth interfaces named like production (ens5, ens6...),
    each leading to its own provider namespace.

        topo = Topology().create()
        ens5 = topo.add_uplink("ens5", "198.51.100")   # host 198.51.100.1 <-> provider .2
        ProviderRegistrar(tmp, ens5.peer_ip, 5060, netns=ens5.peer.name)
        Sipp(tmp).run(..., netns=topo.host.name, local_ip="127.0.0.1")
        topo.delete()
    """

    def __init__(self):
        self.host = NetNamespace("host")
        self.uplinks: dict[str, Uplink] = {}

    def create(self) -> "Topology":
        self.host.create()
        return self

    def add_uplink(self, iface: str, prefix24: str, host_octet: int = 1, peer_octet: int = 2,
                   peer_ip_extra: Sequence[str] = ()) -> Uplink:
        peer = NetNamespace(f"p{len(self.uplinks) + 1}").create()
        up = Uplink(iface, f"{prefix24}.{host_octet}", peer, f"{prefix24}.{peer_octet}")
        self.uplinks[iface] = up
        _ip("link", "add", iface, "netns", self.host.name, "type", "veth", "peer", "name",
            up.peer_iface, "netns", peer.name)
        _ip("-n", self.host.name, "addr", "add", f"{up.host_ip}/24", "dev", iface)
        _ip("-n", peer.name, "addr", "add", f"{up.peer_ip}/24", "dev", up.peer_iface)
        for extra in peer_ip_extra:
            _ip("-n", peer.name, "addr", "add", f"{extra}/24", "dev", up.peer_iface)
        _ip("-n", self.host.name, "link", "set", iface, "up")
        _ip("-n", peer.name, "link", "set", up.peer_iface, "up")
        return up

    def delete(self) -> None:
        for up in self.uplinks.values():
            up.peer.delete()
        self.host.delete()

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.delete()


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.1,
               message: str = "condition") -> object:
    """Poll `predicate` until truthy (returned) or raise AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s")
        time.sleep(interval)
