"""RFC 3263 in practice: the endpoint finds the provider through real DNS (dnsmasq with SRV
records) and fails over from a dead SRV target to the next one."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .procs import netns_prefix

pytestmark = [pytest.mark.e2e, pytest.mark.netns]


@pytest.fixture
def host_dns(topology, tmp_path):
    """dnsmasq inside the host namespace, which `ip netns exec` points at via /etc/netns/NAME/resolv.conf."""
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq not installed (scripts/install-system-deps --test)")
    etc = Path("/etc/netns") / topology.host.name
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    procs: list[subprocess.Popen] = []

    def start(*records: str) -> None:
        cmd = [*netns_prefix(topology.host.name), "dnsmasq", "--no-daemon", "--port", "53",
               "--listen-address", "127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
               "--log-queries", f"--log-facility={tmp_path / 'dnsmasq.log'}", *records]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
    shutil.rmtree(etc, ignore_errors=True)


def test_provider_found_by_srv_and_dead_target_skipped(topology, host_dns, make_provider, make_endpoint, sipp, tmp_path):
    ens5 = topology.add_uplink("ens5", "198.51.100", peer_ip_extra=["198.51.100.3"])
    provider = make_provider(ens5.peer_ip, 5070, netns=ens5.peer.name)
    # priority 10: an address where nothing answers; priority 20: the real registrar on port 5070
    host_dns("--srv-host=_sip._udp.tel.example.test,dead.tel.example.test,5060,10,50",
             "--srv-host=_sip._udp.tel.example.test,sip1.tel.example.test,5070,20,50",
             "--host-record=dead.tel.example.test,198.51.100.3",
             "--host-record=sip1.tel.example.test,198.51.100.2")
    endpoint = make_endpoint(providers=[], netns=topology.host.name, interface="ens5", external_ip=None,
                             internal_port=5060, external_port=5060)
    result = sipp.run("pbx_register", rsa=endpoint.internal_hostport, netns=topology.host.name, timeout=25)
    result.assert_ok(calls=1)
    assert provider.contacts("4930111")
    log = (tmp_path / "dnsmasq.log").read_text()
    assert "_sip._udp.tel.example.test" in log
