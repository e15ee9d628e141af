"""Provider failure: quick 503, next pinned address; keepalives; requests sent straight to the endpoint."""
from __future__ import annotations


import pytest

from .endpoint import ProviderPin
from .procs import free_port, wait_until
from .rawsip import UdpPeer, request

pytestmark = pytest.mark.e2e


def test_unreachable_provider_gives_quick_503(make_endpoint):
    dead = f"127.0.0.1:{free_port()}"
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [dead])])  # provider_timeout_ms = 3000
    pbx = UdpPeer("127.0.0.2")
    try:
        pbx.send(request("INVITE", "sip:4989123@tel.example.test", pbx,
                         extra="Contact: <sip:4930111@192.0.2.99>"), endpoint.internal_hostport)
        # within 8 s: after provider_timeout_ms (3 s), long before the PBX's own 32 s timer B
        finals = [m.status for m in pbx.receive(8.0) if m.status and m.status >= 200]
        assert finals == [503]
    finally:
        pbx.close()


def test_second_pinned_address_takes_over(make_provider, make_endpoint, sipp):
    provider = make_provider()
    dead = f"127.0.0.1:{free_port()}"
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [dead, provider.hostport])])
    result = sipp.run("pbx_register", rsa=endpoint.internal_hostport, timeout=20)
    result.assert_ok(calls=1)
    assert provider.contacts("4930111")


def test_keepalive_options_to_provider_of_registered_flow(endpoint, provider, sipp):
    sipp.run("pbx_register", rsa=endpoint.internal_hostport).assert_ok()
    # keepalive_interval = 2 in the fixture's configuration
    wait_until(lambda: [m for m in provider.received("OPTIONS")
                        if m.msg.is_request and m.peer[:2] == ("127.0.0.1", endpoint.external_port)],
               timeout=8, message="keepalive OPTIONS from the endpoint's external socket at the provider")


def test_request_sent_straight_to_endpoint_without_route(endpoint, provider):
    pbx = UdpPeer("127.0.0.2")
    try:
        pbx.send(request("OPTIONS", "sip:tel.example.test", pbx), endpoint.internal_hostport)
        assert [m.status for m in pbx.receive(3.0)] == [200]
        options = [m for m in provider.received("OPTIONS") if m.msg.is_request]
        assert options and options[-1].peer[:2] == ("127.0.0.1", endpoint.external_port)
    finally:
        pbx.close()


def test_pbx_call_to_unreachable_provider_fails_cleanly(make_endpoint, sipp):
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [f"127.0.0.1:{free_port()}"])])
    result = sipp.run("pbx_uac", rsa=endpoint.internal_hostport, timeout=15)
    assert (result.returncode, result.successful, result.failed) == (1, 0, 1)
    # the PBX's ACK to the 503 is absorbed by the endpoint, never forwarded
    assert "resolving \"tel.example.test\" failed" not in endpoint.log()
