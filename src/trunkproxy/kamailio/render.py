"""Endpoint configuration -> Kamailio's native config and the routing code's settings JSON."""
from __future__ import annotations

import errno
import ipaddress
import json
import shutil
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psutil

from trunkproxy.config.model import Config, Endpoint
from trunkproxy.media import plan as media_plan
from trunkproxy.routing.addresses import parse_hostport
from trunkproxy.routing.destinations import FLT_FROM_PBX, FLT_IN_DIALOG, is_host_name
from trunkproxy.routing.settings import socket_name


class InterfaceError(Exception):
    """The configured interface does not exist or has no usable address."""


@dataclass(frozen=True)
class ResolvedEndpoint:
    """An endpoint with its external address looked up on the host."""

    endpoint: Endpoint
    external_address: str
    run_dir: Path
    relays_media: bool = False

    @property
    def media_interfaces(self) -> tuple[media_plan.MediaInterface, media_plan.MediaInterface]:
        adv = _advertise(self.endpoint)
        return media_plan.endpoint_interfaces(self.name, self.endpoint.internal_address, self.external_address,
                                              adv[0] if adv else None)

    @property
    def name(self) -> str:
        return self.endpoint.endpoint_name

    @property
    def settings_path(self) -> Path:
        return self.run_dir / "settings.json"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "kamailio.cfg"

    @property
    def rpc_socket(self) -> Path:
        return self.run_dir / "rpc.sock"


NATIVE_CACHE_TTL_S = 86400
"""A memoised decision or REGISTER reply is forgotten this long after Python stored it (then
Python decides once more): a use does not renew it, which would cost every replay a write."""
DIALOG_TIMEOUT_S = 43200
"""A dialog with no BYE seen is no longer counted as active after this long (Kamailio's
dialog module's default_timeout): a lost BYE must not inflate the gauge for ever."""
TICK_INTERVAL_MS = 200
"""How often the timer process sends queued REGISTER events and checks the settings file."""
EVENT_BATCH_BYTES = 4000
"""Route TICK sends the joined events once they are longer than this. Each send is a Python
call (~16k instructions); each join copies the batch so far (~0.9 instructions per byte):
per event, 4 KB is about the cheapest (bench.instructions: 8 KB cost 500 more)."""
PV_BUFFER_BYTES = 8192
"""Kamailio's pv_printf buffer (`pv_buffer_size`, its default), where route TICK joins the
events: an event longer than what the batch leaves of it is sent alone."""


def interface_address(interface: str) -> str:
    addrs = psutil.net_if_addrs().get(interface)
    if addrs is None:
        known = ", ".join(sorted(psutil.net_if_addrs())) or "none"
        raise InterfaceError(f"network interface {interface!r} does not exist (this host has: {known})")
    for family in (socket.AF_INET, socket.AF_INET6):
        for addr in addrs:
            if addr.family == family and not addr.address.startswith("fe80"):
                return addr.address.split("%")[0]
    raise InterfaceError(f"network interface {interface!r} has no IP address; assign one or set external_address")


def _local_addresses() -> set[str]:
    """Every IPv4 and IPv6 address of this host's interfaces (without an IPv6 zone)."""
    return {addr.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for addr in addrs
            if addr.family in (socket.AF_INET, socket.AF_INET6)}


def host_addresses(config: Config) -> list[str]:
    """The host's own addresses (every interface's) and every endpoint's sockets: never a
    destination for a PBX's request (trunkproxy.routing.destinations). Read when the
    settings are written, i.e. at start and on every reload."""
    found = _local_addresses()
    for ep in config.endpoints:
        found.add(ep.internal_address)
        if ep.external_address:
            found.add(ep.external_address)
    return sorted(found)


def _is_loopback(address: str) -> bool:
    """Linux answers on all of 127.0.0.0/8 though `lo` lists 127.0.0.1 only."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def host_problems(config: Config) -> list[str]:
    """What `trunkproxy run` would refuse on this host (an interface missing or without an
    address, an address to bind that the host does not have), one line each naming the
    endpoint, the key and the fix: `check-config` reports them before anything starts."""
    local = _local_addresses()
    problems = []
    for ep in config.endpoints:
        if ep.external_address is None:
            try:
                interface_address(ep.interface)
            except InterfaceError as exc:
                problems.append(f"endpoint {ep.endpoint_name}: interface: {exc}")
        for key, address in (("external_address", ep.external_address), ("internal_address", ep.internal_address)):
            if address is not None and address not in local and not _is_loopback(address):
                problems.append(f"endpoint {ep.endpoint_name}: {key} = {address!r} is not an address of this host "
                                f"(it has: {', '.join(sorted(local))}); use one of them")
    return problems


def allow_destinations(config: Config, endpoint: Endpoint) -> list[str] | None:
    """The endpoint's allow-list, else the host's; None: none is set."""
    return endpoint.allow_destinations if endpoint.allow_destinations is not None else config.proxy.allow_destinations


def rtpengine_installed(config: Config) -> bool:
    return shutil.which(config.media.binary) is not None


def resolve_endpoint(config: Config, endpoint: Endpoint) -> ResolvedEndpoint:
    address = endpoint.external_address or interface_address(endpoint.interface)
    run_dir = config.state_path / "run" / endpoint.endpoint_name
    relays = media_plan.relays_media(config.media, endpoint, rtpengine_installed(config))
    return ResolvedEndpoint(endpoint, address, run_dir, relays)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _advertise(endpoint: Endpoint) -> tuple[str, int] | None:
    if not endpoint.advertise:
        return None
    return parse_hostport(endpoint.advertise, endpoint.external_port)


def settings_json(config: Config, resolved: ResolvedEndpoint, secret: bytes, events_socket: str | None,
                  provider_overrides: dict[str, dict] | None = None, aliases: list[str] = ()) -> str:
    """What the routing code inside Kamailio reads (trunkproxy.routing.settings)."""
    ep = resolved.endpoint
    adv = _advertise(ep)
    internal = {t: {"bind": _hostport(ep.internal_address, ep.internal_port)} for t in ep.transports}
    external = {}
    for t in ep.transports:
        entry = {"bind": _hostport(resolved.external_address, ep.external_port)}
        if adv:
            entry["advertise"] = _hostport(*adv)
        external[t] = entry
    providers = {host: {"addresses": list(p.addresses), "transport": p.transport} for host, p in config.providers.items()}
    for host, override in (provider_overrides or {}).items():
        merged = dict(providers.get(host.lower(), {"addresses": [], "transport": None}))
        merged.update({k: v for k, v in override.items() if v is not None})
        providers[host.lower()] = merged
    return json.dumps({
        "name": ep.endpoint_name,
        "secret": secret.hex(),
        "internal": internal,
        "external": external,
        "instance_networks": list(config.proxy.instance_networks),
        "providers": providers,
        "path": ep.path,
        "events_socket": events_socket,
        "aliases": list(aliases),
        "host_addresses": host_addresses(config),
        "allow_destinations": allow_destinations(config, ep),
    }, indent=2)


def _listen_lines(resolved: ResolvedEndpoint) -> list[str]:
    ep = resolved.endpoint
    adv = _advertise(ep)
    lines = []
    for t in ep.transports:
        lines.append(f'listen={t}:{_hostport(ep.internal_address, ep.internal_port)} name "{socket_name("int", t)}"')
    for t in ep.transports:
        advertise = f" advertise {_hostport(*adv)}" if adv else ""
        lines.append(f'listen={t}:{_hostport(resolved.external_address, ep.external_port)}{advertise} '
                     f'name "{socket_name("ext", t)}"')
    return lines


def kamailio_cfg(config: Config, resolved: ResolvedEndpoint, aliases: list[str] = ()) -> str:
    ep = resolved.endpoint
    template = resources.files("trunkproxy.kamailio").joinpath("templates/endpoint.cfg").read_text()
    entry = Path(__file__).with_name("kemi_entry.py")
    is_internal = " || ".join(f'$Rn == "{socket_name("int", t)}"' for t in ep.transports)
    networks = ",".join(str(ipaddress.ip_network(n, strict=False)) for n in config.proxy.instance_networks)
    listen = _listen_lines(resolved) + [f'alias="{a}"' for a in aliases]
    values = {
        "NAME": ep.endpoint_name,
        "DEBUG": {"debug": "3", "info": "1", "warning": "1", "error": "0"}[config.proxy.log_level],
        "DISABLE_CORE_DUMP": "no" if config.proxy.core_dumps else "yes",
        "WORKERS": str(config.proxy.workers),
        "TCP_KEEPIDLE": str(max(ep.keepalive_interval, 10)),
        "LISTEN": "\n".join(listen),
        "RUN_DIR": str(resolved.run_dir),
        "FR_TIMER": str(config.proxy.provider_timeout_ms),
        "FR_INV_TIMER": str(config.proxy.invite_timeout_ms),
        # a provider is known while a memoised reply to it can be replayed (the replay does
        # not mark it again)
        "KNOWN_TTL": str(NATIVE_CACHE_TTL_S),
        "CACHE_TTL": str(NATIVE_CACHE_TTL_S),
        "DIALOG_TTL": str(DIALOG_TIMEOUT_S),
        "TICK_US": str(TICK_INTERVAL_MS * 1000),
        "EVENT_BATCH": str(EVENT_BATCH_BYTES),
        "PV_BUFFER": str(PV_BUFFER_BYTES),
        "KEMI_ENTRY": str(entry),
        "IS_INTERNAL": is_internal,
        "INSTANCE_NETWORKS": networks,
        "FLT_FROM_PBX": str(FLT_FROM_PBX),
        "FLT_IN_DIALOG": str(FLT_IN_DIALOG),
        # the allow-list's names match the host of the next hop: a verdict depends on it then
        "NEXT_HOP_KEY": "|$nh(d)" if any(is_host_name(a) for a in allow_destinations(config, ep) or ()) else "",
    }
    values.update(_media_values(config, resolved))
    values.update({"HEP_DEFINE": "#!define WITH_HEP" if config.capture.hep else "",
                   "HEP_ADDRESS": config.capture.hep or "", "HEP_CAPTURE_ID": str(config.capture.capture_id)})
    for key, value in values.items():
        template = template.replace(f"@@{key}@@", value)
    return template


def _media_values(config: Config, resolved: ResolvedEndpoint) -> dict[str, str]:
    """WITH_MEDIA defined when the endpoint relays media (the template's `#!ifdef` blocks)."""
    from_pbx = media_plan.offer_flags(resolved.name, from_pbx=True)
    srtp_hosts = sorted(host.lower() for host, provider in config.providers.items() if provider.srtp)
    # a PBX's first offer to a provider that wants SRTP (the Request-URI names the provider
    # as the PBX wrote it, the key of [providers."HOST"])
    to_srtp = " || ".join(f'$(rd{{s.tolower}}) == "{host}"' for host in srtp_hosts)
    srtp_block = (f'if (!has_totag() && ({to_srtp})) {{\n\t\t\t$var(tp_mf) = "{from_pbx} '
                  f'{media_plan.SRTP_TO_PROVIDER}";\n\t\t}}') if srtp_hosts else ""
    return {
        "MEDIA_DEFINE": "#!define WITH_MEDIA" if resolved.relays_media else "",
        "MEDIA_CONTROL": f"udp:{media_plan.CONTROL_HOST}:{config.media.control_port}",
        "MEDIA_FROM_PBX": from_pbx,
        "MEDIA_FROM_PROVIDER": media_plan.offer_flags(resolved.name, from_pbx=False,
                                                      pbx_srtp=resolved.endpoint.pbx_srtp),
        "MEDIA_SRTP_TO_PROVIDER": srtp_block,
    }


def port_problems(endpoints: list[ResolvedEndpoint]) -> list[str]:
    """The endpoints' SIP sockets another program holds, or this user may not bind: one line
    each naming the endpoint, the key and the fix (`run` checks before starting anything, where
    Kamailio would only log a bind error and exit, again and again)."""
    problems = []
    for resolved in endpoints:
        ep = resolved.endpoint
        for key, address, port in (("internal_port", ep.internal_address, ep.internal_port),
                                   ("external_port", resolved.external_address, ep.external_port)):
            for transport in ep.transports:
                reason = _bind_failure(address, port, transport)
                if reason:
                    problems.append(f"endpoint {ep.endpoint_name}: {key} = {port}: cannot bind {transport} "
                                    f"{_hostport(address, port)}: {reason}")
    return problems


def _bind_failure(address: str, port: int, transport: str) -> str | None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as probe:
        if kind == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Kamailio: TIME_WAIT is no conflict
        try:
            probe.bind((address, port))
        except PermissionError:
            return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE: docs/service.md)"
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "another program uses it (stop it, or choose another port)"
            return exc.strerror or str(exc)
    return None
