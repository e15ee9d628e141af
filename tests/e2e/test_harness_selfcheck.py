"""The harness and the provider work on their own, without trunkproxy in between.

If these fail, an e2e test of the proxy failing says nothing about the proxy.
"""
from __future__ import annotations

import pytest

from .harness import UNREACHABLE_CONTACT, free_port, sip_ping

pytestmark = pytest.mark.e2e


def _codes(msgs):
    return [m.status for m in msgs if m.status is not None]


# --------------------------------------------------------------------------- registration

def test_register_answers_digest_challenge_and_is_stored(provider, sipp):
    res = sipp.run("pbx_register", provider.hostport)
    res.assert_ok(calls=1)

    regs = provider.received("REGISTER")
    assert [r.header("Authorization") is not None for r in regs] == [False, True]
    assert 'username="4930111"' in regs[1].header("Authorization")
    assert _codes(provider.sent("REGISTER")) == [401, 200]
    contacts = provider.contacts("4930111")
    assert len(contacts) == 1
    assert UNREACHABLE_CONTACT in contacts[0]["contact"]
    assert contacts[0]["path"] is None


def test_register_with_wrong_password_fails(provider, sipp):
    res = sipp.run("pbx_register", provider.hostport, vars={"password": "wrong"}, timeout=5)
    assert not res.ok and res.failed == 1
    assert _codes(provider.sent("REGISTER")) == [401, 403]
    assert provider.contacts("4930111") == []


def test_register_of_unknown_user_fails(provider, sipp):
    res = sipp.run("pbx_register", provider.hostport,
                   vars={"user": "4930999", "password": "x"}, timeout=5)
    assert not res.ok
    assert 403 in _codes(provider.sent("REGISTER"))


def test_register_below_min_expires_gets_423(make_provider, sipp):
    prov = make_provider(min_expires=120)
    res = sipp.run("pbx_register", prov.hostport, vars={"expires": 60}, timeout=5)
    assert not res.ok
    replies = [m for m in prov.sent("REGISTER") if m.status == 423]
    assert replies and replies[0].header("Min-Expires") == "120"
    assert prov.contacts("4930111") == []


def test_deregister_removes_the_binding(provider, sipp):
    sipp.run("pbx_register", provider.hostport).assert_ok()
    assert provider.contacts("4930111")
    sipp.run("pbx_register", provider.hostport, vars={"expires": 0}).assert_ok()
    assert provider.contacts("4930111") == []


def test_pbx_source_address_is_its_local_ip(provider, sipp):
    """Several PBX instances on one host differ by loopback address (127.0.0.0/8)."""
    sipp.run("pbx_register", provider.hostport, local_ip="127.0.0.2").assert_ok()
    assert {m.peer[0] for m in provider.received("REGISTER")} == {"127.0.0.2"}


def test_register_with_domain_as_provider_address(provider, sipp):
    """R-URI/To may name the provider by address (when nothing resolves tel.example.test)."""
    sipp.run("pbx_register", provider.hostport, vars={"domain": provider.hostport}).assert_ok()
    assert provider.received("REGISTER")[0].ruri == f"sip:{provider.hostport}"
    assert provider.contacts("4930111")


def test_rsa_sends_to_the_outbound_proxy_with_a_preloaded_route(provider, sipp):
    """With rsa= (the proxy), messages go there and Route names it; here the 'proxy' is the
    provider itself, which consumes its own Route."""
    sipp.run("pbx_register", rsa=provider.hostport).assert_ok()
    reg = provider.received("REGISTER")[0]
    assert reg.ruri == "sip:tel.example.test"
    assert reg.headers("Route") == [f"<sip:{provider.hostport};lr>"]


def test_register_over_tcp(provider, sipp):
    sipp.run("pbx_register", provider.hostport, transport="tcp").assert_ok()
    assert provider.received("REGISTER")[-1].peer[2] == "tcp"
    assert "transport=TCP" in provider.contacts("4930111")[0]["contact"]


def test_forced_register_reply_and_reset(provider, sipp):
    provider.set_register_reply(503)
    res = sipp.run("pbx_register", provider.hostport, timeout=5)
    assert not res.ok
    assert _codes(provider.sent("REGISTER")) == [503]
    provider.set_register_reply(None)
    sipp.run("pbx_register", provider.hostport).assert_ok()


def test_preloaded_route_to_someone_else_is_refused(provider, sipp):
    res = sipp.run("pbx_register", provider.hostport,
                   vars={"route": "sip:127.0.0.1:9;lr"}, timeout=5)
    assert not res.ok
    assert _codes(provider.sent("REGISTER")) == [403]
    assert provider.events("BADROUTE")


def test_options_to_the_provider_gets_200(provider):
    assert sip_ping(provider.ip, provider.port) == 200
    assert sip_ping(provider.ip, provider.port, "tcp") == 200


# --------------------------------------------------------------------------- calls

def test_provider_caller_reaches_a_directly_registered_pbx(provider, sipp):
    port = free_port()
    pbx = {"user": "4930222", "password": "secret222", "contact_host": f"127.0.0.1:{port}"}
    uas = sipp.background("pbx_uas", local_port=port, vars=pbx)
    sipp.run("pbx_register", provider.hostport, vars=pbx).assert_ok()

    res = sipp.run("provider_uac", provider.hostport, vars={"to_user": "4930222"}, pause_ms=100)
    res.assert_ok(calls=1)
    uas.wait(timeout=10).assert_ok(calls=1)

    invites = [m for m in provider.sent("INVITE") if m.is_request]
    assert len(invites) == 1 and invites[0].peer[:2] == ("127.0.0.1", port)
    assert invites[0].ruri.startswith(f"sip:4930222@127.0.0.1:{port}")
    # record-routed by the provider: ACK and BYE came back through it
    assert [m for m in provider.received("ACK") if m.is_request]
    assert [m for m in provider.received("BYE") if m.is_request]


@pytest.mark.parametrize("pbx_hangs_up", [False, True], ids=["caller-hangs-up", "pbx-hangs-up"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_inbound_call_follows_the_path_not_the_contact(provider, sipp, pbx_hangs_up, transport):
    """A registration with Path (as the proxy will add) and an unreachable Contact: the
    provider sends the INVITE to the Path URI, with the registered Contact as R-URI.
    The PBX UAS stands in for the proxy here, so its own replies carry a reachable Contact."""
    port = free_port()
    hop = f"127.0.0.1:{port}" + (";transport=tcp" if transport == "tcp" else "")
    uas = sipp.background("pbx_uas_hangup" if pbx_hangs_up else "pbx_uas", pause_ms=100,
                          local_port=port, transport=transport,
                          vars={"contact_host": f"127.0.0.1:{port}"})
    path = f"<sip:{hop};lr>"
    sipp.run("pbx_register", provider.hostport, vars={"extra_header": f"Path: {path}"}).assert_ok()
    assert provider.contacts("4930111")[0]["path"] == path

    caller = "provider_uac_recv_bye" if pbx_hangs_up else "provider_uac"
    sipp.run(caller, provider.hostport, pause_ms=100).assert_ok(calls=1)
    uas.wait(timeout=10).assert_ok(calls=1)

    invite = [m for m in provider.sent("INVITE") if m.is_request][0]
    assert invite.peer == ("127.0.0.1", port, transport)
    assert invite.ruri.startswith(f"sip:4930111@{UNREACHABLE_CONTACT}")
    assert invite.headers("Route") == [path]
    # one Record-Route per provider socket used (two when UDP in, TCP out)
    rrs = invite.headers("Record-Route")
    assert len(rrs) == (2 if transport == "tcp" else 1)
    assert all(provider.hostport in rr for rr in rrs)


def test_call_to_an_unreachable_contact_is_refused_not_sent(provider, sipp):
    sipp.run("pbx_register", provider.hostport).assert_ok()  # Contact 192.0.2.99, no Path
    res = sipp.run("provider_uac", provider.hostport, timeout=5)
    assert not res.ok
    assert _codes(provider.sent("INVITE")) == [480]
    assert provider.events("REFUSED")
    assert not [m for m in provider.sent("INVITE") if m.is_request]


def test_call_to_unknown_number_without_pstn_gets_404(provider, sipp):
    res = sipp.run("provider_uac", provider.hostport, vars={"to_user": "4930555"}, timeout=5)
    assert not res.ok
    assert _codes(provider.sent("INVITE")) == [404]


@pytest.mark.parametrize("auth_invite", [False, True], ids=["no-auth", "proxy-auth"])
def test_pbx_calls_out_to_the_pstn(make_provider, sipp, auth_invite):
    pstn = sipp.background("provider_uas")
    prov = make_provider(pstn=(pstn.local_ip, pstn.local_port), auth_invite=auth_invite)
    sipp.run("pbx_uac", prov.hostport, pause_ms=100).assert_ok(calls=1)
    pstn.wait(timeout=10).assert_ok(calls=1)

    invites_in = [m for m in prov.received("INVITE") if m.is_request]
    assert len(invites_in) == (2 if auth_invite else 1)
    if auth_invite:
        assert 407 in _codes(prov.sent("INVITE"))
        assert invites_in[1].header("Proxy-Authorization")
    out = [m for m in prov.sent("INVITE") if m.is_request]
    assert out[0].peer[:2] == (pstn.local_ip, pstn.local_port)
    assert out[0].ruri == "sip:4989123@tel.example.test"


def test_pstn_hangs_up_a_call_from_the_pbx(make_provider, sipp):
    pstn = sipp.background("provider_uas_hangup", pause_ms=100)
    prov = make_provider(pstn=(pstn.local_ip, pstn.local_port))
    port = free_port()
    sipp.run("pbx_uac_recv_bye", prov.hostport, local_port=port,
             vars={"contact_host": f"127.0.0.1:{port}"}).assert_ok(calls=1)
    pstn.wait(timeout=10).assert_ok(calls=1)
    byes = [m for m in prov.sent("BYE") if m.is_request]
    assert byes and byes[0].peer[:2] == ("127.0.0.1", port)


def test_failed_scenario_is_reported_as_failed(provider, sipp):
    """The harness itself: a call nobody answers must not count as a success."""
    res = sipp.run("provider_uac", f"127.0.0.1:{free_port()}", timeout=3)
    assert not res.ok and res.successful == 0


# --------------------------------------------------------------------------- namespaces

@pytest.mark.netns
def test_pbx_in_host_namespace_registers_with_provider_behind_ens5(topology, make_provider, sipp):
    ens5 = topology.add_uplink("ens5", "198.51.100")
    prov = make_provider(ens5.peer_ip, 5060, netns=ens5.peer.name)
    assert topology.host.run("ip", "-br", "addr", "show", "ens5").stdout.split()[0].startswith("ens5")

    sipp.run("pbx_register", prov.hostport, netns=topology.host.name,
             local_ip=ens5.host_ip, local_port=5070).assert_ok(calls=1)
    regs = prov.received("REGISTER")
    assert {r.peer[:2] for r in regs} == {(ens5.host_ip, 5070)}
    assert prov.contacts("4930111")

    # and the provider is not reachable from the root namespace
    assert sip_ping(ens5.peer_ip, 5060, timeout=0.3) is None
