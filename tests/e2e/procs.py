"""Processes and ports for the e2e harness: free ports, an OPTIONS probe, one Kamailio.

Every subprocess has a timeout; daemons are stopped by PID (SIGTERM, then SIGKILL of their own
process group, which they lead: they are started with start_new_session=True).
"""
from __future__ import annotations

import base64
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

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

def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
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
            stop_process(self.proc)
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return read_log(self.log_path)

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


def read_log(path: Path) -> str:
    """A process's log so far ("" before it exists)."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


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



def run_failed(request) -> bool:
    """Whether the test of a fixture's `request` failed in setup or call (to print logs)."""
    return any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False)
               for w in ("setup", "call"))
