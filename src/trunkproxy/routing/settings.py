"""What the routing code knows about its endpoint, read from the JSON the control plane writes.

Stdlib only: this runs inside Kamailio's embedded interpreter.
"""
from __future__ import annotations

import functools
import ipaddress
import json
from dataclasses import dataclass, field

from trunkproxy.routing.addresses import parse_hostport
from trunkproxy.routing.destinations import DestinationPolicy, policy_from

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ProviderRoute:
    """How to reach one registrar host: pinned addresses (else DNS) and a forced transport."""

    addresses: tuple[tuple[str, int], ...] = ()
    transport: str | None = None


def socket_name(side: str, transport: str) -> str:
    """The name a listen socket has in the generated Kamailio config (side: "int" or "ext"):
    the native routes force a send socket by name (`$fsn`), cheaper than by address."""
    return f"{side}_{transport}"


@dataclass(frozen=True, slots=True)
class Socket:
    transport: str
    host: str
    port: int
    advertised_host: str
    advertised_port: int

    def spec(self) -> str:
        """Kamailio's socket notation, as `$fs` takes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"

    def advertised_hostport(self) -> str:
        host = self.advertised_host
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.advertised_port}"


@dataclass(frozen=True, slots=True)
class EndpointSettings:
    name: str
    secret: bytes
    internal: dict[str, Socket]
    external: dict[str, Socket]
    instance_networks: tuple[IpNetwork, ...]
    providers: dict[str, ProviderRoute] = field(default_factory=dict)
    path: bool = True
    events_socket: str | None = None
    pinned_ips: frozenset[str] = frozenset()
    """Addresses of providers pinned in the configuration: known sources from the start."""
    aliases: frozenset[str] = frozenset()
    """Host names that mean this endpoint (its Consul DNS name), lower-case."""
    destinations: DestinationPolicy = DestinationPolicy()
    """Where a PBX's request may be sent (trunkproxy.routing.destinations)."""

    def socket_name_of(self, spec: str) -> str | None:
        """The Kamailio name of the listen socket `spec` (`Socket.spec()`), None if not ours."""
        for side, sockets in (("int", self.internal), ("ext", self.external)):
            for transport, sock in sockets.items():
                if sock.spec() == spec:
                    return socket_name(side, transport)
        return None

    def is_own(self, host: str, port: int | None) -> bool:
        """Does host[:port] name one of this endpoint's sockets (bound or advertised)?"""
        return host.lower() in self.aliases or _names_socket(host, port, self.internal, self.external)

    def is_external(self, host: str, port: int | None) -> bool:
        """Does host[:port] name one of this endpoint's external sockets (bound or advertised)?"""
        return _names_socket(host, port, self.external)

    def is_instance_source(self, address: str) -> bool:
        return _in_networks(self.instance_networks, address)


def _names_socket(host: str, port: int | None, *sides: dict[str, Socket]) -> bool:
    host, port = host.lower(), port or 5060
    return any((host == s.host and port == s.port) or (host == s.advertised_host and port == s.advertised_port)
               for side in sides for s in side.values())


@functools.lru_cache(maxsize=1024)  # a handful of PBX addresses, asked on every request
def _in_networks(networks: tuple[IpNetwork, ...], address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def _sockets(raw: dict) -> dict[str, Socket]:
    out = {}
    for transport, entry in raw.items():
        host, port = parse_hostport(entry["bind"])
        adv_host, adv_port = parse_hostport(entry.get("advertise") or entry["bind"], port)
        out[transport] = Socket(transport, host, port, adv_host, adv_port)
    return out


def providers_from_json(raw: dict) -> dict[str, ProviderRoute]:
    return {
        host.lower(): ProviderRoute(
            tuple(parse_hostport(a) for a in entry.get("addresses", ())),
            entry.get("transport"),
        )
        for host, entry in raw.items()
    }


def settings_from_json(text: str) -> EndpointSettings:
    raw = json.loads(text)
    providers = providers_from_json(raw.get("providers", {}))
    instance_networks = tuple(ipaddress.ip_network(n, strict=False) for n in raw["instance_networks"])
    pinned = frozenset(address for p in providers.values() for address in p.addresses)
    return EndpointSettings(
        name=raw["name"],
        secret=bytes.fromhex(raw["secret"]),
        internal=_sockets(raw["internal"]),
        external=_sockets(raw["external"]),
        instance_networks=instance_networks,
        destinations=policy_from(instance_networks, raw.get("host_addresses", []), raw.get("allow_destinations"),
                                 pinned),
        providers=providers,
        path=bool(raw.get("path", True)),
        events_socket=raw.get("events_socket"),
        pinned_ips=frozenset(host for p in providers.values() for host, _port in p.addresses),
        aliases=frozenset(a.lower() for a in raw.get("aliases", ())),
    )
