"""Fixtures for hosting tests: a throwaway real Consul agent, a host config, a trunk store."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from trunkproxy.config.model import Config
from trunkproxy.hosting.trunks import Trunk, TrunkStore

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[2]
TELEKOM_JSON = (DATA / "sipproxy_telekom.json").read_text()
KV_KEY = "config/csphost01/system/outboundproxy"
PROXY_NAME = "csphost01-ifens5.cs-proxy.service.pascom"


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (Consul's DNS and serf use both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def consul_binary() -> str | None:
    return shutil.which("consul") or next(
        (str(p) for p in [REPO / ".tools/bin/consul"] if p.exists()), None)


@dataclass
class ConsulAgent:
    """`consul agent -dev` on free loopback ports; stopped by PID."""

    binary: str
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def dns(self) -> str:
        return f"127.0.0.1:{self.ports['dns']}"

    def start(self) -> None:
        if not self.ports:
            used: set[int] = set()
            for name in ("http", "dns", "serf_lan", "serf_wan", "server"):
                port = free_port()
                while port in used:
                    port = free_port()
                used.add(port)
                self.ports[name] = port
        hcl = "ports { " + " ".join(f"{k} = {v}" for k, v in self.ports.items()) + " grpc = -1 }"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "agent", "-dev", "-client", "127.0.0.1", "-bind", "127.0.0.1", "-domain", "pascom",
             "-node", "csphost01", "-hcl", hcl], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"consul exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.address}/v1/status/leader", timeout=1) as resp:
                    if resp.read().strip() not in (b"", b'""'):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"consul did not elect a leader in 30 s: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def http(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(f"{self.address}{path}", data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def kv_put(self, key: str, text: str) -> None:
        status, body = self.http("PUT", f"/v1/kv/{key}", text.encode())
        assert status == 200 and body.strip() == b"true", (status, body)

    def services(self) -> dict:
        return json.loads(self.http("GET", "/v1/agent/services")[1])


@pytest.fixture
def consul_agent(tmp_path: Path):
    binary = consul_binary()
    if binary is None:
        pytest.skip("CONSUL NOT INSTALLED — Consul tests SKIPPED. Run scripts/install-consul .tools/bin "
                    "(test.sh does) and put .tools/bin on PATH")
    agent = ConsulAgent(binary=binary, log_path=tmp_path / "consul.log")
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


def host_config(tmp_path: Path, consul: ConsulAgent | None = None, standalone: bool = False,
                **consul_settings) -> Config:
    """A hosting-mode host (Consul on: PBXs are given the endpoints' Consul DNS names; no agent
    given: one that does not answer, so pass kv_rules), or a standalone one (Consul off: the
    endpoints' internal addresses)."""
    data = {
        "proxy": {"hostname": "csphost01", "state_dir": str(tmp_path / "state")},
        "endpoints": [{"interface": "ens5", "external_address": "198.51.100.1"},
                      {"interface": "ens6", "external_address": "203.0.113.1"}],
    }
    if consul is not None:
        data["consul"] = {"enabled": True, "address": consul.address, **consul_settings}
    elif not standalone:
        data["consul"] = {"enabled": True, "address": "http://127.0.0.1:9", **consul_settings}
    return Config.model_validate(data)


@pytest.fixture
def store(tmp_path: Path) -> TrunkStore:
    store = TrunkStore(tmp_path / "instance" / "trunks.sqlite")
    store.add(Trunk(name="telekom", registrar="tel.t-online.de", username="0301234567", secret="s3cr3t-telekom"))
    store.add(Trunk(name="sipgate", registrar="sipgate.de", username="u1", secret="s3cr3t-sipgate",
                    fallback="telekom"))
    return store
