"""Replicas sharing the host secret: a token one replica issued is routed by another,
with no shared state between them."""
from __future__ import annotations

import secrets

import pytest

from .endpoint import ProviderPin
from .procs import free_port
from .rawsip import UdpPeer, request

pytestmark = pytest.mark.e2e


def test_inbound_request_routed_by_the_other_replica(make_endpoint, provider, sipp):
    secret = secrets.token_hex(32)
    pins = [ProviderPin("tel.example.test", [provider.hostport])]
    replica_a = make_endpoint(providers=pins, secret_hex=secret)
    replica_b = make_endpoint(providers=pins, secret_hex=secret)
    pbx_port = free_port("127.0.0.2")
    sipp.run("pbx_register", rsa=replica_a.internal_hostport, local_ip="127.0.0.2", local_port=pbx_port).assert_ok()
    contact = provider.contacts("4930111")[0]["contact"]
    assert f":{replica_a.external_port};" in contact
    pbx = sipp.background("pbx_uas", vars={"user": "4930111"}, local_ip="127.0.0.2", local_port=pbx_port)

    # the provider (here: a raw peer at the provider's address family) reaches replica B instead
    caller = UdpPeer("127.0.0.1")
    try:
        ruri = contact.strip("<>").split(">")[0]
        invite = request("INVITE", ruri, caller, extra="Contact: <sip:4989000@127.0.0.1>\nContent-Type: application/sdp",
                         body="v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                              "m=audio 40000 RTP/AVP 8\r\n")
        caller.send(invite, replica_b.external_hostport)
        replies = caller.receive(5.0)
        assert 200 in [m.status for m in replies], [m.start_line for m in replies]
    finally:
        caller.close()
        pbx.stop()


def test_a_replica_with_another_secret_refuses_the_token(make_endpoint, provider, sipp):
    pins = [ProviderPin("tel.example.test", [provider.hostport])]
    replica_a = make_endpoint(providers=pins)
    other = make_endpoint(providers=pins)  # its own secret
    sipp.run("pbx_register", rsa=replica_a.internal_hostport).assert_ok()
    ruri = provider.contacts("4930111")[0]["contact"].strip("<>").split(">")[0]
    caller = UdpPeer("127.0.0.1")
    try:
        caller.send(request("INVITE", ruri, caller), other.external_hostport)
        assert [m.status for m in caller.receive(3.0)] == [403]
    finally:
        caller.close()
