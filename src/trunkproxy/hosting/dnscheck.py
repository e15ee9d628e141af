"""Does a proxy name resolve? Asked before apply writes anything (dnspython, async)."""
from __future__ import annotations

import asyncio
import ipaddress

import dns.asyncresolver
import dns.exception
import dns.resolver

from trunkproxy.routing.addresses import parse_hostport

__all__ = ["make_resolver", "resolve_failure", "check_names"]


def make_resolver(server: str | None, timeout: float = 3.0) -> dns.asyncresolver.Resolver:
    """`server` `HOST[:PORT]` (e.g. Consul's DNS `127.0.0.1:8600`), or None for the system resolver."""
    if server is None:
        resolver = dns.asyncresolver.Resolver()
    else:
        host, port = parse_hostport(server, default_port=53)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = timeout
    resolver.timeout = timeout
    return resolver


async def resolve_failure(resolver: dns.asyncresolver.Resolver, name: str) -> str | None:
    """None if `name` (host[:port]) has an A or AAAA record (or is an IP), else why not."""
    host, _port = parse_hostport(name, default_port=0)
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    reasons = []
    for rdtype in ("A", "AAAA"):
        try:
            await resolver.resolve(host, rdtype, search=False)
            return None
        except dns.resolver.NXDOMAIN:
            return "no such name (NXDOMAIN)"
        except dns.resolver.NoAnswer:
            reasons.append(f"no {rdtype} record")
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            return f"DNS server did not answer ({type(exc).__name__})"
        except dns.exception.DNSException as exc:
            return f"{type(exc).__name__}: {exc}"
    return ", ".join(reasons)


async def check_names(names: list[str], server: str | None, timeout: float = 3.0) -> dict[str, str]:
    """{name: reason} for each name that does not resolve."""
    resolver = make_resolver(server, timeout)
    results = await asyncio.gather(*(resolve_failure(resolver, name) for name in names))
    return {name: reason for name, reason in zip(names, results) if reason is not None}
