"""Typed configuration of a trunkproxy host (one TOML file, documented in docs/configuration.md)."""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from trunkproxy.routing.destinations import is_host_name

Transport = Literal["udp", "tcp"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/trunkproxy"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "trunkproxy")


_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _allow_list(value: list[str] | None) -> list[str] | None:
    """Each entry an IP network or address, or a host name (`*.` for its subdomains)."""
    for entry in value or ():
        name = entry.lower().removeprefix("*.").rstrip(".")
        if is_host_name(entry) and not (name and all(_HOST_LABEL.match(label) for label in name.split("."))):
            raise ValueError(f"{entry!r} is neither an IP network ('203.0.113.0/24', '192.0.2.10') nor a host name "
                             "('sip.example.net', '*.example.net')")
    return value


AllowList = Annotated[list[str] | None, AfterValidator(_allow_list)]


class ProxySettings(_Strict):
    """Host-wide settings."""

    hostname: str | None = None
    """Name of this host in Consul service tags (`HOSTNAME-ifens5`); default: the system hostname."""
    state_dir: str = Field(default_factory=_default_state_dir)
    """Where the host secret, registration state and generated Kamailio configs live."""
    instance_networks: list[str] = ["127.0.0.0/8", "::1/128"]
    """Source networks allowed to send on an endpoint's internal side (the PBX instances)."""
    workers: int = Field(default=2, ge=1, le=64)
    """Kamailio worker processes per transport and endpoint."""
    shm_mb: int = Field(default=512, ge=16)
    """Kamailio shared memory per endpoint. Transactions live ~5 s after their final reply:
    about 150 KB per call/s sustained (docs/benchmark.md); 512 MB holds ~3,000 calls/s."""
    pkg_mb: int = Field(default=16, ge=4)
    kamailio_binary: str = "kamailio"
    provider_timeout_ms: int = Field(default=6000, ge=500)
    """No reply from a provider within this time: next pinned address, else 503 to the PBX."""
    invite_timeout_ms: int = Field(default=120000, ge=1000)
    """After a provisional reply, how long an INVITE may ring before it is given up."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    core_dumps: bool = False
    """Let a crashing Kamailio or rtpengine write a core file (into `state_dir/run/ENDPOINT/`
    where the kernel's core_pattern is a plain name). Off: a Kamailio core holds all of its
    shared memory (`shm_mb`, 512 MB by default) and Kamailio would raise the limit itself."""
    allow_destinations: AllowList = None
    """Where PBXs' requests may go, host-wide: networks (`203.0.113.0/24`) and host names
    (`sip.example.net`, `*.example.net`); everything else is refused. Unset: anywhere except
    the instance networks, the host's own addresses, loopback, link-local and multicast
    (docs/routing.md, "Tenant isolation"). An endpoint's own list replaces this one."""

    @field_validator("instance_networks")
    @classmethod
    def _networks_parse(cls, value: list[str]) -> list[str]:
        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"{net!r} is not an IP network (write e.g. '10.0.3.0/24')") from exc
        return value


class MediaSettings(_Strict):
    """The media relay: one rtpengine for the host, anchoring every call's RTP on the endpoint
    that carries its signalling (docs/media.md)."""

    relay: Literal["auto"] | bool = "auto"
    """Relay media through the endpoints: `true`, `false`, or `"auto"` (wherever rtpengine is
    installed). An endpoint's own `media_relay` replaces this."""
    port_min: int = Field(default=20000, ge=1024, le=65535)
    port_max: int = Field(default=29999, ge=1024, le=65535)
    """RTP/RTCP ports rtpengine allocates from (two per stream and side: one call with audio
    takes four). Below Linux's ephemeral ports (32768-60999), and never over a SIP port:
    rtpengine binds with SO_REUSEADDR, as Kamailio does, and would take a SIP socket's
    datagrams for itself (docs/media.md)."""
    control_port: int = Field(default=22222, ge=1, le=65535)
    """rtpengine's ng control socket, on 127.0.0.1 only."""
    binary: str = "rtpengine"
    timeout_s: int = Field(default=60, ge=5)
    """A call with no media in either direction for this long is ended by rtpengine (its
    session deleted: a lost BYE must not hold ports for ever)."""
    one_way_alarm_s: int = Field(default=10, ge=2)
    """A call whose media stops in one direction for this long is logged with its Call-ID."""
    poll_interval_s: float = Field(default=5.0, gt=0)
    """How often the control plane reads rtpengine's per-call statistics."""

    @model_validator(mode="after")
    def _port_range(self) -> "MediaSettings":
        if self.port_max - self.port_min < 3:
            raise ValueError(f"port_min = {self.port_min} and port_max = {self.port_max} leave no room for a call: "
                             "port_max must be at least port_min + 3 (one call takes four ports)")
        return self


class CaptureSettings(_Strict):
    """SIP capture for incident work: every message each endpoint receives and sends, mirrored
    as HEP v3 to a capture server (Homer, sngrep -L), docs/capture.md."""

    hep: str | None = None
    """`IP:PORT` of the HEP receiver (UDP); unset: no capture."""
    capture_id: int = Field(default=2001, ge=0, le=4294967295)
    """HEP capture agent id, telling this host's packets apart in Homer."""

    @field_validator("hep")
    @classmethod
    def _hep_parses(cls, value: str | None) -> str | None:
        from trunkproxy.routing.addresses import parse_hostport

        if value is None:
            return value
        host, port = parse_hostport(value, 0)
        try:
            ipaddress.ip_address(host)
        except ValueError as exc:
            raise ValueError(f"{value!r}: write the capture server as IP:PORT, e.g. '127.0.0.1:9060'") from exc
        if port == 0:
            raise ValueError(f"{value!r}: the capture server needs a port, e.g. '{host}:9060'")
        return value


class ApiSettings(_Strict):
    """The HTTP API and /metrics."""

    listen: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    enabled: bool = True


class ConsulSettings(_Strict):
    """Consul agent used for service registration and the host-wide sipproxy.json in KV."""

    enabled: bool = False
    address: str = "http://127.0.0.1:8500"
    domain: str = "pascom"
    """Consul DNS domain: endpoints resolve as `HOSTNAME-ifIFACE.cs-proxy.service.<domain>`."""
    service: str = "cs-proxy"
    kv_key: str | None = None
    """Default `config/<hostname>/system/outboundproxy`."""
    token: str | None = None


class Provider(_Strict):
    """What the operator knows about a provider (registrar host): pinned addresses, transport."""

    addresses: list[str] = []
    """`ip[:port]` entries used instead of DNS for this host, tried in order."""
    transport: Transport | None = None
    """Force this transport towards the provider (PBX may still use UDP towards us)."""
    srtp: bool = False
    """Calls to this provider offer SDES-SRTP (RTP/SAVP) even where the PBX offers plain RTP:
    the media relay encrypts on the provider's side (docs/media.md, "SRTP")."""

    @field_validator("addresses")
    @classmethod
    def _addresses_parse(cls, value: list[str]) -> list[str]:
        from trunkproxy.routing.addresses import parse_hostport

        for entry in value:
            host, _port = parse_hostport(entry)
            try:
                ipaddress.ip_address(host)
            except ValueError as exc:
                raise ValueError(f"{entry!r}: pinned addresses must be IP[:PORT], e.g. '192.0.2.10:5060'") from exc
        return value


class Endpoint(_Strict):
    """One interface endpoint: the proxy on one network interface."""

    interface: str
    """Network interface whose address the external side binds to (`ens5`; `lo` for testing)."""
    name: str | None = None
    """Endpoint name, default `if` + interface (`ifens5`): the CONTAINERNAME in Consul's tag."""
    external_address: str | None = None
    """Bind the external side to this address instead of the interface's first IPv4 address."""
    external_port: int = Field(default=5060, ge=1, le=65535)
    advertise: str | None = None
    """Public `ip[:port]` to put in headers when the endpoint sits behind a NAT (Kamailio advertise)."""
    internal_address: str = "127.0.0.1"
    """Where PBX instances send to (the host's internal address)."""
    internal_port: int = Field(default=5060, ge=1, le=65535)
    transports: list[Transport] = ["udp", "tcp"]
    keepalive_interval: int = Field(default=30, ge=0)
    """Seconds between OPTIONS keepalives to providers with registered flows (0 = off)."""
    path: bool = True
    """Add a Path header (RFC 3327) to REGISTERs in addition to rewriting the Contact."""
    allow_destinations: AllowList = None
    """This endpoint's allow-list (as `[proxy] allow_destinations`, which it replaces)."""
    media_relay: bool | None = None
    """Relay this endpoint's media (`[media] relay`, which this replaces when set)."""
    pbx_srtp: bool = True
    """False: PBXs behind this endpoint are offered plain RTP even where a provider offers
    SRTP; the media relay decrypts on the PBX's side (docs/media.md, "SRTP")."""

    @property
    def endpoint_name(self) -> str:
        return self.name or f"if{self.interface}"

    def relay_setting(self, media: MediaSettings) -> Literal["auto"] | bool:
        """Its own media_relay, else the host's [media] relay."""
        return self.media_relay if self.media_relay is not None else media.relay

    @model_validator(mode="after")
    def _sides_differ(self) -> "Endpoint":
        if self.external_address == self.internal_address and self.external_port == self.internal_port:
            raise ValueError("internal and external side must differ in address or port")
        return self


class Config(_Strict):
    proxy: ProxySettings = ProxySettings()
    media: MediaSettings = MediaSettings()
    capture: CaptureSettings = CaptureSettings()
    api: ApiSettings = ApiSettings()
    consul: ConsulSettings = ConsulSettings()
    endpoints: list[Endpoint] = Field(default_factory=list)
    providers: dict[str, Provider] = Field(default_factory=dict)
    """Keyed by registrar host as the PBX writes it in the Request-URI (`tel.t-online.de`)."""

    @model_validator(mode="after")
    def _unique_endpoints(self) -> "Config":
        seen: set[str] = set()
        for endpoint in self.endpoints:
            if endpoint.endpoint_name in seen:
                raise ValueError(f"two endpoints are named {endpoint.endpoint_name!r}; give one a distinct `name`")
            seen.add(endpoint.endpoint_name)
        return self

    @model_validator(mode="after")
    def _sip_ports_outside_media_ports(self) -> "Config":
        media = self.media
        for endpoint in self.endpoints:
            if endpoint.relay_setting(media) is False:
                continue
            for key in ("internal_port", "external_port"):
                port = getattr(endpoint, key)
                if media.port_min <= port <= media.port_max:
                    raise ValueError(
                        f"endpoint {endpoint.endpoint_name}: {key} = {port} lies in the media relay's ports "
                        f"[media] port_min..port_max = {media.port_min}..{media.port_max}, where rtpengine would take "
                        "its SIP datagrams: move the SIP port or the media port range")
        return self

    @property
    def state_path(self) -> Path:
        return Path(self.proxy.state_dir)


def embedded_default() -> Config:
    """Runs on any machine: one endpoint on loopback, PBXs send to 127.0.0.1:5060."""
    return Config(endpoints=[Endpoint(interface="lo", external_port=5080)])
