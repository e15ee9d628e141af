"""A host with a real `ens5`: the endpoint binds to it and carries a PBX's call to a provider
in another network namespace (the provider can reach nothing but ens5)."""
from __future__ import annotations

import pytest

from .endpoint import ProviderPin

pytestmark = [pytest.mark.e2e, pytest.mark.netns]


def test_endpoint_on_ens5_carries_registration_and_call_across_namespaces(topology, make_provider, make_endpoint,
                                                                            sipp):
    ens5 = topology.add_uplink("ens5", "198.51.100")
    pstn_port = 5070
    provider = make_provider(ens5.peer_ip, 5060, netns=ens5.peer.name, pstn=(ens5.peer_ip, pstn_port))
    far = sipp.background("provider_uas", netns=ens5.peer.name, local_ip=ens5.peer_ip, local_port=pstn_port)
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])],
                             netns=topology.host.name, interface="ens5", external_ip=None,
                             internal_port=5060, external_port=5060)
    assert "external 198.51.100.1:5060" in endpoint.log()

    sipp.run("pbx_register", rsa=endpoint.internal_hostport, netns=topology.host.name).assert_ok()
    binding = provider.contacts("4930111")[0]
    assert "198.51.100.1:5060" in binding["contact"] and "192.0.2.99" not in binding["contact"]

    sipp.run("pbx_uac", rsa=endpoint.internal_hostport, netns=topology.host.name, pause_ms=100).assert_ok(calls=1)
    assert far.wait(10).successful == 1
    invites = [m for m in provider.received("INVITE") if m.msg.is_request]
    assert invites and all(m.peer[0] == "198.51.100.1" for m in invites), [m.peer for m in invites]
