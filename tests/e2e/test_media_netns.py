"""The hosting picture of issue 13: the PBX on the host's private internal network (a namespace
behind `pbx0`, 10.0.3.0/24), the provider behind `ens5` (198.51.100.0/24) with no route to the
private network. Audio flows only because the endpoint anchors it; the provider never learns
the private address. The parties' sockets are bound inside their namespaces
(netns.udp_sockets_in) and driven from the test."""
from __future__ import annotations

import json

import pytest

from .dialog import RtpPeer, SipUa, sdp, sdp_address
from .endpoint import ProviderPin
from .netns import udp_sockets_in

pytestmark = [pytest.mark.e2e, pytest.mark.netns]


def _sessions(endpoint) -> int:
    status = endpoint.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    return json.loads(status.stdout)["media"]["host"]["sessions"]


def test_pbx_on_a_private_network_talks_to_a_provider_that_cannot_reach_it(topology, make_endpoint):
    ens5 = topology.add_uplink("ens5", "198.51.100")
    pbx0 = topology.add_uplink("pbx0", "10.0.3")
    assert topology.uplinks["ens5"].peer.run("ip", "route", "get", "10.0.3.2").returncode != 0
    provider_sip, provider_rtp, provider_rtcp = udp_sockets_in(
        ens5.peer.name, (ens5.peer_ip, 5060), (ens5.peer_ip, 40000), (ens5.peer_ip, 40001))
    pbx_sip, pbx_rtp, pbx_rtcp = udp_sockets_in(
        pbx0.peer.name, (pbx0.peer_ip, 5060), (pbx0.peer_ip, 40000), (pbx0.peer_ip, 40001))
    provider = SipUa(ens5.peer_ip, "provider", sock=provider_sip)
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])],
                             netns=topology.host.name, interface="ens5", external_ip=None,
                             internal_ip=pbx0.host_ip, internal_port=5060, external_port=5060,
                             instance_networks=["10.0.3.0/24"])
    pbx = SipUa(pbx0.peer_ip, "pbx", outbound=endpoint.internal_hostport, sock=pbx_sip)
    pbx_media = RtpPeer(pbx0.peer_ip, (pbx_rtp, pbx_rtcp))
    provider_media = RtpPeer(ens5.peer_ip, (provider_rtp, provider_rtcp))
    try:
        dialog = pbx.invite("sip:0301234567@tel.example.test", sdp(pbx0.peer_ip, 40000))
        invite = provider.expect_request("INVITE")
        assert sdp_address(invite.body)[0] == ens5.host_ip and "10.0.3." not in invite.body
        far = provider.accept(invite)
        provider.reply(invite, 180, "Ringing", dialog=far)
        provider.reply(invite, 200, "OK", dialog=far, body=sdp(ens5.peer_ip, 40000))
        ok = pbx.expect_status("INVITE", 200)
        assert sdp_address(ok.body)[0] == pbx0.host_ip and ens5.peer_ip not in ok.body
        pbx.confirm(dialog, ok)
        pbx.ack(dialog)
        provider.expect_request("ACK")
        assert _sessions(endpoint) == 1

        pbx_media.send(sdp_address(ok.body), 50)
        provider_media.send(sdp_address(invite.body), 50)
        at_provider, at_pbx = provider_media.received(), pbx_media.received()
        assert len(at_provider) >= 49 and {ip for ip, _ in at_provider} == {ens5.host_ip}
        assert len(at_pbx) >= 49 and {ip for ip, _ in at_pbx} == {pbx0.host_ip}
        # RTCP follows on the port above
        pbx_media.send_rtcp((sdp_address(ok.body)[0], sdp_address(ok.body)[1] + 1))
        assert len(provider_media.received(sock=provider_media.rtcp)) == 1

        provider.request(far, "BYE")
        pbx.reply(pbx.expect_request("BYE"), 200, "OK")
        provider.expect_status("BYE", 200)
        assert _sessions(endpoint) == 0
    finally:
        for party in (pbx, provider, pbx_media, provider_media):
            party.close()
