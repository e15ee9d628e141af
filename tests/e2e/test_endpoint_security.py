"""No open relay, bad input answered, headers left alone: hostile traffic at a real endpoint."""
from __future__ import annotations

import base64

import pytest

from .endpoint import ProviderPin
from .rawsip import UdpPeer, request

pytestmark = pytest.mark.e2e


@pytest.fixture
def peers():
    made: list[UdpPeer] = []

    def make(ip: str = "127.0.0.1") -> UdpPeer:
        peer = UdpPeer(ip)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


@pytest.fixture
def provider_socket(peers):
    """A raw UDP 'provider' the endpoint pins tel.example.test to; it sees what is relayed."""
    return peers("127.0.0.1")


@pytest.fixture
def raw_endpoint(make_endpoint, provider_socket):
    return make_endpoint(providers=[ProviderPin("tel.example.test", [provider_socket.hostport])])


def _statuses(messages):
    return [m.status for m in messages if m.status]


def test_outsider_cannot_relay_through_external_side(raw_endpoint, peers):
    attacker, victim = peers("127.0.0.7"), peers("127.0.0.9")
    ext = raw_endpoint.external_hostport
    attempts = [
        request("INVITE", f"sip:1000@{victim.hostport}", attacker),
        # forged nathelper alias= and received= parameters
        request("INVITE", f"sip:1000@{ext};alias={victim.ip}~{victim.port}~1", attacker),
        request("INVITE", f"sip:1000@{ext}", attacker,
                extra=f"Route: <sip:{ext};lr;received=sip:{victim.hostport}>"),
        # a Route pointing on to the victim
        request("MESSAGE", f"sip:1000@{ext}", attacker, extra=f"Route: <sip:{ext};lr>, <sip:{victim.hostport};lr>"),
        # made-up token
        request("INVITE", f"sip:1000@{ext};tpt=" + base64.urlsafe_b64encode(
            f"udp|{victim.ip}|{victim.port}|sip:{victim.hostport}".encode()).decode().rstrip("=") + ".AAAAAAAAAAAAAAAA",
            attacker),
    ]
    for text in attempts:
        attacker.send(text, ext)
        assert _statuses(attacker.receive(2.0)) == [403], text.splitlines()[0]
    assert victim.receive(1.0) == []


def test_forged_in_dialog_request_is_not_relayed(raw_endpoint, peers):
    attacker, victim = peers("127.0.0.7"), peers("127.0.0.9")
    ext, internal = raw_endpoint.external_hostport, raw_endpoint.internal_hostport
    routes = f"Route: <sip:{ext};r2=on;lr>, <sip:{internal};r2=on;lr>"
    attacker.send(request("BYE", f"sip:victim@{victim.hostport}", attacker, extra=routes, to_tag="made-up"), ext)
    assert _statuses(attacker.receive(2.0)) == [403]
    attacker.send(request("ACK", f"sip:victim@{victim.hostport}", attacker, extra=routes, to_tag="made-up"), ext)
    assert attacker.receive(1.0) == []
    assert victim.receive(1.0) == []


def test_internal_side_only_serves_instance_networks(make_endpoint, provider_socket, peers):
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider_socket.hostport])],
                             instance_networks=["127.0.0.2/32"])
    stranger = peers("127.0.0.3")
    stranger.send(request("INVITE", "sip:4930222@tel.example.test", stranger), endpoint.internal_hostport)
    assert _statuses(stranger.receive(2.0)) == [403]
    assert provider_socket.receive(0.5) == []
    pbx = peers("127.0.0.2")
    pbx.send(request("OPTIONS", "sip:tel.example.test", pbx), endpoint.internal_hostport)
    relayed = provider_socket.receive(2.0)
    assert relayed and {m.method for m in relayed} == {"OPTIONS"}


MALFORMED = {
    "cseq_not_a_number": "OPTIONS sip:{ep} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKm1\r\n"
                         "From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: m1\r\nCSeq: abc OPTIONS\r\n"
                         "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
    "cseq_method_mismatch": "OPTIONS sip:{ep} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKm2\r\n"
                            "From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: m2\r\nCSeq: 1 INVITE\r\n"
                            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
    "bad_sip_version": "OPTIONS sip:{ep} SIP/7.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKm3\r\n"
                       "From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: m3\r\nCSeq: 1 OPTIONS\r\n"
                       "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
    "content_length_too_big": "OPTIONS sip:{ep} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKm4\r\n"
                              "From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: m4\r\nCSeq: 1 OPTIONS\r\n"
                              "Max-Forwards: 70\r\nContent-Length: 999\r\n\r\n",
    "no_via_garbage": "\x00\xff NOT SIP AT ALL \r\n\r\n",
    "truncated_headers": "INVITE sip:{ep} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKm5\r\nFrom: <sip:a@x",
}


@pytest.mark.parametrize("side", ["internal", "external"])
def test_malformed_input_gets_400_or_is_dropped_and_service_continues(raw_endpoint, peers, side):
    pbx = peers("127.0.0.2")
    target = raw_endpoint.internal_hostport if side == "internal" else raw_endpoint.external_hostport
    answered = {}
    for name, template in MALFORMED.items():
        pbx.send(template.format(ep=target, me=pbx.hostport), target)
        statuses = _statuses(pbx.receive(1.0))
        assert statuses in ([], [400]), (name, statuses)
        answered[name] = statuses
    # what can be answered is answered (the rest has no usable Via: RFC 3261 says drop)
    assert answered["cseq_not_a_number"] == answered["cseq_method_mismatch"] == [400]
    assert answered["content_length_too_big"] == [400]
    # still serving: the endpoint answers an OPTIONS addressed to itself from a PBX
    pbx.send(request("OPTIONS", f"sip:{raw_endpoint.internal_hostport}", pbx), raw_endpoint.internal_hostport)
    assert _statuses(pbx.receive(2.0)) == [200]
    assert raw_endpoint.proc.poll() is None and "exited with code" not in raw_endpoint.log()


def test_replies_do_not_name_the_software(raw_endpoint, peers):
    pbx = peers("127.0.0.2")
    pbx.send(request("OPTIONS", f"sip:{raw_endpoint.internal_hostport}", pbx), raw_endpoint.internal_hostport)
    reply = pbx.receive(2.0)[-1]
    assert reply.status == 200
    for name in ("Server", "User-Agent"):
        value = (reply.header(name) or "").lower()
        assert "kamailio" not in value and not any(c.isdigit() for c in value), value


def test_foreign_headers_pass_untouched_and_mediasec_gets_no_420(raw_endpoint, provider_socket, peers):
    pbx = peers("127.0.0.2")
    untouched = [
        "Supported: timer, 100rel, sec-agree",
        "Session-Expires: 1800;refresher=uac",
        "Require: sec-agree",
        "Proxy-Require: mediasec",
        "Security-Client: sdes-srtp;mediasec",
        "Security-Verify: msrp-tls;mediasec",
        "P-Asserted-Identity: <sip:+4930111@tel.example.test>",
    ]
    invite = request("INVITE", "sip:4989123@tel.example.test", pbx,
                     extra=f"Route: <sip:{raw_endpoint.internal_hostport};lr>\n"
                           f"Contact: <sip:4930111@192.0.2.99:5060>\n" + "\n".join(untouched))
    pbx.send(invite, raw_endpoint.internal_hostport)
    relayed = [m for m in provider_socket.receive(2.0, until_final=False) if m.method == "INVITE"]
    assert relayed, f"nothing relayed; PBX got {_statuses(pbx.receive(0.5))}"
    received = relayed[0]
    for line in untouched:
        name, value = line.split(": ", 1)
        assert ", ".join(received.headers(name)) == value
    assert "192.0.2.99" not in received.header("Contact")
    assert 420 not in _statuses(pbx.receive(0.5, until_final=False))


def test_a_reply_of_no_transaction_is_not_forwarded_along_its_vias(make_endpoint, provider_socket, peers):
    # Kamailio forwards a reply that matches no transaction statelessly to its second Via:
    # a tenant (internal side) or a stranger (external side) could aim replies at anyone
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider_socket.hostport])],
                             instance_networks=["127.0.1.0/24"], allow_destinations=None)
    tenant, victim, stranger = peers("127.0.1.1"), peers("127.0.1.2"), peers("127.0.0.7")
    for sender, side in ((tenant, endpoint.internal_hostport), (stranger, endpoint.external_hostport)):
        reply = (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {side};branch=z9hG4bK-forged-{sender.port}\r\n"
                 f"Via: SIP/2.0/UDP {victim.hostport};branch=z9hG4bK-victim\r\n"
                 f"From: <sip:a@example.test>;tag=1\r\nTo: <sip:b@example.test>;tag=2\r\n"
                 f"Call-ID: forged-reply-{sender.port}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
        sender.send(reply, side)
    assert victim.receive(1.5, until_final=False) == []
    # the endpoint still relays what it should: a PBX's MESSAGE reaches the provider
    tenant.send(request("MESSAGE", "sip:4930222@tel.example.test", tenant), endpoint.internal_hostport)
    assert [m.method for m in provider_socket.receive(2.0, until_final=False)][:1] == ["MESSAGE"]
