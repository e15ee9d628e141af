"""Issue 13: media anchored on the endpoint by the host's rtpengine (docs/media.md).

Loopback layout: the endpoint's internal side on 127.0.0.1, its external side on 127.0.0.10.
The PBX's signalling is on 127.0.0.1 and its media on 127.0.0.2, an address the provider side is
never given; the provider's signalling and media are on 127.0.0.1/127.0.0.3. Raw SIP peers
(tests/e2e/dialog.py) drive every offer/answer state; RTP peers count what arrives and from
where. The real peers here are Kamailio and rtpengine."""
from __future__ import annotations

import asyncio

import pytest

from trunkproxy.media.ng import NgClient

from .dialog import RtpPeer, SipUa, sdp, sdp_address
from .endpoint import ProviderPin

pytestmark = pytest.mark.e2e

EXTERNAL_IP = "127.0.0.10"
PBX_MEDIA_IP = "127.0.0.2"
PROVIDER_MEDIA_IP = "127.0.0.3"


def rtpengine_sessions(endpoint) -> int:
    stats = asyncio.run(NgClient("127.0.0.1", endpoint.media_control_port).command("statistics"))
    return stats["statistics"]["currentstatistics"]["sessionsown"]


@pytest.fixture
def lab(make_endpoint):
    provider = SipUa("127.0.0.1", "provider")
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])],
                             external_ip=EXTERNAL_IP, allow_destinations=["127.0.0.1/32"])
    pbx = SipUa("127.0.0.1", "pbx", outbound=endpoint.internal_hostport)
    media = {"pbx": RtpPeer(PBX_MEDIA_IP), "provider": RtpPeer(PROVIDER_MEDIA_IP)}
    yield endpoint, pbx, provider, media
    for party in (pbx, provider, *media.values()):
        party.close()


def _outbound_call(pbx, provider, media):
    """PBX calls out with an offer; the provider answers. Returns the dialogs and the SDP each
    side received."""
    dialog = pbx.invite("sip:0301234567@tel.example.test", sdp(PBX_MEDIA_IP, media["pbx"].port))
    invite = provider.expect_request("INVITE")
    far = provider.accept(invite)
    provider.reply(invite, 200, "OK", dialog=far, body=sdp(PROVIDER_MEDIA_IP, media["provider"].port))
    ok = pbx.expect_status("INVITE", 200)
    pbx.confirm(dialog, ok)
    pbx.ack(dialog)
    provider.expect_request("ACK")
    return dialog, far, invite.body, ok.body


def test_outbound_call_media_flows_through_the_endpoint_both_ways(lab):
    endpoint, pbx, provider, media = lab
    dialog, far, offer_seen, answer_seen = _outbound_call(pbx, provider, media)
    # the provider sees only the external side, the PBX only the internal side
    assert sdp_address(offer_seen)[0] == EXTERNAL_IP and PBX_MEDIA_IP not in offer_seen
    assert sdp_address(answer_seen)[0] == "127.0.0.1" and PROVIDER_MEDIA_IP not in answer_seen
    media["pbx"].send(sdp_address(answer_seen), 50)
    media["provider"].send(sdp_address(offer_seen), 50)
    at_provider = media["provider"].received()
    at_pbx = media["pbx"].received()
    assert len(at_provider) >= 49 and len(at_pbx) >= 49
    assert {ip for ip, _ in at_provider} == {EXTERNAL_IP}
    assert {ip for ip, _ in at_pbx} == {"127.0.0.1"}
    assert rtpengine_sessions(endpoint) == 1
    pbx.request(dialog, "BYE")
    provider.reply(provider.expect_request("BYE"), 200, "OK")
    pbx.expect_status("BYE", 200)
    assert rtpengine_sessions(endpoint) == 0
