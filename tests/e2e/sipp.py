"""SIPp runs for e2e tests: bounded client runs and background servers, parsed results."""
from __future__ import annotations

import csv
import io
import itertools
import re
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .procs import (DOMAIN, SCENARIO_DIR, SIPP, UNREACHABLE_CONTACT, stop_process, free_port,
                    netns_prefix)

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
            stop_process(self.proc)
        return self._collect(timed_out)

    def stop(self) -> SippResult:
        if self._result is None:
            if self.proc.poll() is None:
                # SIGUSR1 would dump; SIGTERM makes SIPp write its final stats and exit
                stop_process(self.proc, timeout=3)
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
                stop_process(proc)
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


def trace_messages(trace: str) -> list[tuple[str, str]]:
    """SIPp -trace_msg text -> [(direction 'sent'|'received', message text)].

    Each message is preceded by a dashed line with a timestamp and "UDP message sent (N bytes):"
    or "UDP message received [N] bytes :"."""
    out = []
    for block in re.split(r"^-{10,}.*$", trace, flags=re.M)[1:]:
        head, _, text = block.strip("\r\n").partition("\n")
        direction = "received" if "received" in head else "sent" if "sent" in head else "?"
        text = text.strip("\r\n")
        if text:
            out.append((direction, text))
    return out
