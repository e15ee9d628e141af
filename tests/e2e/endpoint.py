"""`trunkproxy run` as users start it, as a test fixture: a TOML file in, a running endpoint out."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import urllib.request

import psutil
from prometheus_client.parser import text_string_to_metric_families

from .procs import free_port, netns_prefix, read_log, sip_ping, stop_process, tail


@dataclass
class ProviderPin:
    host: str
    addresses: list[str]
    transport: str | None = None
    srtp: bool = False


@dataclass(frozen=True)
class Metrics:
    """One scrape of /metrics: sample values by name and labels."""

    samples: dict[tuple[str, tuple], float]

    @classmethod
    def parse(cls, text: str) -> "Metrics":
        return cls({(s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(text) for s in family.samples})

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))


@dataclass
class TrunkproxyRun:
    workdir: Path
    providers: list[ProviderPin] = field(default_factory=list)
    interface: str = "lo"
    internal_ip: str = "127.0.0.1"
    internal_port: int | None = None
    external_ip: str | None = "127.0.0.1"
    external_port: int | None = None
    instance_networks: list[str] = field(default_factory=lambda: ["127.0.0.0/8"])
    netns: str | None = None
    api_port: int = 0
    extra_toml: str = ""
    secret_hex: str | None = None  # the host secret to start with (replicas share it)
    path: bool = True  # the endpoint's `path` setting (RFC 3327 Path on REGISTERs)
    # the endpoint's `allow_destinations` (None: not set). The default lets the suite's PBXs and
    # providers share 127.0.0.1, which the endpoint otherwise refuses as a destination (host
    # address, loopback, instance network: docs/routing.md, "Tenant isolation"), and reach the
    # providers of the namespace tests
    allow_destinations: list[str] | None = field(
        default_factory=lambda: ["127.0.0.1/32", "198.51.100.0/24", "203.0.113.0/24"])
    # `[media] relay` (None: not written, "auto": relayed where rtpengine is installed);
    # each run's rtpengine gets its own control port
    media_relay: bool | None = None
    media_control_port: int | None = None
    media_toml: str = ""  # more lines of [media]
    endpoint_toml: str = ""  # more lines of the [[endpoints]] entry
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.internal_port = self.internal_port or free_port(self.internal_ip)
        self.external_port = self.external_port or free_port(self.external_ip or "127.0.0.1")
        self.media_control_port = self.media_control_port or free_port()
        self.config_path = self.workdir / "trunkproxy.toml"
        self.log_path = self.workdir / "trunkproxy.log"

    @property
    def internal_hostport(self) -> str:
        return f"{self.internal_ip}:{self.internal_port}"

    @property
    def external_hostport(self) -> str:
        return f"{self.external_ip}:{self.external_port}"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def toml(self) -> str:
        networks = ", ".join(f'"{n}"' for n in self.instance_networks)
        external = f'external_address = "{self.external_ip}"\n' if self.external_ip and self.interface == "lo" else ""
        lines = [
            "[proxy]",
            f'state_dir = "{self.state_dir}"',
            'hostname = "csphost01"',
            f"instance_networks = [{networks}]",
            "workers = 2",
            "provider_timeout_ms = 3000",
            "[api]",
            f"enabled = {'true' if self.api_port else 'false'}",
            f"port = {self.api_port}",
            "[media]",
            f"control_port = {self.media_control_port}",
            "" if self.media_relay is None else f"relay = {'true' if self.media_relay else 'false'}",
            self.media_toml.strip(),
            "[[endpoints]]",
            f'interface = "{self.interface}"',
            external.rstrip(),
            f"external_port = {self.external_port}",
            f'internal_address = "{self.internal_ip}"',
            f"internal_port = {self.internal_port}",
            "keepalive_interval = 2",
            "" if self.path else "path = false",
            self.endpoint_toml.strip(),
        ]
        if self.allow_destinations is not None:
            lines.append("allow_destinations = [" + ", ".join(f'"{a}"' for a in self.allow_destinations) + "]")
        for pin in self.providers:
            lines.append(f'[providers."{pin.host}"]')
            lines.append("addresses = [" + ", ".join(f'"{a}"' for a in pin.addresses) + "]")
            if pin.transport:
                lines.append(f'transport = "{pin.transport}"')
            if pin.srtp:
                lines.append("srtp = true")
        return "\n".join(line for line in lines if line) + "\n" + self.extra_toml

    def start(self, timeout: float = 20.0) -> "TrunkproxyRun":
        self.config_path.write_text(self.toml())
        if self.secret_hex is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            (self.state_dir / "secret").write_text(self.secret_hex + "\n")
        cmd = [*netns_prefix(self.netns), sys.executable, "-m", "trunkproxy.cli", "-c", str(self.config_path), "run"]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"trunkproxy exited with {self.proc.returncode}:\n{self.log_tail()}")
            if "trunkproxy running" in self.log() and sip_ping(self.internal_ip, self.internal_port,
                                                               netns=self.netns) is not None:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"trunkproxy did not come up in {timeout}s:\n{self.log_tail()}")

    def reload(self, config_text: str | None = None) -> None:
        """Rewrite the configuration file (from the fields, or `config_text` as given) and SIGHUP."""
        self.config_path.write_text(self.toml() if config_text is None else config_text)
        self.proc.send_signal(signal.SIGHUP)

    def kamailio_pids(self) -> list[int]:
        if self.proc is None:
            return []
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc, timeout)
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return read_log(self.log_path)

    def log_tail(self, lines: int = 80) -> str:
        return tail(self.log(), lines)

    # --- added for the registration monitor tests

    @property
    def api_url(self) -> str:
        """Base URL of the HTTP API (`api_port` must be set)."""
        return f"http://127.0.0.1:{self.api_port}"

    def metrics(self) -> Metrics:
        """One scrape of the run's /metrics (`api_port` must be set)."""
        with urllib.request.urlopen(f"{self.api_url}/metrics", timeout=5) as response:
            return Metrics.parse(response.read().decode())

    def restart(self, timeout: float = 20.0) -> "TrunkproxyRun":
        """Stop `trunkproxy run` and start it again: same TOML, ports and state dir.

        The previous run's log is kept as `trunkproxy.log.N` (start() waits for its own
        "trunkproxy running" line in a fresh log).
        """
        self.stop()
        n = 1
        while self.log_path.with_name(f"{self.log_path.name}.{n}").exists():
            n += 1
        if self.log_path.exists():
            self.log_path.rename(self.log_path.with_name(f"{self.log_path.name}.{n}"))
        return self.start(timeout)

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run `trunkproxy -c <this run's toml> ARGS...` (e.g. "status", "--json"); text output."""
        cmd = [*netns_prefix(self.netns), sys.executable, "-m", "trunkproxy.cli", "-c", str(self.config_path), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
