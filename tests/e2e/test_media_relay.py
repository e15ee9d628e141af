"""Issue 13: media anchored on the endpoint by the host's rtpengine (docs/media.md).

Loopback layout: the endpoint's internal side on 127.0.0.1, its external side on 127.0.0.10.
The PBX's signalling is on 127.0.0.1 and its media on 127.0.0.2, an address the provider side is
never given; the provider's signalling and media are on 127.0.0.1/127.0.0.3. Raw SIP peers
(tests/e2e/dialog.py) drive every offer/answer state; RTP peers count what arrives and from
where. The real peers here are Kamailio and rtpengine."""
from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import struct
import json
import urllib.request
import time

import psutil
import pylibsrtp

import pytest

from trunkproxy.media.ng import NgClient

from .dialog import RtpPeer, SipUa, sdp, sdp_address
from .endpoint import ProviderPin
from .procs import free_port, wait_until
from .test_decision_cache import _entries

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
    # the finished call's relay ports forward nothing any more
    media["pbx"].send(sdp_address(answer_seen), 10)
    media["provider"].send(sdp_address(offer_seen), 10)
    assert media["provider"].received(0.5) == [] and media["pbx"].received(0.5) == []


def test_rtpengine_stops_with_trunkproxy_and_its_control_socket_is_on_loopback_only(lab):
    endpoint, pbx, provider, media = lab
    (rtpengine,) = [p for p in psutil.Process(endpoint.proc.pid).children() if p.name() == "rtpengine"]
    listening = {c.laddr for c in rtpengine.net_connections(kind="udp")
                 if c.laddr and c.laddr.port == endpoint.media_control_port}
    assert listening and {a.ip for a in listening} == {"127.0.0.1"}
    endpoint.stop()
    assert not psutil.pid_exists(rtpengine.pid) or rtpengine.status() == psutil.STATUS_ZOMBIE


def _hang_up(caller, callee, dialog):
    caller.request(dialog, "BYE")
    callee.reply(callee.expect_request("BYE"), 200, "OK")
    caller.expect_status("BYE", 200)


def _flows(media, pbx_sees, provider_sees, count=20):
    """RTP sent each way to the addresses each side was given arrives, from the endpoint's
    side facing the receiver."""
    media["pbx"].send(pbx_sees, count)
    media["provider"].send(provider_sees, count)
    at_provider, at_pbx = media["provider"].received(0.5), media["pbx"].received(0.5)
    assert len(at_provider) >= count - 1 and {ip for ip, _ in at_provider} == {EXTERNAL_IP}
    assert len(at_pbx) >= count - 1 and {ip for ip, _ in at_pbx} == {"127.0.0.1"}


def _register(pbx, provider, endpoint) -> str:
    """The PBX registers through the endpoint; returns the Contact URI the provider got."""
    pbx.send_register("tel.example.test")
    register = provider.expect_request("REGISTER")
    provider.reply(register, 200, "OK", extra=f"Contact: {register.header('Contact')};expires=300")
    pbx.expect_status("REGISTER", 200)
    return register.uri_of("Contact")


def _inbound_call(pbx, provider, endpoint, contact, offer, answer):
    """The provider calls the registered PBX at `contact` with `offer`; the PBX rings and
    answers with `answer`. Returns the provider's dialog and the INVITE and 200 as each side
    received them."""
    provider.outbound = endpoint.external_hostport
    dialog = provider.invite(contact, offer)
    invite = pbx.expect_request("INVITE")
    near = pbx.accept(invite)
    pbx.reply(invite, 180, "Ringing", dialog=near)
    pbx.reply(invite, 200, "OK", dialog=near, body=answer)
    ok = provider.expect_status("INVITE", 200)
    provider.confirm(dialog, ok)
    provider.ack(dialog)
    pbx.expect_request("ACK")
    provider.outbound = None
    return dialog, invite, ok


def test_inbound_call_media_flows_and_each_side_sees_its_own_address(lab):
    endpoint, pbx, provider, media = lab
    contact = _register(pbx, provider, endpoint)
    dialog, invite, ok = _inbound_call(pbx, provider, endpoint, contact,
                                       sdp(PROVIDER_MEDIA_IP, media["provider"].port),
                                       sdp(PBX_MEDIA_IP, media["pbx"].port))
    assert sdp_address(invite.body)[0] == "127.0.0.1" and PROVIDER_MEDIA_IP not in invite.body
    assert sdp_address(ok.body)[0] == EXTERNAL_IP and PBX_MEDIA_IP not in ok.body
    _flows(media, sdp_address(invite.body), sdp_address(ok.body))
    _hang_up(provider, pbx, dialog)
    assert rtpengine_sessions(endpoint) == 0


def test_late_offer_in_the_2xx_answered_in_the_ack(lab):
    endpoint, pbx, provider, media = lab
    dialog = pbx.invite("sip:0301234567@tel.example.test")  # no SDP: the provider offers
    invite = provider.expect_request("INVITE")
    assert not invite.body
    far = provider.accept(invite)
    provider.reply(invite, 200, "OK", dialog=far, body=sdp(PROVIDER_MEDIA_IP, media["provider"].port))
    ok = pbx.expect_status("INVITE", 200)
    assert sdp_address(ok.body)[0] == "127.0.0.1"
    pbx.confirm(dialog, ok)
    pbx.ack(dialog, body=sdp(PBX_MEDIA_IP, media["pbx"].port))
    ack = provider.expect_request("ACK")
    assert sdp_address(ack.body)[0] == EXTERNAL_IP and PBX_MEDIA_IP not in ack.body
    _flows(media, sdp_address(ok.body), sdp_address(ack.body))
    _hang_up(pbx, provider, dialog)
    assert rtpengine_sessions(endpoint) == 0


def test_hold_unhold_by_reinvite_and_update_from_either_side(lab):
    endpoint, pbx, provider, media = lab
    dialog, far, offer_seen, answer_seen = _outbound_call(pbx, provider, media)
    # the PBX holds (sendonly) and resumes by re-INVITE
    for version, direction in ((2, "sendonly"), (3, "sendrecv")):
        pbx.request(dialog, "INVITE", sdp(PBX_MEDIA_IP, media["pbx"].port, direction=direction, version=version))
        reinvite = provider.expect_request("INVITE")
        assert sdp_address(reinvite.body)[0] == EXTERNAL_IP and f"a={direction}" in reinvite.body
        provider.reply(reinvite, 200, "OK", dialog=far,
                       body=sdp(PROVIDER_MEDIA_IP, media["provider"].port, version=version,
                                direction="recvonly" if direction == "sendonly" else "sendrecv"))
        ok = pbx.expect_status("INVITE", 200)
        assert sdp_address(ok.body)[0] == "127.0.0.1" and PROVIDER_MEDIA_IP not in ok.body
        pbx.ack(dialog)
        provider.expect_request("ACK")
    # the provider changes the media by UPDATE (a new port on its side)
    moved = RtpPeer(PROVIDER_MEDIA_IP)
    try:
        provider.request(far, "UPDATE", sdp(PROVIDER_MEDIA_IP, moved.port, version=5))
        update = pbx.expect_request("UPDATE")
        assert sdp_address(update.body)[0] == "127.0.0.1" and PROVIDER_MEDIA_IP not in update.body
        pbx.reply(update, 200, "OK", body=sdp(PBX_MEDIA_IP, media["pbx"].port, version=4))
        ok = provider.expect_status("UPDATE", 200)
        assert sdp_address(ok.body)[0] == EXTERNAL_IP
        media["pbx"].send(sdp_address(update.body), 20)
        at_moved = moved.received(0.5)
        assert len(at_moved) >= 19 and {ip for ip, _ in at_moved} == {EXTERNAL_IP}
    finally:
        moved.close()
    _hang_up(provider, pbx, far)
    assert rtpengine_sessions(endpoint) == 0


def test_early_media_in_a_reliable_183_with_prack(lab):
    endpoint, pbx, provider, media = lab
    dialog = pbx.invite("sip:0301234567@tel.example.test", sdp(PBX_MEDIA_IP, media["pbx"].port),
                        extra="Supported: 100rel")
    invite = provider.expect_request("INVITE")
    far = provider.accept(invite)
    provider.reply(invite, 183, "Session Progress", dialog=far,
                   body=sdp(PROVIDER_MEDIA_IP, media["provider"].port), extra="Require: 100rel\nRSeq: 1")
    progress = pbx.expect_status("INVITE", 183)
    assert sdp_address(progress.body)[0] == "127.0.0.1"
    pbx.confirm(dialog, progress)
    pbx.request(dialog, "PRACK", extra="RAck: 1 1 INVITE")
    provider.reply(provider.expect_request("PRACK"), 200, "OK")
    pbx.expect_status("PRACK", 200)
    # the announcement reaches the PBX before the answer
    media["provider"].send(sdp_address(invite.body), 20)
    early = media["pbx"].received(0.5)
    assert len(early) >= 19 and {ip for ip, _ in early} == {"127.0.0.1"}
    provider.reply(invite, 200, "OK", dialog=far, body=sdp(PROVIDER_MEDIA_IP, media["provider"].port))
    pbx.expect_status("INVITE", 200)
    pbx.ack(dialog)
    provider.expect_request("ACK")
    _flows(media, sdp_address(progress.body), sdp_address(invite.body))
    _hang_up(pbx, provider, dialog)
    assert rtpengine_sessions(endpoint) == 0


def test_cancelled_rejected_and_unanswered_calls_leave_no_session(lab):
    endpoint, pbx, provider, media = lab
    # CANCEL before the answer
    dialog = pbx.invite("sip:0301234567@tel.example.test", sdp(PBX_MEDIA_IP, media["pbx"].port))
    invite = provider.expect_request("INVITE")
    far = provider.accept(invite)
    provider.reply(invite, 180, "Ringing", dialog=far)
    pbx.expect_status("INVITE", 180)
    assert rtpengine_sessions(endpoint) == 1
    pbx.cancel(dialog)
    provider.reply(provider.expect_request("CANCEL"), 200, "OK")
    provider.reply(invite, 487, "Request Terminated", dialog=far)
    pbx.expect_status("INVITE", 487, dialog=dialog)
    provider.expect_request("ACK")
    assert rtpengine_sessions(endpoint) == 0
    # a 486
    dialog = pbx.invite("sip:0301234567@tel.example.test", sdp(PBX_MEDIA_IP, media["pbx"].port))
    invite = provider.expect_request("INVITE")
    provider.reply(invite, 486, "Busy Here", dialog=provider.accept(invite))
    pbx.expect_status("INVITE", 486, dialog=dialog)
    assert rtpengine_sessions(endpoint) == 0
    # no answer at all: the endpoint gives up after provider_timeout_ms (3 s here)
    dialog = pbx.invite("sip:0301234567@tel.example.test", sdp(PBX_MEDIA_IP, media["pbx"].port))
    provider.expect_request("INVITE")
    final = pbx.expect_status("INVITE", timeout=8, final=True, dialog=dialog)
    assert final.status in (408, 503)
    assert rtpengine_sessions(endpoint) == 0


def test_sdp_the_relay_cannot_take_gets_488_and_the_endpoint_keeps_serving(lab):
    endpoint, pbx, provider, media = lab
    pbx.invite("sip:0301234567@tel.example.test", "v=0\r\nthis is not sdp\r\n")
    assert pbx.expect_status("INVITE", final=True).status == 488
    assert "media relay refused the SDP" in endpoint.log()
    assert rtpengine_sessions(endpoint) == 0
    dialog, far, offer_seen, answer_seen = _outbound_call(pbx, provider, media)
    _flows(media, sdp_address(answer_seen), sdp_address(offer_seen))
    _hang_up(pbx, provider, dialog)


def test_repeated_calls_replayed_from_the_decision_cache_are_still_anchored(lab):
    endpoint, pbx, provider, media = lab
    contact = _register(pbx, provider, endpoint)
    for _ in range(3):  # the second and third decisions are replayed natively
        dialog, far, offer_seen, answer_seen = _outbound_call(pbx, provider, media)
        assert sdp_address(offer_seen)[0] == EXTERNAL_IP and sdp_address(answer_seen)[0] == "127.0.0.1"
        _flows(media, sdp_address(answer_seen), sdp_address(offer_seen))
        _hang_up(pbx, provider, dialog)
        dialog, invite, ok = _inbound_call(pbx, provider, endpoint, contact,
                                           sdp(PROVIDER_MEDIA_IP, media["provider"].port),
                                           sdp(PBX_MEDIA_IP, media["pbx"].port))
        assert sdp_address(invite.body)[0] == "127.0.0.1" and sdp_address(ok.body)[0] == EXTERNAL_IP
        _hang_up(provider, pbx, dialog)
    # one decision each way, memoised by the first call and replayed for the others
    names = [e["name"] for e in _entries(endpoint, "tp_dec")]
    assert len([n for n in names if n.startswith("INVITE|")]) == 1, names
    assert len([n for n in names if n.startswith("I|INVITE|")]) == 1, names
    assert rtpengine_sessions(endpoint) == 0


def test_rtpengine_killed_mid_call_is_restarted_and_new_calls_get_media(lab):
    endpoint, pbx, provider, media = lab
    dialog, far, offer_seen, answer_seen = _outbound_call(pbx, provider, media)
    rtpengine = [p for p in psutil.Process(endpoint.proc.pid).children() if p.name() == "rtpengine"]
    assert len(rtpengine) == 1
    rtpengine[0].kill()
    wait_until(lambda: endpoint.log().count("media: rtpengine started") == 2, timeout=10,
               message="rtpengine restarted")
    wait_until(lambda: _answers(endpoint), timeout=10, message="rtpengine answers again")
    time.sleep(2.5)  # Kamailio tries it again 2 s after it failed (rtpengine_disable_tout)
    dialog, far, offer_seen, answer_seen = _outbound_call(pbx, provider, media)
    assert sdp_address(offer_seen)[0] == EXTERNAL_IP
    _flows(media, sdp_address(answer_seen), sdp_address(offer_seen))
    _hang_up(pbx, provider, dialog)
    assert rtpengine_sessions(endpoint) == 0


def _answers(endpoint) -> bool:
    return asyncio.run(NgClient("127.0.0.1", endpoint.media_control_port).ping())


def test_media_is_visible_in_metrics_api_and_status_and_a_one_way_stop_is_logged(make_endpoint):
    provider = SipUa("127.0.0.1", "provider")
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])],
                             external_ip=EXTERNAL_IP, allow_destinations=["127.0.0.1/32"], api_port=free_port(),
                             media_toml="poll_interval_s = 0.5\none_way_alarm_s = 2")
    pbx = SipUa("127.0.0.1", "pbx", outbound=endpoint.internal_hostport)
    media = {"pbx": RtpPeer(PBX_MEDIA_IP), "provider": RtpPeer(PROVIDER_MEDIA_IP)}
    try:
        dialog, far, offer_seen, answer_seen = _outbound_call(pbx, provider, media)
        # both ways for a while, then the provider goes quiet while the PBX goes on
        for _ in range(8):
            media["pbx"].send(sdp_address(answer_seen), 10, interval=0.02)
            media["provider"].send(sdp_address(offer_seen), 10, interval=0.02)
        for _ in range(20):
            media["pbx"].send(sdp_address(answer_seen), 10, interval=0.02)
        wait_until(lambda: "media stopped provider to pbx" in endpoint.log(), timeout=5,
                   message="the one-way stop logged")
        assert f"Call-ID {dialog.call_id}" in endpoint.log()
        metrics = endpoint.metrics()
        assert metrics.get("trunkproxy_media_sessions", endpoint="iflo") == 1
        assert metrics.get("trunkproxy_media_packets_total", endpoint="iflo", direction="pbx_to_provider") >= 250
        assert metrics.get("trunkproxy_media_one_way_calls_total", endpoint="iflo") == 1
        assert metrics.get("trunkproxy_media_up") == 1
        with urllib.request.urlopen(f"{endpoint.api_url}/api/media", timeout=5) as response:
            assert json.load(response)["sessions"] == {"iflo": 1}
        status = endpoint.cli("status")
        assert status.returncode == 0 and "media relay: 1 active session(s)" in status.stdout, status
        assert "endpoint iflo: 1 call(s) with media" in status.stdout
        _hang_up(pbx, provider, dialog)
        wait_until(lambda: endpoint.metrics().get("trunkproxy_media_sessions", endpoint="iflo") == 0,
                   timeout=5, message="no session left in /metrics")
    finally:
        for party in (pbx, provider, *media.values()):
            party.close()



def _crypto(body: str) -> tuple[str, bytes]:
    """The first a=crypto line's tag and master key+salt."""
    m = re.search(r"^a=crypto:(\d+) AES_CM_128_HMAC_SHA1_80 inline:([A-Za-z0-9+/=]+)", body, re.M)
    assert m, body
    return m.group(1), base64.b64decode(m.group(2))


def _srtp(key: bytes, outbound: bool):
    direction = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
    return pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=direction,
                                              srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80))


def _send_srtp(peer, key: bytes, to, count: int) -> None:
    session = _srtp(key, outbound=True)
    for seq in range(1, count + 1):
        packet = struct.pack("!BBHII", 0x80, 8, seq, seq * 160, peer.ssrc) + b"\xd5" * 160
        peer.sock.sendto(session.protect(packet), to)
        time.sleep(0.002)


def _decrypted(peer, key: bytes) -> int:
    """SRTP packets arriving at `peer` that `key` authenticates and that carry the payload sent."""
    session, good = _srtp(key, outbound=False), 0
    peer.sock.settimeout(0.5)
    while True:
        try:
            data, _src = peer.sock.recvfrom(2048)
        except socket.timeout:
            return good
        assert b"\xd5" * 160 not in data  # never plain on the wire
        try:
            good += session.unprotect(data).endswith(b"\xd5" * 160)
        except pylibsrtp.Error:
            pass


def _plain(peer) -> int:
    """Plain RTP packets arriving at `peer` carrying the payload sent."""
    count = 0
    peer.sock.settimeout(0.5)
    while True:
        try:
            data, _src = peer.sock.recvfrom(2048)
        except socket.timeout:
            return count
        count += data.endswith(b"\xd5" * 160)


def test_sdes_srtp_is_relayed_encrypted_both_ways_and_mediasec_headers_pass(lab):
    endpoint, pbx, provider, media = lab
    pbx_key, provider_key = os.urandom(30), os.urandom(30)
    crypto = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}"
    dialog = pbx.invite("sip:0301234567@tel.example.test",
                        sdp(PBX_MEDIA_IP, media["pbx"].port, profile="RTP/SAVP",
                            extra=crypto.format(base64.b64encode(pbx_key).decode())),
                        extra="Security-Client: sdes-srtp;mediasec\nProxy-Require: mediasec")
    invite = provider.expect_request("INVITE")
    assert invite.header("Security-Client") == "sdes-srtp;mediasec"
    assert "m=audio" in invite.body and "RTP/SAVP" in invite.body and "RTP/AVP " not in invite.body
    tag, key_to_provider = _crypto(invite.body)
    far = provider.accept(invite)
    provider.reply(invite, 200, "OK", dialog=far,
                   body=sdp(PROVIDER_MEDIA_IP, media["provider"].port, profile="RTP/SAVP",
                            extra=f"a=crypto:{tag} AES_CM_128_HMAC_SHA1_80 "
                                  f"inline:{base64.b64encode(provider_key).decode()}"),
                   extra="Security-Server: sdes-srtp;mediasec")
    ok = pbx.expect_status("INVITE", 200)
    assert ok.header("Security-Server") == "sdes-srtp;mediasec" and "RTP/SAVP" in ok.body
    _tag, key_to_pbx = _crypto(ok.body)
    pbx.confirm(dialog, ok)
    pbx.ack(dialog)
    provider.expect_request("ACK")
    # each side encrypts with its own key and decrypts with the key the relay gave it
    _send_srtp(media["pbx"], pbx_key, sdp_address(ok.body), 20)
    assert _decrypted(media["provider"], key_to_provider) >= 19
    _send_srtp(media["provider"], provider_key, sdp_address(invite.body), 20)
    assert _decrypted(media["pbx"], key_to_pbx) >= 19
    _hang_up(pbx, provider, dialog)
    assert rtpengine_sessions(endpoint) == 0


def test_an_endpoint_without_media_relay_passes_sdp_unchanged_and_runs_no_rtpengine(make_endpoint):
    provider = SipUa("127.0.0.1", "provider")
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])],
                             external_ip=EXTERNAL_IP, allow_destinations=["127.0.0.1/32"], media_relay=False)
    pbx = SipUa("127.0.0.1", "pbx", outbound=endpoint.internal_hostport)
    media = {"pbx": RtpPeer(PBX_MEDIA_IP), "provider": RtpPeer(PROVIDER_MEDIA_IP)}
    try:
        dialog, far, offer_seen, answer_seen = _outbound_call(pbx, provider, media)
        assert sdp_address(offer_seen) == (PBX_MEDIA_IP, media["pbx"].port)
        assert sdp_address(answer_seen) == (PROVIDER_MEDIA_IP, media["provider"].port)
        _hang_up(pbx, provider, dialog)
        assert not [p for p in psutil.Process(endpoint.proc.pid).children() if p.name() == "rtpengine"]
    finally:
        for party in (pbx, provider, *media.values()):
            party.close()


def test_srtp_towards_a_provider_that_wants_it_and_plain_rtp_towards_pbxs_that_do_not(make_endpoint):
    """[providers."..."] srtp = true and [[endpoints]] pbx_srtp = false: the relay encrypts on the
    provider's side and decrypts on the PBX's, in both call directions."""
    provider = SipUa("127.0.0.1", "provider")
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport], srtp=True)],
                             external_ip=EXTERNAL_IP, allow_destinations=["127.0.0.1/32"],
                             endpoint_toml="pbx_srtp = false")
    pbx = SipUa("127.0.0.1", "pbx", outbound=endpoint.internal_hostport)
    media = {"pbx": RtpPeer(PBX_MEDIA_IP), "provider": RtpPeer(PROVIDER_MEDIA_IP)}
    provider_key = os.urandom(30)
    provider_sdp = lambda: sdp(PROVIDER_MEDIA_IP, media["provider"].port, profile="RTP/SAVP",  # noqa: E731
                               extra=f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 "
                                     f"inline:{base64.b64encode(provider_key).decode()}")
    try:
        # outbound: the PBX offers plain RTP, the provider is offered SRTP
        dialog = pbx.invite("sip:0301234567@tel.example.test", sdp(PBX_MEDIA_IP, media["pbx"].port))
        invite = provider.expect_request("INVITE")
        assert re.search(r"^m=audio \d+ RTP/SAVP ", invite.body, re.M)
        far = provider.accept(invite)
        answer_body = provider_sdp().replace("a=crypto:1 ", f"a=crypto:{_crypto(invite.body)[0]} ")
        provider.reply(invite, 200, "OK", dialog=far, body=answer_body)
        ok = pbx.expect_status("INVITE", 200)
        assert re.search(r"^m=audio \d+ RTP/AVP ", ok.body, re.M) and "a=crypto" not in ok.body
        pbx.confirm(dialog, ok)
        pbx.ack(dialog)
        provider.expect_request("ACK")
        media["pbx"].send(sdp_address(ok.body), 20)  # plain from the PBX ...
        assert _decrypted(media["provider"], _crypto(invite.body)[1]) >= 19  # ... SRTP at the provider
        _send_srtp(media["provider"], provider_key, sdp_address(invite.body), 20)
        assert _plain(media["pbx"]) >= 19  # decrypted by the relay
        _hang_up(pbx, provider, dialog)

        # inbound: the provider offers SRTP, the PBX is offered plain RTP
        contact = _register(pbx, provider, endpoint)
        dialog, invite, ok = _inbound_call(pbx, provider, endpoint, contact, provider_sdp(),
                                           sdp(PBX_MEDIA_IP, media["pbx"].port))
        assert re.search(r"^m=audio \d+ RTP/AVP ", invite.body, re.M) and "a=crypto" not in invite.body
        assert re.search(r"^m=audio \d+ RTP/SAVP ", ok.body, re.M)
        _send_srtp(media["provider"], provider_key, sdp_address(ok.body), 20)
        assert _plain(media["pbx"]) >= 19
        media["pbx"].send(sdp_address(invite.body), 20)
        assert _decrypted(media["provider"], _crypto(ok.body)[1]) >= 19
        _hang_up(provider, pbx, dialog)
        assert rtpengine_sessions(endpoint) == 0
    finally:
        for party in (pbx, provider, *media.values()):
            party.close()


def test_behind_a_nat_the_provider_is_given_the_advertised_address(make_endpoint):
    provider = SipUa("127.0.0.1", "provider")
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])],
                             external_ip=EXTERNAL_IP, allow_destinations=["127.0.0.1/32"],
                             endpoint_toml='advertise = "203.0.113.7"')
    provider.reply_to_source = True  # the NAT in front of the endpoint, in effect
    pbx = SipUa("127.0.0.1", "pbx", outbound=endpoint.internal_hostport)
    media = {"pbx": RtpPeer(PBX_MEDIA_IP), "provider": RtpPeer(PROVIDER_MEDIA_IP)}
    try:
        dialog, far, offer_seen, answer_seen = _outbound_call(pbx, provider, media)
        assert sdp_address(offer_seen)[0] == "203.0.113.7" and "o=- 4242 1 IN IP4 203.0.113.7" in offer_seen
        assert EXTERNAL_IP not in offer_seen and PBX_MEDIA_IP not in offer_seen
        assert sdp_address(answer_seen)[0] == "127.0.0.1"  # the PBX's side is not behind the NAT
        _hang_up(pbx, provider, dialog)
    finally:
        for party in (pbx, provider, *media.values()):
            party.close()
