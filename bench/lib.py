"""Processes for the benchmark: the proxies under test, SIPp peers, CPU time from /proc.

Everything binds to 127.0.0.1 and only sends there. Every SIPp run is bounded in calls (-m)
and time (-timeout); every process is stopped by its PID (SIGTERM, then SIGKILL of the
process group it leads).
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SCENARIOS = BENCH_DIR / "scenarios"
REFERENCE_TMPL = BENCH_DIR / "reference" / "kamailio.cfg.tmpl"

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
SIPP = shutil.which("sipp") or "/usr/bin/sipp"
TASKSET = shutil.which("taskset") or "/usr/bin/taskset"
IP = "127.0.0.1"
PROVIDER_HOST = "bench.example.test"
# tm keeps every transaction ~5 s after its final reply: ~150 KB of shm per call/s sustained
# (128 MB, trunkproxy's old default, ran out near 1,000 calls/s; 512 MB, the new one, near
# 3,400). The benchmark gives both proxies 1 GB (run.py --shm-mb) to find the CPU limit.
SHM_MB, PKG_MB = 1024, 16


def tools_missing() -> str | None:
    missing = [p for p in (KAMAILIO, SIPP, TASKSET) if not os.access(p, os.X_OK)]
    return f"not installed: {', '.join(missing)}" if missing else None


# --------------------------------------------------------------------------- results


def results_path(name: str, out: str | None) -> Path:
    """`out` if given, else bench/results/NAME-DATE.json (git-ignored)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(out) if out else BENCH_DIR / "results" / f"{name}-{stamp}.json"


def write_results(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))


# --------------------------------------------------------------------------- ports, probe

_handed_out: set[int] = set()


def free_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1, never handed out twice by this process."""
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((IP, 0))
        port = s.getsockname()[1]
        s.close()
        if port in _handed_out:
            continue
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind((IP, port))
        except OSError:
            continue
        finally:
            t.close()
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port on 127.0.0.1")


def sip_ping(port: int, timeout: float = 0.3) -> int | None:
    """One OPTIONS to 127.0.0.1:port; the status code of the reply, or None."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.connect((IP, port))
        lport = s.getsockname()[1]
        tag = uuid.uuid4().hex[:10]
        s.send((f"OPTIONS sip:{IP}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {IP}:{lport};branch=z9hG4bK{tag};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:probe@{IP}>;tag={tag}\r\nTo: <sip:{IP}:{port}>\r\n"
                f"Call-ID: bench-probe-{tag}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode())
        m = re.match(rb"SIP/2\.0 (\d{3})", s.recv(65535))
        return int(m.group(1)) if m else None
    except OSError:
        return None
    finally:
        s.close()


def rpc(sock_path: Path | None, method: str, timeout: float = 1.0):
    """One JSON-RPC call to Kamailio's jsonrpcs datagram socket; None when it does not answer."""
    if not sock_path:
        return None
    import json
    with tempfile.TemporaryDirectory(prefix="tpbr") as tmp:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(os.path.join(tmp, "r"))
            s.settimeout(timeout)
            try:
                s.sendto(json.dumps({"jsonrpc": "2.0", "method": method, "id": 1}).encode(), str(sock_path))
                return json.loads(s.recv(1 << 20)).get("result")
            except (OSError, ValueError):
                return None


def shm_used(sock_path: Path | None) -> int | None:
    res = rpc(sock_path, "core.shmmem")
    return int(res["real_used"]) if isinstance(res, dict) and "real_used" in res else None


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def pinned(cpus: str | None, cmd: list[str]) -> list[str]:
    return [TASKSET, "-c", cpus, *cmd] if cpus else cmd


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """SIGTERM by PID, then SIGKILL of the process group it leads (start_new_session=True)."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


# --------------------------------------------------------------------------- /proc

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from #3 (state) on


def process_tree(root: int) -> list[int]:
    """root and all its descendants (from /proc/*/stat ppid)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f:
                children.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of the given live processes, in seconds: the scheduler's
    own count in nanoseconds (/proc/PID/schedstat, first field), else utime+stime of
    /proc/PID/stat. The latter is counted in clock ticks (10 ms) by sampling which process
    runs at each tick: for a dozen processes at a few per cent of a core that is a
    statistical estimate off by ±15% over an 8 s round, where the proxies differ by less."""
    total = 0.0
    for pid in pids:
        ns = _runtime_ns(pid)
        if ns is not None:
            total += ns / 1e9
            continue
        f = _stat_fields(pid)
        if f:
            total += (int(f[11]) + int(f[12])) / _CLK_TCK
    return total


def _runtime_ns(pid: int) -> int | None:
    """Every thread's (/proc/PID/schedstat counts the main thread only; rtpengine forwards
    in worker threads)."""
    total, found = 0, False
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            first = (task / "schedstat").read_text().split()[0]
        except (OSError, IndexError):
            continue
        if first.isdigit():
            total, found = total + int(first), True
    return total if found else None


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cpu_times() -> dict[str, tuple[int, int]]:
    """Per CPU (busy, total) jiffies from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *vals = line.split()
            v = [int(x) for x in vals[:8]]
            out[name[3:]] = (sum(v) - v[3] - v[4], sum(v))
    return out


def cpu_busy(before: dict, after: dict) -> dict[str, float]:
    """Busy fraction of each CPU between two cpu_times() snapshots."""
    out = {}
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (0, 0))
        out[cpu] = round((b1 - b0) / (t1 - t0), 3) if t1 > t0 else 0.0
    return out


def udp_rcvbuf_errors() -> int:
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Udp:")]
    hdr, val = lines[0], lines[1]
    return int(val[hdr.index("RcvbufErrors")])


# --------------------------------------------------------------------------- SIPp

@dataclass
class SippStats:
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    elapsed_s: float = 0.0
    returncode: int | None = None
    errors: str = ""

    @classmethod
    def parse(cls, stats_file: Path, errors_file: Path, rc: int | None) -> "SippStats":
        text = stats_file.read_text(errors="replace") if stats_file.exists() else ""
        rows = list(csv.reader(io.StringIO(text), delimiter=";"))
        errs = errors_file.read_text(errors="replace")[-2000:] if errors_file.exists() else ""
        if len(rows) < 2:
            return cls(returncode=rc, errors=errs)
        last = dict(zip(rows[0], rows[-1]))

        def num(key: str) -> int:
            try:
                return int(last.get(key, "0") or 0)
            except ValueError:
                return 0

        return cls(num("SuccessfulCall(C)"), num("FailedCall(C)"), num("Retransmissions(C)"),
                   _epoch(last.get("CurrentTime", "")) - _epoch(last.get("StartTime", "")), rc, errs)


def _epoch(text: str) -> float:
    """SIPp's time stamps: 'YYYY-MM-DD<TAB>HH:MM:SS.uuuuuu<TAB>EPOCH.uuuuuu' (ElapsedTime has
    only whole seconds)."""
    try:
        return float(text.split()[-1])
    except (IndexError, ValueError):
        return 0.0


class Sipp:
    """One SIPp process (UAS in the background, or a bounded UAC run)."""

    def __init__(self, workdir: Path, name: str, scenario: str, *, port: int, calls: int, timeout_s: float,
                 cpus: str | None, target: str | None = None, rate: float | None = None,
                 keys: dict[str, str] | None = None, inf: Path | None = None, pause_ms: int | None = None):
        self.workdir = workdir
        self.port = port
        self.stats_file = workdir / f"{name}.stats.csv"
        self.errors_file = workdir / f"{name}.errors.log"
        self.out_file = workdir / f"{name}.out"
        cmd = [SIPP, *([target] if target else []), "-sf", str(SCENARIOS / f"{scenario}.xml"), "-t", "u1",
               "-i", IP, "-bind_local", "-p", str(port), "-m", str(calls),
               "-timeout", f"{int(timeout_s)}s", "-timeout_error", "-nostdin",
               "-default_behaviors", "all,-abortunexp", "-recv_timeout", "8s",
               "-trace_stat", "-stf", str(self.stats_file), "-fd", "1",
               "-trace_err", "-error_file", str(self.errors_file), "-max_recv_loops", "1000"]
        if rate:
            cmd += ["-r", f"{rate:g}", "-rp", "1000"]
        if pause_ms is not None:
            cmd += ["-d", str(pause_ms)]
        for k, v in (keys or {}).items():
            cmd += ["-key", k, v]
        if inf:
            cmd += ["-inf", str(inf)]
        self.cmd = pinned(cpus, cmd)
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.timeout_s = timeout_s

    def start(self, wait_bound: bool = False) -> "Sipp":
        with open(self.out_file, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.started = time.monotonic()
        if wait_bound:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"sipp exited early: {self.out_file.read_text(errors='replace')[-2000:]}")
                if subprocess.run(["ss", "-Hlnu", f"sport = :{self.port}"], capture_output=True,
                                  text=True, timeout=5).stdout.strip():
                    return self
                time.sleep(0.02)
            raise RuntimeError(f"sipp did not bind {IP}:{self.port}")
        return self

    def wait(self, timeout: float | None = None) -> SippStats:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=self.timeout_s + 10 if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            pass
        stop_process(self.proc, timeout=3)
        return SippStats.parse(self.stats_file, self.errors_file, self.proc.returncode)

    def stop(self) -> SippStats:
        assert self.proc is not None
        stop_process(self.proc, timeout=3)
        return SippStats.parse(self.stats_file, self.errors_file, self.proc.returncode)


TM_WAIT_S = 6.0
"""tm's wait timer (5 s) and a margin: a transaction's shared memory is freed after it."""
TRUNKS = 1000
"""Distinct AoRs of the REGISTER flow (SIPp injection file, used in order)."""
WARM_RATE = 500


def users_file(workdir: Path, count: int = TRUNKS) -> Path:
    path = workdir / "users.csv"
    if not path.exists():
        path.write_text("SEQUENTIAL\n" + "".join(f"49301{i:05d}\n" for i in range(count)))
    return path


# --------------------------------------------------------------------------- proxies

@dataclass
class Target:
    """What SIPp's UAC sends to. Subclasses start and stop a proxy in front of the UAS."""

    key: str
    label: str
    workers: int = 2
    cpus: str | None = None
    workdir: Path | None = None
    provider_port: int = 0
    internal_port: int = 0
    external_port: int = 0
    is_proxy: bool = True
    shm_mb: int = SHM_MB
    # calls' media anchored by an rtpengine (the same command line and ng flags for b and c)
    media: bool = False
    proc: subprocess.Popen | None = None
    log: Path | None = None

    def rpc_socket(self) -> Path | None:
        return None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def start(self, workdir: Path, provider_port: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        pass

    @property
    def entry_port(self) -> int:
        return self.internal_port

    def kamailio_pids(self) -> list[int]:
        return []

    def other_pids(self) -> list[int]:
        """Processes of the target besides Kamailio (trunkproxy's control plane)."""
        return []

    def media_pids(self) -> list[int]:
        """The target's rtpengine (media mode)."""
        return []

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log, lines) if self.log else ""


@dataclass
class Direct(Target):
    is_proxy: bool = False

    def start(self, workdir: Path, provider_port: int) -> None:
        self.provider_port = provider_port

    @property
    def entry_port(self) -> int:
        return self.provider_port


def _wait_ping(port: int, proc: subprocess.Popen, timeout: float, what: str, log: Path,
               extra=lambda: True, probe=None) -> None:
    """Until `probe()` (default: an OPTIONS to `port` answered 200) holds."""
    probe = probe or (lambda: sip_ping(port) == 200)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if extra() and probe():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready within {timeout}s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


MEDIA_ENDPOINT = "iflo"
"""The benchmark endpoint's name: its rtpengine interfaces and ng flags, the reference's too."""


def media_argv(control_port: int) -> list[str]:
    """The rtpengine trunkproxy runs for the benchmark's endpoint (trunkproxy.media.plan)."""
    from trunkproxy.config.model import MediaSettings
    from trunkproxy.media.plan import endpoint_interfaces, rtpengine_argv

    kernel = 0 if Path("/proc/rtpengine").exists() else -1
    return rtpengine_argv(shutil.which("rtpengine") or "rtpengine", MediaSettings(control_port=control_port),
                          list(endpoint_interfaces(MEDIA_ENDPOINT, IP, IP, None)), kernel, verbose=False)


def reference_cfg(workers: int, internal_port: int, external_port: int, provider_port: int, run_dir: Path,
                  instance_networks: str = "127.0.0.0/8", media_control_port: int | None = None) -> str:
    from trunkproxy.media.plan import offer_flags

    values = {
        "WORKERS": str(workers), "INT_IP": IP, "INT_PORT": str(internal_port), "EXT_IP": IP,
        "EXT_PORT": str(external_port), "PROVIDER": f"sip:{IP}:{provider_port}", "RUN_DIR": str(run_dir),
        "INSTANCE_NETWORKS": instance_networks,
        "MEDIA_DEFINE": "#!define WITH_MEDIA" if media_control_port else "",
        "MEDIA_CONTROL": f"udp:127.0.0.1:{media_control_port}",
        "MEDIA_FROM_PBX": offer_flags(MEDIA_ENDPOINT, True), "MEDIA_FROM_PROVIDER": offer_flags(MEDIA_ENDPOINT, False),
    }
    text = REFERENCE_TMPL.read_text()
    for k, v in values.items():
        text = text.replace(f"@@{k}@@", v)
    return text


@dataclass
class KamailioTarget(Target):
    """A Kamailio the benchmark starts itself (not through `trunkproxy run`): all its
    processes are Kamailio's; `temp_dir` (sockets, pid file) is removed when it stops."""

    # runs Kamailio under a tool (bench/instructions.py: valgrind --tool=callgrind)
    prefix: tuple[str, ...] = ()
    start_timeout_s: float = 15.0
    stop_timeout_s: float = 5.0
    # how a started proxy is known to be ready (None: it answers an OPTIONS)
    ready_probe: Callable[[], bool] | None = None
    run_dir: Path | None = None  # where its ctl and jsonrpc sockets are
    temp_dir: Path | None = None

    def _launch(self, argv: list[str], what: str, env: dict | None = None) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(pinned(self.cpus, [*self.prefix, *argv]), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        _wait_ping(self.internal_port, self.proc, self.start_timeout_s, what, self.log, probe=self.ready_probe)

    def stop(self) -> None:
        stop_process(self.proc, self.stop_timeout_s)
        self.proc = None
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = self.run_dir = None

    def kamailio_pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc else []

    def rpc_socket(self) -> Path | None:
        return self.run_dir / "rpc.sock" if self.run_dir else None


@dataclass
class Reference(KamailioTarget):
    """(b) the native-config Kamailio in bench/reference, Debian's allocator or TLSF."""

    tlsf: bool = False

    def start(self, workdir: Path, provider_port: int) -> None:
        self.workdir, self.provider_port = workdir, provider_port
        self.internal_port, self.external_port = free_port(), free_port()
        # sockets (ctl, jsonrpc) and pid files in a short temp dir (104-byte unix path limit)
        self.temp_dir = self.run_dir = run_dir = Path(tempfile.mkdtemp(prefix="tpb-"))
        cfg = workdir / f"ref-{self.key}.cfg"
        control = None
        if self.media:
            control = free_port()
            self.media_proc = subprocess.Popen(pinned(self.cpus, media_argv(control)), stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=open(workdir / "rtpengine.log", "ab"),
                                               start_new_session=True)
            time.sleep(0.5)
        cfg.write_text(reference_cfg(self.workers, self.internal_port, self.external_port, provider_port, run_dir,
                                     media_control_port=control))
        argv = [KAMAILIO, "-f", str(cfg), "-DD", "-E", "-Y", str(run_dir), "-m", str(self.shm_mb), "-M", str(PKG_MB)]
        if self.tlsf:
            argv += ["-x", "tlsf", "-X", "tlsf"]
        self.log = workdir / f"ref-{self.key}.log"
        self._launch(argv, f"reference kamailio ({self.key})")

    def stop(self) -> None:
        super().stop()
        stop_process(getattr(self, "media_proc", None))
        self.media_proc = None

    def media_pids(self) -> list[int]:
        proc = getattr(self, "media_proc", None)
        return [proc.pid] if proc else []


def trunkproxy_command() -> list[str]:
    script = Path(sys.executable).parent / "trunkproxy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "trunkproxy.cli"]


@dataclass
class Trunkproxy(Target):
    """(c) `trunkproxy -c FILE run`, one interface endpoint on lo, the provider pinned to the UAS.
    `control_plane_cpus`: once Kamailio runs, move the control plane (every thread of the
    `trunkproxy run` process) to these CPUs; None: it stays on the proxy's."""

    control_plane_cpus: str | None = None

    def toml(self, state_dir: Path) -> str:
        return "\n".join([
            "[proxy]",
            f'state_dir = "{state_dir}"',
            'hostname = "benchhost"',
            'instance_networks = ["127.0.0.0/8"]',
            f"workers = {self.workers}",
            f"shm_mb = {self.shm_mb}",
            "[api]",
            "enabled = false",
            "[media]",
            f"relay = {'true' if self.media else 'false'}",
            f"control_port = {free_port()}",
            "[[endpoints]]",
            'interface = "lo"',
            f'external_address = "{IP}"',
            f"external_port = {self.external_port}",
            f'internal_address = "{IP}"',
            f"internal_port = {self.internal_port}",
            # no OPTIONS keepalives to the SIPp "provider" (it would count them as failed calls)
            "keepalive_interval = 0",
            f'[providers."{PROVIDER_HOST}"]',
            f'addresses = ["{IP}:{self.provider_port}"]',
        ]) + "\n"

    def start(self, workdir: Path, provider_port: int) -> None:
        self.workdir, self.provider_port = workdir, provider_port
        self.internal_port, self.external_port = free_port(), free_port()
        run_dir = workdir / f"tp-{self.key}"
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = run_dir / "trunkproxy.toml"
        # short: the control plane's unix socket lives there (108-byte limit)
        self.state_dir = Path(tempfile.mkdtemp(prefix="tpb-"))
        cfg.write_text(self.toml(self.state_dir))
        self.log = run_dir / "trunkproxy.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(pinned(self.cpus, [*trunkproxy_command(), "-c", str(cfg), "run"]),
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        _wait_ping(self.internal_port, self.proc, 30, "trunkproxy", self.log,
                   extra=lambda: "trunkproxy running" in self.log.read_text(errors="replace"))
        if self.control_plane_cpus:
            cpus = {int(c) for c in self.control_plane_cpus.split(",")}
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                os.sched_setaffinity(int(task.name), cpus)

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)
        self.proc = None
        if getattr(self, "state_dir", None):
            shutil.copytree(self.state_dir, self.workdir / "tp-state", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.sock", "secret"))
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None

    def kamailio_pids(self) -> list[int]:
        if not self.proc:
            return []
        return [p for p in process_tree(self.proc.pid) if p != self.proc.pid and comm(p) == "kamailio"]

    def other_pids(self) -> list[int]:
        if not self.proc:
            return []
        return [p for p in process_tree(self.proc.pid)
                if p == self.proc.pid or comm(p) not in ("kamailio", "rtpengine")]

    def media_pids(self) -> list[int]:
        if not self.proc:
            return []
        return [p for p in process_tree(self.proc.pid) if p != self.proc.pid and comm(p) == "rtpengine"]

    def rpc_socket(self) -> Path | None:
        return self.state_dir / "run" / "iflo" / "rpc.sock" if getattr(self, "state_dir", None) else None


@dataclass
class GeneratedEndpoint(KamailioTarget):
    """trunkproxy's generated Kamailio config and settings for the benchmark's endpoint, run
    directly, without the control plane: a sink reads its REGISTER events off the socket and
    discards them, so that sending them costs what it costs in production (no socket to send
    to would make every tick raise). For tools that must start Kamailio themselves: the
    profile (another KEMI entry), the instruction counts (under valgrind)."""

    entry: Path | None = None  # another KEMI entry module instead of kemi_entry.py
    env: dict = field(default_factory=dict)
    events_received: int = 0  # datagrams the sink read
    _sink: socket.socket | None = None

    def _open_sink(self, path: Path) -> None:
        sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sink.bind(str(path))
        self._sink = sink

        def drain() -> None:
            while True:
                try:
                    if not sink.recv(65536):
                        return  # shut down by stop()
                except OSError:
                    return
                self.events_received += 1

        threading.Thread(target=drain, name=f"{self.key}-event-sink", daemon=True).start()

    def stop(self) -> None:
        super().stop()
        if self._sink is not None:
            try:
                self._sink.shutdown(socket.SHUT_RDWR)  # wakes the reader
            except OSError:
                pass
            self._sink.close()
            self._sink = None

    def start(self, workdir: Path, provider_port: int) -> None:
        from trunkproxy.config.load import load_config
        from trunkproxy.kamailio.process import kamailio_argv
        from trunkproxy.supervisor import Supervisor

        self.workdir, self.provider_port = workdir, provider_port
        self.internal_port, self.external_port = free_port(), free_port()
        self.temp_dir = Path(tempfile.mkdtemp(prefix="tpb-"))
        toml = workdir / f"{self.key}.toml"
        toml.write_text(Trunkproxy.toml(self, self.temp_dir))
        config = load_config(toml)
        sup = Supervisor(config)
        sup.prepare()
        self._open_sink(Path(sup.events_socket))
        resolved = sup.endpoints[0]
        if self.entry:
            cfg, n = re.subn(r'modparam\("app_python3", "load", "[^"]*"\)',
                             f'modparam("app_python3", "load", "{self.entry}")', resolved.config_path.read_text())
            assert n == 1, "generated config has no app_python3 load modparam"
            resolved.config_path.write_text(cfg)
        self.run_dir = resolved.run_dir
        proxy = config.proxy
        argv = kamailio_argv(proxy.kamailio_binary, resolved.config_path, resolved.run_dir, proxy.shm_mb, proxy.pkg_mb)
        self.log = workdir / f"{self.key}.log"
        self._launch(argv, f"generated endpoint ({self.key})",
                     env=dict(os.environ, TRUNKPROXY_ENDPOINT_SETTINGS=str(resolved.settings_path), **self.env))


def make_targets(keys: list[str], workers: int, proxy_cpus: str | None, shm_mb: int = SHM_MB,
                 control_plane_cpus: str | None = None, media: bool = False) -> list[Target]:
    targets = _make_targets(keys, workers, proxy_cpus)
    for t in targets:
        t.shm_mb = shm_mb
        t.media = media
        if isinstance(t, Trunkproxy):
            t.control_plane_cpus = control_plane_cpus
    return targets


def _make_targets(keys: list[str], workers: int, proxy_cpus: str | None) -> list[Target]:
    known = {
        "a": lambda: Direct("a", "SIPp UAC -> UAS directly", workers, None),
        "b": lambda: Reference("b", "native Kamailio, Debian default allocator", workers, proxy_cpus, tlsf=False),
        "b_tlsf": lambda: Reference("b_tlsf", "native Kamailio, -x tlsf -X tlsf", workers, proxy_cpus, tlsf=True),
        "c": lambda: Trunkproxy("c", "trunkproxy endpoint (trunkproxy run)", workers, proxy_cpus),
    }
    unknown = set(keys) - set(known)
    if unknown:
        raise SystemExit(f"unknown target(s) {sorted(unknown)}: choose from {sorted(known)}")
    return [known[k]() for k in keys]


# --------------------------------------------------------------------------- one step

FLOWS = {
    # flow: (uac scenario, uas scenario, hold ms between ACK and BYE)
    "call": ("call_uac", "call_uas"),
    "register": ("register_uac", "register_uas"),
}
CALL_HOLD_MS = 100


@dataclass
class StepResult:
    target: str
    flow: str
    rate: float
    calls: int
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    uas_failed: int = 0
    uas_retransmissions: int = 0
    elapsed_s: float = 0.0
    achieved_rate: float = 0.0
    rcvbuf_errors: int = 0
    cpu_s: float | None = None  # Kamailio processes, during the run
    other_cpu_s: float | None = None  # trunkproxy's control plane, during the run
    media_cpu_s: float | None = None  # the target's rtpengine, during the run
    idle_cpu_s: float | None = None  # Kamailio, measured idle for the same duration before
    sipp_cpu_s: float | None = None  # UAC + UAS
    shm_idle: int | None = None  # Kamailio shared memory in use before the run (bytes)
    shm_warm: list | None = None  # before / after the REGISTER warm-up, once its transactions are gone
    shm_peak: int | None = None  # highest sample during the run
    other_rss_kb: list | None = None  # control plane RSS before / after the run
    shm_alloc_errors: int = 0  # "could not allocate shared memory" in the proxy's log
    cpu_busy: dict = field(default_factory=dict)  # busy fraction per CPU during the run
    passed: bool = False
    why: str = ""
    diagnostics: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not (k == "diagnostics" and not v)}


def run_step(target: Target, flow: str, rate: float, calls: int, workdir: Path, sipp_cpus: str | None,
             measure_idle_s: float = 0.0, warm_up: bool = True) -> StepResult:
    """Fresh UAS, fresh proxy, one bounded UAC run at `rate`; everything stopped afterwards.

    REGISTER steps first register every trunk once, unmeasured (`warm_up`), for every target
    alike: what is measured are refreshes, as on a host that has been running for a while."""
    uac_scn, uas_scn = FLOWS[flow]
    step_dir = workdir / f"{target.key}-{flow}-{int(rate)}-{uuid.uuid4().hex[:6]}"
    step_dir.mkdir(parents=True)
    res = StepResult(target.key, flow, rate, calls)
    timeout = calls / rate * 2 + 15
    warm = TRUNKS if warm_up and flow == "register" else 0
    uas_port, uac_port = free_port(), free_port()
    uas = Sipp(step_dir, "uas", uas_scn, port=uas_port, calls=calls + warm, timeout_s=timeout + warm / WARM_RATE + 20,
               cpus=sipp_cpus)
    uac = None
    try:
        uas.start(wait_bound=True)
        target.start(step_dir, uas_port)
        entry = target.entry_port
        keys = {"route": f"sip:{IP}:{entry};lr", "domain": PROVIDER_HOST}
        if warm:
            shm_before_warm = shm_used(target.rpc_socket()) if measure_idle_s else None
            # from the port the measured UAC uses: a PBX refreshes from the flow it registered from
            warm_dir = step_dir / "warm"
            warm_dir.mkdir()
            warm_uac = Sipp(warm_dir, "uac", uac_scn, port=uac_port, calls=warm, timeout_s=warm / WARM_RATE + 15,
                            cpus=sipp_cpus, target=f"{IP}:{entry}", rate=WARM_RATE, keys=keys,
                            inf=users_file(warm_dir))
            warm_uac.start()
            ws = warm_uac.wait()
            if ws.successful != warm:
                raise RuntimeError(f"warm-up: {ws.successful} of {warm} REGISTERs succeeded")
            if shm_before_warm is not None:
                time.sleep(TM_WAIT_S)  # tm frees the warm-up's transactions: what stays is per registration
                res.shm_warm = [shm_before_warm, shm_used(target.rpc_socket())]
        uac = Sipp(step_dir, "uac", uac_scn, port=uac_port, calls=calls, timeout_s=timeout, cpus=sipp_cpus,
                   target=f"{IP}:{entry}", rate=rate, keys=keys,
                   inf=users_file(step_dir) if flow == "register" else None,
                   pause_ms=CALL_HOLD_MS if flow == "call" else None)
        kpids, opids, mpids = target.kamailio_pids(), target.other_pids(), target.media_pids()
        if measure_idle_s and kpids:
            idle0 = cpu_seconds(kpids)
            time.sleep(measure_idle_s)
            res.idle_cpu_s = cpu_seconds(kpids) - idle0
        rcv0 = udp_rcvbuf_errors()
        cpu0, ocpu0, mcpu0 = cpu_seconds(kpids), cpu_seconds(opids), cpu_seconds(mpids)
        busy0 = cpu_times()
        sock = target.rpc_socket()
        res.shm_idle = shm_used(sock)
        rss0 = rss_kb(opids)
        uac.start()
        spids = [uas.proc.pid, uac.proc.pid]
        scpu0 = cpu_seconds([uas.proc.pid])
        scpu, next_sample = scpu0, 0.0
        while uac.proc.poll() is None:  # the UAC's own CPU can only be read while it lives
            scpu = cpu_seconds(spids)
            if sock and time.monotonic() >= next_sample:  # a few samples: each costs the proxy an RPC
                next_sample = time.monotonic() + 1.0
                used = shm_used(sock)
                if used is not None:
                    res.shm_peak = max(res.shm_peak or 0, used)
            time.sleep(0.05)
        st = uac.wait()
        cpu1, ocpu1, mcpu1 = cpu_seconds(kpids), cpu_seconds(opids), cpu_seconds(mpids)
        if mpids:
            res.media_cpu_s = round(mcpu1 - mcpu0, 3)
        res.cpu_busy = cpu_busy(busy0, cpu_times())
        res.sipp_cpu_s = round(scpu - scpu0, 3)
        if opids:
            res.other_rss_kb = [rss0, rss_kb(opids)]
        res.rcvbuf_errors = udp_rcvbuf_errors() - rcv0
        if kpids:
            res.cpu_s = round(cpu1 - cpu0, 3)
        if opids:
            res.other_cpu_s = round(ocpu1 - ocpu0, 3)
        us = uas.wait(timeout=3)
        res.successful, res.failed, res.retransmissions = st.successful, st.failed, st.retransmissions
        res.uas_failed, res.uas_retransmissions = us.failed, us.retransmissions
        res.elapsed_s = st.elapsed_s
        hold = CALL_HOLD_MS / 1000 if flow == "call" else 0.0
        busy = max(st.elapsed_s - hold, 1e-3)
        res.achieved_rate = round(st.successful / busy, 1)
        failed = st.failed + us.failed + (calls - st.successful - st.failed)
        retrans = st.retransmissions + us.retransmissions
        reasons = []
        if failed:
            reasons.append(f"{failed} failed/missing calls")
        if retrans > 0.0005 * calls:
            reasons.append(f"{retrans} retransmissions > 0.05% of {calls}")
        if res.achieved_rate < 0.95 * rate:
            reasons.append(f"achieved {res.achieved_rate:.0f}/s < 95% of {rate:g}/s")
        res.shm_alloc_errors = target.log_text().count("could not allocate shared memory")
        if res.shm_alloc_errors:
            reasons.append(f"proxy out of shared memory ({res.shm_alloc_errors} allocation errors)")
        res.passed = not reasons
        res.why = "; ".join(reasons)
        if not res.passed:
            res.diagnostics = {"uac_errors": st.errors[-800:], "uas_errors": us.errors[-800:],
                               "uac_rc": st.returncode, "proxy_log": target.log_tail(15)[-1500:]}
    except RuntimeError as exc:
        res.passed, res.why = False, f"start failed: {exc}"[:2000]
    finally:
        if uac and uac.proc:
            stop_process(uac.proc, 2)
        if uas.proc:
            stop_process(uas.proc, 2)
        target.stop()
    return res
