"""Hosting mode on a running endpoint, against a real Consul agent: service + DNS, live KV rules."""
from __future__ import annotations

import json

import dns.resolver
import pytest

from hosting.conftest import ConsulAgent, consul_binary

from .endpoint import ProviderPin
from .procs import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.consul]

KV_KEY = "config/csphost01/system/outboundproxy"


@pytest.fixture
def consul(tmp_path):
    binary = consul_binary()
    if binary is None:
        pytest.skip("CONSUL NOT INSTALLED: run scripts/install-consul .tools/bin (test.sh does)")
    agent = ConsulAgent(binary=binary, log_path=tmp_path / "consul.log")
    agent.start()
    yield agent
    agent.stop()


def _consul_toml(consul: ConsulAgent) -> str:
    return f'[consul]\nenabled = true\naddress = "{consul.address}"\ndomain = "pascom"\n'


def _resolve(consul: ConsulAgent, name: str, rdtype: str) -> list[str]:
    resolver = dns.resolver.Resolver(configure=False)
    host, port = consul.dns.split(":")
    resolver.nameservers, resolver.port = [host], int(port)
    try:
        return [r.to_text() for r in resolver.resolve(name, rdtype, lifetime=2)]
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []


def test_endpoint_registers_in_consul_and_resolves_by_seed_name(consul, provider, make_endpoint):
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])],
                             internal_ip="127.0.0.1", extra_toml=_consul_toml(consul))
    name = "csphost01-iflo.cs-proxy.service.pascom"
    wait_until(lambda: _resolve(consul, name, "A"), timeout=10, message=f"{name} in Consul DNS")
    assert _resolve(consul, name, "A") == ["127.0.0.1"]
    assert any(srv.endswith(f" {endpoint.internal_port} csphost01.node.dc1.pascom.") or
               f" {endpoint.internal_port} " in srv for srv in _resolve(consul, name, "SRV"))
    endpoint.stop()
    wait_until(lambda: not _resolve(consul, name, "A"), timeout=10, message="deregistration on stop")


def test_kv_rule_forces_tcp_on_running_endpoint_without_restart(consul, make_provider, make_endpoint, sipp):
    provider = make_provider()
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])],
                             extra_toml=_consul_toml(consul))
    sipp.run("pbx_register", rsa=endpoint.internal_hostport).assert_ok()
    assert {r.peer[2] for r in provider.received("REGISTER")} == {"udp"}
    pids_before = endpoint.kamailio_pids()

    consul.kv_put(KV_KEY, json.dumps({"tel.example.test": {
        "proxy": "csphost01-iflo.cs-proxy.service.pascom", "options": "\ntransport=tcp\n"}}))
    settings = endpoint.state_dir / "run" / "iflo" / "settings.json"
    wait_until(lambda: json.loads(settings.read_text())["providers"]["tel.example.test"]["transport"] == "tcp",
               timeout=10, message="KV rule reaching the endpoint")

    def registers_over_tcp() -> bool:
        before = len(provider.received("REGISTER"))
        ok = sipp.run("pbx_register", rsa=endpoint.internal_hostport).ok
        return ok and {r.peer[2] for r in provider.received("REGISTER")[before:]} == {"tcp"}

    # every Kamailio worker re-reads its settings within a second of the change
    wait_until(registers_over_tcp, timeout=10, interval=0.5, message="REGISTER over TCP after the KV change")
    assert endpoint.kamailio_pids() == pids_before  # nothing restarted


def test_consul_stopping_mid_run_keeps_endpoint_serving(consul, provider, make_endpoint, sipp):
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])],
                             extra_toml=_consul_toml(consul))
    consul.stop()
    wait_until(lambda: "consul" in endpoint.log().lower() and "warn" in endpoint.log().lower(), timeout=20,
               message="a warning about Consul")
    sipp.run("pbx_register", rsa=endpoint.internal_hostport).assert_ok()
    assert endpoint.proc.poll() is None
