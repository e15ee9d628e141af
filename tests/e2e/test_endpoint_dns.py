"""RFC 3263 in practice: the endpoint finds the provider through real DNS (dnsmasq with SRV
records) and fails over from a dead SRV target to the next one."""
from __future__ import annotations

import shutil
import subprocess
import sys
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


def test_allow_list_names_match_the_next_hop_and_a_name_resolving_inside_is_refused(
        topology, host_dns, make_provider, make_endpoint, sipp, tmp_path):

    ens5 = topology.add_uplink("ens5", "198.51.100", peer_ip_extra=["198.51.100.3"])
    provider = make_provider(ens5.peer_ip, 5070, netns=ens5.peer.name)
    host_dns("--srv-host=_sip._udp.tel.example.test,sip1.tel.example.test,5070,10,50",
             "--host-record=sip1.tel.example.test,198.51.100.2",
             "--host-record=other.example.test,198.51.100.3",  # a real address the list does not name
             "--host-record=inside.tel.example.test,127.0.0.1")  # a named host resolving to the host
    endpoint = make_endpoint(providers=[], netns=topology.host.name, interface="ens5", external_ip=None,
                             internal_port=5060, external_port=5060,
                             allow_destinations=["tel.example.test", "*.tel.example.test"])
    sipp.run("pbx_register", rsa=endpoint.internal_hostport, netns=topology.host.name, timeout=25).assert_ok(calls=1)
    assert provider.contacts("4930111")  # allowed by its name, found by SRV

    # a raw PBX inside the host namespace: refused for a name not listed, and for a listed
    # name that resolves to the host itself
    code = ("import sys; sys.path.insert(0, %r); from tests.e2e.rawsip import UdpPeer, request\n"
            "pbx = UdpPeer('127.0.0.1')\n"
            "for ruri in ('sip:1@other.example.test', 'sip:1@inside.tel.example.test:5999'):\n"
            "    pbx.send(request('MESSAGE', ruri, pbx), %r)\n"
            "    print(ruri, [m.status for m in pbx.receive(3.0) if m.status])\n") % (
        str(Path(__file__).resolve().parents[2]), endpoint.internal_hostport)
    out = subprocess.run([*netns_prefix(topology.host.name), sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.splitlines() == ["sip:1@other.example.test [403]", "sip:1@inside.tel.example.test:5999 [403]"], \
        out.stdout + out.stderr
    assert "not in allow_destinations" in endpoint.log() and "address of this host" in endpoint.log()
