"""The rehearsal a Kamailio worker runs before its first message (routing.warmup)."""
import dataclasses
import ipaddress

from trunkproxy.routing.warmup import rehearse


def test_the_rehearsal_reaches_the_relay_paths_of_calls_registrations_and_inbound_calls(settings):
    # an outbound INVITE, a REGISTER, and the inbound INVITE to the Contact the first got
    assert rehearse(settings) == 3


def test_the_rehearsal_copes_with_any_settings(settings):
    bare = dataclasses.replace(settings, providers={}, instance_networks=())
    assert rehearse(bare) == 0  # 127.0.0.1 is no instance source there: refused, no error
    v6 = dataclasses.replace(settings, instance_networks=(ipaddress.ip_network("2001:db8::/64"),))
    assert rehearse(v6) == 3
    single = dataclasses.replace(settings, instance_networks=(ipaddress.ip_network("10.0.3.7/32"),))
    assert rehearse(single) == 3  # a PBX of its own: the address itself
