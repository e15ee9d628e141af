"""Issue 2 end to end: SIPp PBXs -> trunkproxy endpoint (real Kamailio) -> Kamailio provider."""
from __future__ import annotations

import re

import pytest

from .endpoint import ProviderPin
from .procs import free_port

pytestmark = pytest.mark.e2e


def _register(sipp, endpoint, user="4930111", password=None, local_ip="127.0.0.1", local_port=None, **kw):
    vars = {"user": user, "password": password or f"secret{user[-3:]}"}
    vars.update(kw.pop("vars", {}))
    return sipp.run("pbx_register", rsa=endpoint.internal_hostport, vars=vars, local_ip=local_ip,
                    local_port=local_port, **kw)


def test_register_with_digest_challenge_through_endpoint(endpoint, provider, sipp):
    result = _register(sipp, endpoint)
    result.assert_ok(calls=1)
    registers = provider.received("REGISTER")
    assert len(registers) == 2  # challenged, then authenticated
    assert all(r.peer[:2] == ("127.0.0.1", endpoint.external_port) for r in registers)
    binding = provider.contacts("4930111")[0]
    # the provider only sees the endpoint: its address in Contact, with a flow token; Path too
    assert f"127.0.0.1:{endpoint.external_port}" in binding["contact"]
    assert "192.0.2.99" not in binding["contact"] and "tpt=" in binding["contact"]
    assert f"127.0.0.1:{endpoint.external_port}" in binding["path"]


def test_inbound_calls_reach_the_right_one_of_two_instances(endpoint, provider, sipp):
    pbx1_port, pbx2_port = free_port("127.0.0.2"), free_port("127.0.0.3")
    _register(sipp, endpoint, "4930111", local_ip="127.0.0.2", local_port=pbx1_port).assert_ok()
    _register(sipp, endpoint, "4930222", local_ip="127.0.0.3", local_port=pbx2_port).assert_ok()
    pbx1 = sipp.background("pbx_uas", vars={"user": "4930111"}, local_ip="127.0.0.2", local_port=pbx1_port,
                           calls=2)
    pbx2 = sipp.background("pbx_uas", vars={"user": "4930222"}, local_ip="127.0.0.3", local_port=pbx2_port)
    sipp.run("provider_uac", provider.hostport, vars={"to_user": "4930111"}, calls=2).assert_ok(calls=2)
    sipp.run("provider_uac", provider.hostport, vars={"to_user": "4930222"}).assert_ok(calls=1)
    r1, r2 = pbx1.wait(10), pbx2.wait(10)
    assert r1.successful == 2 and r2.successful == 1
    invites = [line for line in r1.messages.splitlines() if line.startswith("INVITE ")]
    # delivered with the PBX's own (unreachable) Contact as Request-URI: it needs no NAT setup
    assert invites and invites[0].split()[1].startswith("sip:4930111@192.0.2.99")
    assert "BYE " in r1.messages and "BYE " in r2.messages


@pytest.mark.parametrize("pbx_scenario, far_scenario", [
    ("pbx_uac", "provider_uas"),                   # PBX hangs up
    ("pbx_uac_recv_bye", "provider_uas_hangup"),   # far end hangs up
])
def test_outbound_call_bye_from_either_side(make_provider, make_endpoint, sipp, pbx_scenario, far_scenario):
    pstn_port = free_port()
    provider = make_provider(pstn=("127.0.0.1", pstn_port))
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])])
    far = sipp.background(far_scenario, local_port=pstn_port)
    sipp.run(pbx_scenario, rsa=endpoint.internal_hostport, pause_ms=200).assert_ok(calls=1)
    assert far.wait(10).successful == 1
    byes = [m for m in provider.received("BYE") if m.msg.is_request]
    assert byes, "BYE did not traverse the provider (record-route)"
    invite = provider.received("INVITE")[0].msg
    assert "192.0.2.99" not in invite.header("Contact")


def test_udp_pbx_to_tcp_provider(make_provider, make_endpoint, sipp):
    provider = make_provider()
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport], "tcp")])
    port = free_port()
    _register(sipp, endpoint, local_port=port).assert_ok()
    assert {r.peer[2] for r in provider.received("REGISTER")} == {"tcp"}
    pbx = sipp.background("pbx_uas", vars={"user": "4930111"}, local_port=port)
    sipp.run("provider_uac", provider.hostport, vars={"to_user": "4930111"}).assert_ok(calls=1)
    assert pbx.wait(10).successful == 1
    assert any(m.peer[2] == "tcp" for m in provider.sent("INVITE"))


def test_tcp_pbx_call_to_udp_provider(make_provider, make_endpoint, sipp):
    pstn_port = free_port()
    provider = make_provider(pstn=("127.0.0.1", pstn_port))
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])])
    far = sipp.background("provider_uas", local_port=pstn_port)
    sipp.run("pbx_uac", rsa=endpoint.internal_hostport, transport="tcp", pause_ms=100,
             vars={"route": f"sip:{endpoint.internal_hostport};transport=tcp;lr",
                   "domain": "tel.example.test;transport=udp"}).assert_ok(calls=1)
    assert far.wait(10).successful == 1
    invites = [m for m in provider.received("INVITE") if m.msg.is_request]
    assert invites and invites[0].peer[2] == "udp"
    # the media anchored on the endpoint's relay, not at the PBX's port 40000
    assert re.search(r"^m=audio (2\d{4}) RTP/AVP", invites[0].msg.body, re.M), invites[0].msg.body


def test_media_anchored_towards_a_provider_forced_to_tcp(make_provider, make_endpoint, sipp):
    pstn_port = free_port()
    provider = make_provider(pstn=("127.0.0.1", pstn_port))
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport], "tcp")])
    far = sipp.background("provider_uas", local_port=pstn_port)
    sipp.run("pbx_uac", rsa=endpoint.internal_hostport, pause_ms=100).assert_ok(calls=1)
    assert far.wait(10).successful == 1
    invites = [m for m in provider.received("INVITE") if m.msg.is_request]
    assert invites and invites[0].peer[2] == "tcp"
    assert re.search(r"^m=audio (2\d{4}) RTP/AVP", invites[0].msg.body, re.M), invites[0].msg.body
