"""Where a PBX's request may go (tenant isolation): one table of cases, no Kamailio needed."""
import ipaddress

import pytest

from trunkproxy.routing.destinations import destination_refusal, outbound_refusal, policy_from

INSTANCES = (ipaddress.ip_network("10.0.3.0/24"),)
HOST = ["10.0.3.1", "198.51.100.1", "127.0.0.1", "fe80::1"]
PINNED = frozenset({("10.0.3.99", 5060), ("127.0.0.1", 5090)})

OPEN = policy_from(INSTANCES, HOST, None, PINNED)
LISTED = policy_from(INSTANCES, HOST, ["203.0.113.0/24", "sip.example.net", "*.carrier.test"], PINNED)
# a test host: providers on loopback, tenants in a loopback /24 of their own
LOOPBACK_TESTS = policy_from((ipaddress.ip_network("127.0.1.0/24"),), HOST, ["127.0.2.0/24", "127.0.0.1/32"], PINNED)


@pytest.mark.parametrize("policy, ip, port, hop, refused", [
    # a provider on the internet: allowed without an allow-list
    (OPEN, "192.0.2.50", 5060, "sip.other.test", None),
    (OPEN, "2001:db8::5", 5060, None, None),
    # another tenant, the instance networks
    (OPEN, "10.0.3.7", 5060, None, "instance network 10.0.3.0/24"),
    (OPEN, "::ffff:10.0.3.7", 5060, None, "instance network 10.0.3.0/24"),  # IPv4-mapped spelling
    # the host itself, loopback, link-local, multicast, unspecified, broadcast
    (OPEN, "198.51.100.1", 5060, None, "address of this host 198.51.100.1/32"),
    (OPEN, "127.0.0.5", 8500, "localhost", "loopback 127.0.0.0/8"),
    (OPEN, "::1", 5060, None, "loopback ::1/128"),
    (OPEN, "fe80::1", 5060, None, "address of this host fe80::1/128"),
    (OPEN, "169.254.169.254", 80, None, "link-local 169.254.0.0/16"),
    (OPEN, "224.0.1.75", 5060, None, "multicast 224.0.0.0/4"),
    (OPEN, "0.0.0.0", 5060, None, "unspecified 0.0.0.0/8"),
    (OPEN, "255.255.255.255", 5060, None, "broadcast 255.255.255.255/32"),
    # pinned provider addresses are always allowed, by address and port only
    (OPEN, "10.0.3.99", 5060, None, None),
    (OPEN, "10.0.3.99", 5061, None, "instance network 10.0.3.0/24"),
    (OPEN, "127.0.0.1", 5090, None, None),
    (OPEN, "127.0.0.1", 8500, None, "address of this host 127.0.0.1/32"),
    # with an allow-list: only what it names
    (LISTED, "203.0.113.9", 5060, None, None),
    (LISTED, "192.0.2.50", 5060, "sip.other.test", "not in allow_destinations"),
    (LISTED, "192.0.2.50", 5060, "sip.example.net", None),
    (LISTED, "192.0.2.50", 5060, "SIP.Example.NET.", None),
    (LISTED, "192.0.2.50", 5060, "edge1.carrier.test", None),
    (LISTED, "192.0.2.50", 5060, "carrier.test", "not in allow_destinations"),
    (LISTED, "192.0.2.50", 5060, "evilcarrier.test", "not in allow_destinations"),
    # an allowed name that resolves inside is still refused
    (LISTED, "10.0.3.7", 5060, "sip.example.net", "instance network 10.0.3.0/24"),
    (LISTED, "127.0.0.1", 5060, "edge1.carrier.test", "address of this host 127.0.0.1/32"),
    (LISTED, "10.0.3.99", 5060, None, None),  # pinned
    # the most specific network decides; a tie goes to the allow-list
    (LOOPBACK_TESTS, "127.0.2.1", 5060, None, None),
    (LOOPBACK_TESTS, "127.0.0.1", 5060, None, None),
    (LOOPBACK_TESTS, "127.0.1.2", 5060, None, "instance network 127.0.1.0/24"),
    (LOOPBACK_TESTS, "127.0.0.5", 5060, None, "loopback 127.0.0.0/8"),
    (LOOPBACK_TESTS, "192.0.2.50", 5060, None, "not in allow_destinations"),
    # not an address at all
    (OPEN, "tel.example.test", 5060, None, "'tel.example.test' is not an IP address"),
])
def test_destination_refusal(policy, ip, port, hop, refused):
    assert destination_refusal(policy, ip, port, hop) == refused


def test_a_pbx_request_leaves_on_the_external_side_only():
    assert outbound_refusal(OPEN, False, "192.0.2.50", 5060) == "a PBX's request leaves on the external side only"
    assert outbound_refusal(OPEN, True, "192.0.2.50", 5060) is None
    assert outbound_refusal(OPEN, True, "10.0.3.7", 5060) == "instance network 10.0.3.0/24"


def test_without_allow_list_nothing_outside_is_restricted():
    assert not OPEN.restricted and LISTED.restricted
    assert policy_from(INSTANCES, HOST, [], PINNED).restricted  # an empty list refuses all but pinned
    assert destination_refusal(policy_from(INSTANCES, HOST, [], PINNED), "192.0.2.50", 5060) == "not in allow_destinations"
