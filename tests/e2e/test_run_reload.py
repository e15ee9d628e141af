"""SIGHUP: configuration changes take effect while running; a bad file changes nothing."""
from __future__ import annotations

import pytest

from .endpoint import ProviderPin
from .procs import wait_until
from .rawsip import UdpPeer, request

pytestmark = pytest.mark.e2e


def _registers_over(sipp, endpoint, provider, transport: str) -> bool:
    before = len(provider.received("REGISTER"))
    ok = sipp.run("pbx_register", rsa=endpoint.internal_hostport).ok
    return ok and {r.peer[2] for r in provider.received("REGISTER")[before:]} == {transport}


def test_provider_change_is_live_without_restarting_kamailio(make_provider, make_endpoint, sipp):
    provider = make_provider()
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])])
    assert _registers_over(sipp, endpoint, provider, "udp")
    pids = endpoint.kamailio_pids()
    endpoint.providers = [ProviderPin("tel.example.test", [provider.hostport], "tcp")]
    endpoint.reload()
    wait_until(lambda: "reload done" in endpoint.log(), timeout=10, message="reload logged")
    wait_until(lambda: _registers_over(sipp, endpoint, provider, "tcp"), timeout=10, interval=0.5,
               message="REGISTER over TCP after the reload")
    assert endpoint.kamailio_pids() == pids


def test_bad_file_is_refused_and_previous_configuration_stays(endpoint, provider, sipp):
    good = endpoint.config_path.read_text()
    endpoint.reload(good.replace("workers = 2", "workers = 2\nworkerz = 3"))
    wait_until(lambda: "reload refused" in endpoint.log(), timeout=10, message="refusal logged")
    log = endpoint.log()
    assert str(endpoint.config_path) in log and "proxy.workerz" in log and "unknown key" in log
    sipp.run("pbx_register", rsa=endpoint.internal_hostport).assert_ok()


def test_instance_network_change_restarts_only_that_endpoint_and_takes_effect(make_endpoint, provider):
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])])
    pbx = UdpPeer("127.0.0.3")
    try:
        pbx.send(request("OPTIONS", f"sip:{endpoint.internal_hostport}", pbx), endpoint.internal_hostport)
        assert [m.status for m in pbx.receive(2.0)] == [200]
        endpoint.instance_networks = ["127.0.0.2/32"]
        endpoint.reload()
        wait_until(lambda: "reload done" in endpoint.log(), timeout=20, message="reload logged")
        assert "restarting its kamailio" in endpoint.log()
        pbx.send(request("OPTIONS", f"sip:{endpoint.internal_hostport}", pbx), endpoint.internal_hostport)
        assert [m.status for m in pbx.receive(2.0)] == [403]
    finally:
        pbx.close()
