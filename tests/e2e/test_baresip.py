"""A real SIP user agent as the trunk client: baresip with the trunkproxy endpoint as outbound proxy.

    baresip (127.0.0.5, account 4930111@tel.example.test, outbound="sip:<endpoint internal>")
        -> trunkproxy endpoint (`trunkproxy run`, real Kamailio)
        -> Kamailio provider registrar for tel.example.test (digest auth), PSTN = SIPp

baresip runs headless with its own config directory (no audio devices: `aubridge` as source
and player; `net_interface` = its loopback address), is driven over its `ctrl_tcp` module
(netstring JSON commands, events back on the same connection) and stopped by PID. Skipped when
baresip or its modules are missing. baresip 1.0.0 appends `;lr` to the outbound URI itself
(`outbound=...;lr` gives `Route: <...;lr;lr>`), so the account leaves it out. It registers at
once on start-up, before ctrl_tcp accepts us: registration is read with `reginfo`, not events.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from .endpoint import ProviderPin
from .procs import free_port, read_log, run_failed, stop_process, tail, wait_until

pytestmark = pytest.mark.e2e

BARESIP = shutil.which("baresip") or "/usr/bin/baresip"
MODULE_PATH = Path("/usr/lib/baresip/modules")
MODULES = ("g711", "aubridge", "account", "menu", "ctrl_tcp")
REGISTRAR = "tel.example.test"
USER, PASSWORD = "4930111", "secret111"
BARESIP_IP = "127.0.0.5"


def _baresip_missing() -> str | None:
    if not os.access(BARESIP, os.X_OK):
        return "baresip not installed (Debian package 'baresip', scripts/install-system-deps --test)"
    missing = [m for m in MODULES if not (MODULE_PATH / f"{m}.so").exists()]
    if missing:
        return f"baresip modules missing in {MODULE_PATH}: {', '.join(missing)}"
    return None


class Baresip:
    """One headless baresip with a config dir of its own, driven over ctrl_tcp."""

    def __init__(self, workdir: Path, account: str, *, sip_ip: str = BARESIP_IP):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sip_ip = sip_ip
        self.sip_port = free_port(sip_ip)
        self.ctrl_port = free_port("127.0.0.1")
        self.log_path = self.dir / "baresip.log"
        self.account = account
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.events: list[dict] = []
        self.responses: list[dict] = []
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def write_config(self) -> None:
        modules = "\n".join(f"module\t\t\t{m}.so" for m in ("g711", "aubridge"))
        (self.dir / "config").write_text(f"""\
poll_method\t\tepoll
sip_listen\t\t{self.sip_ip}:{self.sip_port}
call_local_timeout\t30
call_max_calls\t\t4
audio_player\t\taubridge,e2e
audio_source\t\taubridge,e2e
audio_alert\t\taubridge,e2e
audio_level\t\tno
rtp_stats\t\tno
net_interface\t\t{self.sip_ip}
module_path\t\t{MODULE_PATH}
{modules}
module_tmp\t\taccount.so
module_app\t\tmenu.so
module_app\t\tctrl_tcp.so
ctrl_tcp_listen\t\t127.0.0.1:{self.ctrl_port}
""")
        (self.dir / "accounts").write_text(self.account + "\n")
        (self.dir / "contacts").write_text("")

    def start(self, timeout: float = 10.0) -> "Baresip":
        self.write_config()
        self._log = open(self.log_path, "ab")
        # -s: SIP trace into the log (shown on failure); stdin closed: no interactive UI
        self.proc = subprocess.Popen([BARESIP, "-f", str(self.dir), "-s"], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"baresip exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=0.5)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"baresip ctrl_tcp did not come up in {timeout}s:\n{self.log_tail()}")
        self.sock.settimeout(0.5)
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        return self

    # ---- ctrl_tcp: netstrings "LEN:{json}," both ways

    def _read_loop(self) -> None:
        buf = b""
        while self.sock is not None:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            buf += data
            while b":" in buf:
                head, rest = buf.split(b":", 1)
                if not head.isdigit():
                    buf = b""
                    break
                n = int(head)
                if len(rest) < n + 1:
                    break
                payload, buf = rest[:n], rest[n + 1:]
                try:
                    obj = json.loads(payload)
                except ValueError:
                    continue
                with self._lock:
                    (self.events if obj.get("event") else self.responses).append(obj)

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict:
        token = f"t{time.monotonic_ns()}"
        payload = json.dumps({"command": command, "params": params, "token": token}).encode()
        self.sock.sendall(str(len(payload)).encode() + b":" + payload + b",")

        def answered():
            with self._lock:
                return next((r for r in self.responses if r.get("token") == token), None)

        return wait_until(answered, timeout=timeout, message=f"baresip answer to {command} {params}")

    def event_types(self) -> list[str]:
        with self._lock:
            return [e.get("type", "") for e in self.events]

    def wait_event(self, kind: str, timeout: float = 10.0, after: int = 0) -> dict:
        def seen():
            with self._lock:
                return next((e for e in self.events[after:] if e.get("type") == kind), None)

        try:
            return wait_until(seen, timeout=timeout, interval=0.05, message=f"baresip event {kind}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; events so far: {self.event_types()}") from None

    def wait_registered(self, timeout: float = 15.0) -> str:
        """Poll `reginfo` until the account shows OK (REGISTER_OK may fire before we connect)."""
        last = {}

        def ok():
            last.update(self.command("reginfo"))
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(last.get("data", "")))
            return text if re.search(r"4930111@\S+\s+OK\b", text) else None

        try:
            return wait_until(ok, timeout=timeout, interval=0.2, message="baresip registered (reginfo OK)")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last reginfo: {last.get('data')!r}") from None

    def received_sip(self) -> list[str]:
        """SIP messages baresip received, from its `-s` trace (blocks "UDP src -> dst" + message)."""
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log())
        me = f"-> {self.sip_ip}:{self.sip_port}"
        out = []
        for block in text.split("\n#\n")[1:]:
            first, _, msg = block.partition("\n")
            if first.rstrip().endswith(me):
                out.append(msg.split("\n\n", 1)[0])
        return out

    # ---- lifecycle

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None and self.sock is not None:
            try:
                payload = json.dumps({"command": "quit", "params": "", "token": "quit"}).encode()
                self.sock.sendall(str(len(payload)).encode() + b":" + payload + b",")
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        stop_process(self.proc, timeout)
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return read_log(self.log_path)

    def log_tail(self, lines: int = 150) -> str:
        return tail(self.log(), lines)


@pytest.fixture
def make_baresip(tmp_path, request):
    why = _baresip_missing()
    if why:
        pytest.skip(why)
    started: list[Baresip] = []

    def make(endpoint, **account_params) -> Baresip:
        params = {"auth_pass": PASSWORD, "outbound": f'"sip:{endpoint.internal_hostport}"',
                  "regint": "60", "answermode": "auto", "mwi": "no", "audio_codecs": "pcma,pcmu"}
        params.update(account_params)
        account = f"<sip:{USER}@{REGISTRAR}>" + "".join(f";{k}={v}" for k, v in params.items())
        ua = Baresip(tmp_path / f"baresip{len(started) + 1}", account)
        started.append(ua)
        return ua.start()

    yield make
    for ua in started:
        ua.stop()
    if run_failed(request):
        for ua in started:
            print(f"\n===== baresip log ({ua.log_path}) =====\n{ua.log_tail()}")
            print(f"events: {json.dumps(ua.events, indent=1)[-4000:]}")


@pytest.fixture
def make_run(make_endpoint):
    """make_endpoint for one provider, the API on (the registration monitor), with `path=`."""

    def make(provider, *, path: bool = True):
        run = make_endpoint(providers=[ProviderPin(REGISTRAR, [provider.hostport])], api_port=free_port(),
                            path=path)
        assert ("path = false" in run.config_path.read_text()) == (not path)
        return run

    return make


def _registered_in_api(run) -> dict | None:
    with urllib.request.urlopen(run.api_url + "/api/registrations", timeout=5) as resp:
        regs = json.loads(resp.read().decode())["registrations"]
    return next((r for r in regs if r["aor"] == f"sip:{USER}@{REGISTRAR}" and r["state"] == "registered"), None)


def _register(make_baresip, run, provider) -> Baresip:
    ua = make_baresip(run)
    ua.wait_registered(timeout=15)
    provider.wait_registered(USER)
    return ua


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("path", [pytest.param(True, id="path-default"), pytest.param(False, id="path-off")])
def test_baresip_registers_through_the_endpoint(provider, make_run, make_baresip, path):
    run = make_run(provider, path=path)
    ua = _register(make_baresip, run, provider)

    # challenged once, then authenticated; both from the endpoint's external socket
    registers = provider.received("REGISTER")
    assert len(registers) >= 2
    assert all(r.peer[:2] == ("127.0.0.1", run.external_port) for r in registers)
    assert registers[0].msg.header("Authorization") is None and registers[1].msg.header("Authorization")
    assert [m.status for m in provider.sent("REGISTER")][:2] == [401, 200]

    # the provider's location: the endpoint's external address with a flow token, never baresip's
    binding = provider.contacts(USER)[0]
    assert f"127.0.0.1:{run.external_port}" in binding["contact"] and "tpt=" in binding["contact"]
    assert BARESIP_IP not in binding["contact"]
    # baresip sends no `Supported: path`, so the endpoint adds no Path (a registrar would 420 it)
    assert not binding.get("path")
    assert 420 not in [m.status for m in provider.sent("REGISTER")]

    # the registration monitor: API and CLI say registered, from baresip's real flow
    reg = wait_until(lambda: _registered_in_api(run), timeout=8, message="registered in the API")
    assert reg["flow"] == f"udp:{BARESIP_IP}:{ua.sip_port}"
    assert reg["last_code"] == 200 and reg["registrar"] == REGISTRAR and reg["expires"] == 60
    cli = run.cli("status", "--json")
    assert cli.returncode == 0, cli.stderr
    rows = [r for r in json.loads(cli.stdout)["registrations"] if r["aor"] == f"sip:{USER}@{REGISTRAR}"]
    assert [r["state"] for r in rows] == ["registered"]

    assert "REGISTER_FAIL" not in ua.event_types() and "Bad Extension" not in ua.log()
    assert run.proc.poll() is None and "exited with code" not in run.log()


def test_inbound_call_from_the_provider_reaches_baresip(provider, make_run, make_baresip, sipp):
    run = make_run(provider)
    ua = _register(make_baresip, run, provider)
    mark = len(ua.events)

    caller = sipp.run("provider_uac", provider.hostport, vars={"to_user": USER}, pause_ms=500, timeout=15)
    caller.assert_ok(calls=1)
    ua.wait_event("CALL_ESTABLISHED", timeout=5, after=mark)
    ua.wait_event("CALL_CLOSED", timeout=5, after=mark)

    # provider -> endpoint's external socket (the flow token in the binding) -> baresip
    invite_out = provider.sent("INVITE")[0]
    assert invite_out.peer[:2] == ("127.0.0.1", run.external_port)
    assert "200 OK" in caller.messages and "BYE " in caller.messages
    # the provider's side never learns baresip's address: 200's Contact is the endpoint's
    answer = next(m.msg for m in provider.received("INVITE") if m.msg.status == 200)
    assert f"127.0.0.1:{run.external_port}" in answer.header("Contact")
    assert BARESIP_IP not in answer.header("Contact")
    assert run.proc.poll() is None and "exited with code" not in run.log()


def test_outbound_call_from_baresip_reaches_the_pstn(make_provider, make_run, make_baresip, sipp):
    pstn_port = free_port()
    provider = make_provider(pstn=("127.0.0.1", pstn_port))
    run = make_run(provider)                     # default endpoint settings
    ua = make_baresip(run, regint="0")           # a call needs no registration
    far = sipp.background("provider_uas", local_port=pstn_port, timeout=20)

    answer = ua.command("dial", f"sip:4989123@{REGISTRAR}")
    assert answer.get("ok"), answer
    ua.wait_event("CALL_ESTABLISHED", timeout=10)
    time.sleep(0.3)
    assert ua.command("hangup").get("ok")
    ua.wait_event("CALL_CLOSED", timeout=5)

    result = far.wait(10)
    assert result.successful == 1, result.diagnostics()
    invite = provider.received("INVITE")[0]
    assert invite.peer[:2] == ("127.0.0.1", run.external_port)
    assert invite.msg.ruri.startswith("sip:4989123@")
    assert BARESIP_IP not in invite.msg.header("Contact")
    byes = [m for m in provider.received("BYE") if m.msg.is_request]
    assert byes and byes[0].peer[:2] == ("127.0.0.1", run.external_port), "BYE did not follow the route set"
    assert run.proc.poll() is None and "exited with code" not in run.log()


def test_in_dialog_requests_reach_baresip_without_an_empty_route(provider, make_run, make_baresip, sipp):
    # the provider sends both of the endpoint's Record-Route entries in one Route header line
    run = make_run(provider)
    ua = _register(make_baresip, run, provider)
    sipp.run("provider_uac", provider.hostport, vars={"to_user": USER}, pause_ms=300, timeout=15).assert_ok(calls=1)
    ua.wait_event("CALL_CLOSED", timeout=5)
    in_dialog = [m for m in ua.received_sip() if m.startswith(("ACK ", "BYE "))]
    assert len(in_dialog) >= 2, ua.received_sip()
    for msg in in_dialog:
        routes = [line for line in msg.splitlines() if line.lower().startswith("route:")]
        assert all(line.split(":", 1)[1].strip() for line in routes), msg
