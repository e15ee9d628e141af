"""Which proxy a trunk uses: sipproxy.json > Consul KV > the trunk's interface > direct. Pure."""
from __future__ import annotations

import enum
import socket
from dataclasses import dataclass, field

from trunkproxy.config.model import Config
from trunkproxy.hosting.options import ForcedSettings, translate
from trunkproxy.hosting.sipproxy_json import ProxyRule, rule_for_host
from trunkproxy.hosting.trunks import DEFAULT_INTERFACE, Trunk

__all__ = ["EndpointMap", "Route", "RouteSource", "host_name", "proxy_dns_name", "resolve_routes", "default_kv_key"]


def host_name(config: Config) -> str:
    """This host's name in Consul tags: `proxy.hostname`, else the system hostname's first label."""
    name = config.proxy.hostname or socket.gethostname()
    return name.split(".")[0].lower()


def default_kv_key(config: Config) -> str:
    return config.consul.kv_key or f"config/{host_name(config)}/system/outboundproxy"


def proxy_dns_name(hostname: str, endpoint_name: str, service: str, domain: str) -> str:
    """Consul DNS form `<tag>.<service>.service.<domain>` with tag `HOSTNAME-ENDPOINT`."""
    return f"{hostname}-{endpoint_name}.{service}.service.{domain.strip('.')}".lower()


@dataclass(frozen=True)
class EndpointMap:
    """The interface endpoints of this host and their proxy DNS names."""

    hostname: str
    service: str = "cs-proxy"
    domain: str = "pascom"
    endpoints: dict[str, str] = field(default_factory=dict)
    """Interface name and endpoint name (`ens5`, `ifens5`) -> endpoint name (`ifens5`)."""
    internal: dict[str, str] | None = None
    """Without Consul (a standalone host): endpoint name -> its internal side `IP:PORT`, the
    proxy the PBX is given instead of a Consul DNS name nothing would resolve."""

    @classmethod
    def from_config(cls, config: Config, hostname: str | None = None) -> "EndpointMap":
        names: dict[str, str] = {}
        for endpoint in config.endpoints:
            names[endpoint.interface.lower()] = endpoint.endpoint_name
            names[endpoint.endpoint_name.lower()] = endpoint.endpoint_name
        internal = None if config.consul.enabled else {
            e.endpoint_name: (f"[{e.internal_address}]" if ":" in e.internal_address else e.internal_address)
            + f":{e.internal_port}" for e in config.endpoints}
        return cls(hostname=(hostname or host_name(config)).lower(), service=config.consul.service,
                   domain=config.consul.domain, endpoints=names, internal=internal)

    def proxy_for(self, interface: str) -> str | None:
        endpoint = self.endpoints.get(interface.lower())
        if endpoint is None:
            return None
        if self.internal is not None:
            return self.internal[endpoint]
        return proxy_dns_name(self.hostname, endpoint, self.service, self.domain)


class RouteSource(str, enum.Enum):
    FILE = "file"
    CONSUL = "consul"
    INTERFACE = "interface"
    DIRECT = "direct"


@dataclass(frozen=True)
class Route:
    """The decision for one trunk."""

    trunk: Trunk
    proxy: str | None
    """Proxy host[:port] (`csphost01-ifens5.cs-proxy.service.pascom`), None = direct."""
    source: RouteSource
    rule: ProxyRule | None = None
    forced: ForcedSettings = ForcedSettings()

    @property
    def transport(self) -> str:
        return self.forced.transport or self.trunk.transport

    def log_line(self) -> str:
        if self.proxy is None:
            return f"Will route trunk [{self.trunk.name}] directly to registrar [{self.trunk.registrar}] (no proxy)"
        return f"Will route trunk [{self.trunk.name}] via proxy [{self.proxy}]"

    def reason(self) -> str:
        if self.source in (RouteSource.FILE, RouteSource.CONSUL) and self.rule is not None:
            forced = ", ".join(self.rule.option_lines) or "none"
            return f"entry {self.rule.registrar_host!r} of {self.rule.where()} (forced options: {forced})"
        if self.source is RouteSource.INTERFACE:
            return f"the trunk's interface setting {self.trunk.interface!r}"
        return "no sipproxy.json or Consul entry for its registrar and interface 'default'"


def resolve_routes(trunks: list[Trunk], file_rules: dict[str, ProxyRule] | None,
                   kv_rules: dict[str, ProxyRule] | None, endpoints: EndpointMap) -> tuple[list[Route], list[str]]:
    """Routes for all trunks, and the errors (one line each) that stop an apply."""
    routes: list[Route] = []
    errors: list[str] = []
    for trunk in trunks:
        try:
            routes.append(resolve_route(trunk, file_rules, kv_rules, endpoints))
        except ValueError as exc:
            errors.append(str(exc))
    return routes, errors


def resolve_route(trunk: Trunk, file_rules: dict[str, ProxyRule] | None, kv_rules: dict[str, ProxyRule] | None,
                  endpoints: EndpointMap) -> Route:
    for rules, source in ((file_rules, RouteSource.FILE), (kv_rules, RouteSource.CONSUL)):
        rule = rule_for_host(rules, trunk.registrar) if rules else None
        if rule is not None:
            return Route(trunk=trunk, proxy=rule.proxy, source=source, rule=rule, forced=translate(rule.options))
    if trunk.interface.lower() != DEFAULT_INTERFACE:
        proxy = endpoints.proxy_for(trunk.interface)
        if proxy is None:
            known = sorted(set(endpoints.endpoints.values())) or ["none configured"]
            raise ValueError(f"trunk {trunk.name}: interface {trunk.interface!r} has no proxy endpoint on this host "
                             f"(endpoints: {', '.join(known)}); fix with `trunkproxy trunk edit {trunk.name} "
                             f"--interface IFACE` or add the endpoint to the host configuration")
        return Route(trunk=trunk, proxy=proxy, source=RouteSource.INTERFACE)
    return Route(trunk=trunk, proxy=None, source=RouteSource.DIRECT)
