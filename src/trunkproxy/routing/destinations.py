"""Where a request from a PBX may be sent: isolation between the tenants of a shared host.

Every PBX instance trusts the endpoint's address, so the endpoint must never carry one
tenant's request to another tenant, to another address of the instance networks, or to a
service on the host itself. The rule is decided on the address a request is actually sent to
(Kamailio's onsend_route, after every Route, Request-URI, DNS answer and failover), by
`outbound_refusal`; docs/routing.md, "Tenant isolation".

Pure, stdlib only: this runs inside Kamailio's embedded interpreter.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# Message flags of the generated config (kamailio/templates/endpoint.cfg): a request from a PBX,
# and one in a dialog, whose Route onsend_route checks too
FLT_FROM_PBX = 1
FLT_IN_DIALOG = 2

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Never a provider's address: (network, why), whatever the configuration says (unless the
# allow-list names a network at least as specific, or a provider address is pinned).
SPECIAL_NETWORKS: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified"),
    ("::/128", "unspecified"),
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("ff00::/8", "multicast"),
    ("255.255.255.255/32", "broadcast"),
)


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """What an endpoint refuses to send a PBX's request to, and what it allows anyway."""

    refused: tuple[tuple[IpNetwork, str], ...] = ()
    """Networks never sent to, each with the reason logged when one is refused."""
    allowed: tuple[IpNetwork, ...] = ()
    """The allow-list's networks."""
    allowed_names: tuple[str, ...] = ()
    """The allow-list's host names, lower-case; `.example.net` stands for `*.example.net`."""
    restricted: bool = False
    """An allow-list is set: whatever it does not name is refused."""
    pinned: frozenset[tuple[str, int]] = frozenset()
    """Pinned provider addresses (ip, port): always allowed, even inside a refused network."""


def ip_network(text: str) -> IpNetwork:
    return ipaddress.ip_network(text.strip(), strict=False)


def is_host_name(entry: str) -> bool:
    """An allow-list entry that names hosts rather than a network."""
    try:
        ip_network(entry)
    except ValueError:
        return True
    return False


def policy_from(instance_networks: tuple[IpNetwork, ...], host_addresses: list[str], allow: list[str] | None,
                pinned: frozenset[tuple[str, int]]) -> DestinationPolicy:
    """The policy of one endpoint: the instance networks, the host's own addresses (every
    endpoint's sockets included) and the special ranges refused; `allow` None: no allow-list."""
    refused = [(ip_network(n), why) for n, why in SPECIAL_NETWORKS]
    refused += [(net, "instance network") for net in instance_networks]
    refused += [(ip_network(a), "address of this host") for a in host_addresses]
    names = tuple(e.strip().lower().removeprefix("*").rstrip(".") for e in allow or () if is_host_name(e))
    return DestinationPolicy(
        refused=tuple(refused),
        allowed=tuple(ip_network(e) for e in allow or () if not is_host_name(e)),
        allowed_names=names,
        restricted=allow is not None,
        pinned=frozenset((_canonical(host) or host, port) for host, port in pinned),
    )


def _canonical(text: str) -> IpAddress | None:
    """The address `text` stands for; an IPv4-mapped IPv6 address is the IPv4 address it maps."""
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip


def _most_specific(ip: IpAddress, entries, network=lambda entry: entry):
    """The entry whose network (`network(entry)`) contains `ip` with the longest prefix."""
    best = None
    for entry in entries:
        net = network(entry)
        if net.version == ip.version and ip in net and (best is None or net.prefixlen > network(best).prefixlen):
            best = entry
    return best


def _name_allowed(policy: DestinationPolicy, host: str | None) -> bool:
    if not host:
        return False
    host = host.lower().rstrip(".")
    return any(host == n or (n.startswith(".") and host.endswith(n)) for n in policy.allowed_names)


def destination_refusal(policy: DestinationPolicy, ip_text: str, port: int, hop_host: str | None = None) -> str | None:
    """Why a PBX's request must not be sent to ip:port (None: it may). `hop_host`: the host
    of the URI it is sent to (the allow-list's names match it; its DNS answer is `ip_text`).

    The most specific network that contains the address decides: a refused network, or the
    allow-list's (which wins a tie: an operator who names exactly that network means it)."""
    ip = _canonical(ip_text)
    if ip is None:
        return f"{ip_text!r} is not an IP address"
    if (ip, port) in policy.pinned:
        return None
    refused = _most_specific(ip, policy.refused, network=lambda entry: entry[0])
    allowed = _most_specific(ip, policy.allowed)
    if refused is not None and (allowed is None or allowed.prefixlen < refused[0].prefixlen):
        net, why = refused
        return f"{why} {net}"
    if policy.restricted and allowed is None and not _name_allowed(policy, hop_host):
        return "not in allow_destinations"
    return None


def outbound_refusal(policy: DestinationPolicy, via_external: bool, ip_text: str, port: int,
                     hop_host: str | None = None) -> str | None:
    """Why a request from a PBX must not be sent (None: it may): it leaves only through the
    endpoint's external side, towards a destination `destination_refusal` allows. (A request
    from outside goes where its verified flow token says: not checked here.)"""
    if not via_external:
        return "a PBX's request leaves on the external side only"
    return destination_refusal(policy, ip_text, port, hop_host)
