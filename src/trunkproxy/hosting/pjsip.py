"""Asterisk PJSIP sections for the trunks (endpoint, aor, auth, registration, identify), written atomically.

Rendering is pure (routes in, text out). Values are escaped once, here: Asterisk reads an
unescaped `;` as the start of a comment, so `sip:PROXY;lr;transport=tcp` is written
`sip:PROXY\\;lr\\;transport=tcp`.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from trunkproxy.atomic import write_atomically
from trunkproxy.hosting.resolve import Route
from trunkproxy.hosting.trunks import MASK

__all__ = ["OUTPUT_NAME", "PjsipSettings", "render_pjsip", "masked_diff", "write_atomically", "proxy_uri"]

OUTPUT_NAME = "pjsip_trunkproxy.conf"
"""The file apply writes into the output directory; include it from pjsip.conf (`#include pjsip_trunkproxy.conf`)."""
_SECRET_LINE = re.compile(r"^(password=).*$", re.MULTILINE)
_SECRET_LINE_WHOLE = re.compile(r"^password=.*$", re.MULTILINE)


@dataclass(frozen=True)
class PjsipSettings:
    """How apply writes the PBX side; defaults suit a stock Asterisk."""

    context: str = "from-trunk"
    """Dialplan context for calls from the trunks (forced `context=` overrides it)."""
    codecs: tuple[str, ...] = ("alaw", "ulaw")
    write_transports: bool = True
    """Write one transport section per protocol in use; off when the PBX defines them (see transport_names)."""
    transport_names: dict[str, str] = field(default_factory=lambda: {"udp": "trunkproxy-udp", "tcp": "trunkproxy-tcp"})
    bind: str = "0.0.0.0:5060"
    """Bind address of the transport sections written."""
    retry_interval: int = 60
    expiration: int = 600


def proxy_uri(route: Route) -> str | None:
    """`sip:PROXY;lr` plus `;transport=tcp` when TCP is forced or set (unescaped; the writer escapes)."""
    if route.proxy is None:
        return None
    uri = f"sip:{route.proxy};lr"
    if route.transport != "udp":
        uri += f";transport={route.transport}"
    return uri


def render_pjsip(routes: list[Route], settings: PjsipSettings = PjsipSettings()) -> str:
    """The whole file: transports in use, then five sections per trunk. Deterministic (no timestamps)."""
    lines = ["; Written by `trunkproxy apply`. Do not edit: the next apply overwrites it.",
             "; Trunk settings: `trunkproxy trunk edit`; proxies: sipproxy.json or Consul KV (docs/hosting.md).", ""]
    if settings.write_transports:
        for protocol in sorted({route.transport for route in routes}):
            lines += _section(settings.transport_names[protocol], "transport",
                              [("protocol", protocol), ("bind", settings.bind)])
    for route in routes:
        lines += _trunk(route, settings)
    return "\n".join(lines).rstrip("\n") + "\n"


def _trunk(route: Route, settings: PjsipSettings) -> list[str]:
    trunk = route.trunk
    port = route.forced.registrar_port or trunk.registrar_port
    hostport = trunk.registrar_host + (f":{port}" if port else "")
    tparam = "" if route.transport == "udp" else f";transport={route.transport}"
    transport = settings.transport_names[route.transport]
    proxy = proxy_uri(route)
    has_auth = bool(trunk.username)

    endpoint = [("transport", transport), ("context", settings.context), ("disallow", "all"),
                ("allow", ",".join(settings.codecs))]
    if has_auth:
        endpoint += [("outbound_auth", trunk.name), ("from_user", trunk.username)]
    endpoint += [("aors", trunk.name), ("from_domain", trunk.registrar_host)]
    aor = [("contact", f"sip:{hostport}{tparam}")]
    registration = [("transport", transport), ("outbound_auth", trunk.name),
                    ("server_uri", f"sip:{hostport}{tparam}"), ("client_uri", f"sip:{trunk.username}@{hostport}"),
                    ("contact_user", trunk.username), ("retry_interval", str(settings.retry_interval)),
                    ("expiration", str(settings.expiration)), ("line", "yes"), ("endpoint", trunk.name)]
    if proxy:
        for section in (endpoint, aor, registration):
            section.append(("outbound_proxy", proxy))
    match_host = (route.proxy.rsplit(":", 1)[0] if route.proxy and route.proxy.count(":") == 1
                  else route.proxy) or trunk.registrar_host
    identify = [("endpoint", trunk.name), ("match", match_host)]
    sections = {"endpoint": endpoint, "aor": aor, "registration": registration, "identify": identify,
                "auth": [("auth_type", "userpass"), ("username", trunk.username), ("password", trunk.secret)]}
    for section_type, forced in route.forced.sections.items():
        sections[section_type] = _override(sections[section_type], forced)

    lines = [f"; trunk {trunk.name}: " + (f"via proxy {route.proxy}" if route.proxy else "direct")
             + f", because of {route.reason()}"]
    if trunk.fallback:
        lines.append(f"; fallback trunk: {trunk.fallback}")
    order = ["endpoint", "aor"] + (["auth", "registration"] if has_auth else []) + ["identify"]
    for section_type in order:
        lines += _section(trunk.name, section_type, sections[section_type])
    return lines


def _override(own: list[tuple[str, str]], forced: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """Forced keys replace the trunk's own; a forced allow/disallow replaces the whole codec list."""
    forced_keys = {key for key, _ in forced}
    if forced_keys & {"allow", "disallow"}:
        forced_keys |= {"allow", "disallow"}
    return [(k, v) for k, v in own if k not in forced_keys] + list(forced)


def _section(name: str, section_type: str, settings: list[tuple[str, str]]) -> list[str]:
    lines = [f"[{name}]", f"type={section_type}"]
    lines += [f"{key}={_escape(value)}" for key, value in settings]
    return lines + [""]


def _escape(value: str) -> str:
    """Every `;` becomes `\\;` (Asterisk removes the backslash when reading; `\\;` in data reads back as `\\;`)."""
    return value.replace(";", "\\;")


def masked_diff(old: str, new: str, path: str) -> str:
    """Unified diff with every password masked; says so when only secrets changed."""
    old_m, new_m = _SECRET_LINE.sub(r"\g<1>" + MASK, old), _SECRET_LINE.sub(r"\g<1>" + MASK, new)
    diff = "".join(difflib.unified_diff(old_m.splitlines(keepends=True), new_m.splitlines(keepends=True),
                                        fromfile=f"{path} (current)", tofile=f"{path} (apply)"))
    if old != new and _SECRET_LINE_WHOLE.findall(old) != _SECRET_LINE_WHOLE.findall(new):
        diff += f"# {path}: secrets changed (not shown)\n"
    return diff
