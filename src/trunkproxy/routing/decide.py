"""Routing decisions for an interface endpoint: message facts in, a Decision out.

Pure functions, stdlib only; the Kamailio adapter (trunkproxy.kamailio.kemi) gathers the
facts and applies the decision. In-dialog requests from PBXs and all replies are routed by
the native Kamailio config; Python decides initial requests, REGISTERs, in-dialog requests
arriving from outside, and the Contact rewrites on replies.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from trunkproxy.routing.settings import EndpointSettings, Socket
from trunkproxy.routing.sipuri import (
    parse_name_addr,
    parse_uri,
    split_header_values,
)
from trunkproxy.routing.tokens import TOKEN_PARAM, Flow, decode_token, encode_token

# Requests that create a dialog (or a subscription): their route set must include us.
DIALOG_FORMING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
# Requests whose 2xx (and 18x) carry the answerer's Contact, the dialog's remote target.
TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the request statelessly and stop."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Drop:
    """Say nothing (scanner traffic; RFC 3261 never answers an ACK)."""

    why: str


@dataclass(frozen=True, slots=True)
class Relay:
    """Forward statefully from `send_socket`, after the listed rewrites."""

    send_socket: str
    dst_uri: str | None = None
    ruri: str | None = None
    contact: str | None = None  # replacement value of the Contact header(s)
    path: str | None = None  # value of a Path header to add (REGISTER)
    record_route: str | None = None  # Record-Route parameters; None: do not record-route
    on_reply: str | None = None
    on_failure: str | None = None
    alternates: tuple[str, ...] = ()  # further next hops to try on failure


Decision = Reply | Drop | Relay


def _transport_param(uri_text: str | None) -> str | None:
    uri = parse_uri(uri_text) if uri_text else None
    value = uri.param("transport") if uri else None
    return value.lower() if value else None


def _hop(host: str, port: int, transport: str) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"sip:{host}:{port}" + ("" if transport == "udp" else f";transport={transport}")


def proxied_contact_uri(secret: bytes, uri_text: str, flow: Flow, socket: Socket) -> str | None:
    """Our external address in place of the PBX's, the PBX's flow and original URI in a token."""
    uri = parse_uri(uri_text)
    if uri is None or uri.param(TOKEN_PARAM) is not None:
        return None
    token = encode_token(secret, flow, uri.without_user())
    user = f"{uri.user}@" if uri.user else ""
    transport = "" if socket.transport == "udp" else f";transport={socket.transport}"
    return f"sip:{user}{socket.advertised_hostport()}{transport};{TOKEN_PARAM}={token}"


@functools.lru_cache(maxsize=4096)  # same PBX Contact, same flow: same answer (hot path)
def rewrite_contacts(secret: bytes, value: str, flow: Flow, socket: Socket) -> str | None:
    """New Contact header value pointing at the endpoint; None when nothing needs rewriting."""
    out = []
    changed = False
    for entry in split_header_values(value):
        addr = parse_name_addr(entry)
        new_uri = proxied_contact_uri(secret, addr.uri, flow, socket) if addr else None
        if addr is None or new_uri is None:
            out.append(entry)
            continue
        out.append(addr.with_uri(new_uri))
        changed = True
    return ", ".join(out) if changed else None


def restore_uri(secret: bytes, uri_text: str) -> tuple[Flow, str | None] | None:
    """(flow, the PBX's original URI with the current user part) for our tokenised URI."""
    uri = parse_uri(uri_text)
    token = uri.param(TOKEN_PARAM) if uri else None
    if not token:
        return None
    decoded = decode_token(secret, token)
    if decoded is None:
        return None
    flow, original = decoded
    if not original:
        return flow, None
    scheme, _colon, rest = original.partition(":")
    user = f"{uri.user}@" if uri.user else ""
    return flow, f"{scheme}:{user}{rest}"


@functools.lru_cache(maxsize=4096)
def restore_contacts(secret: bytes, value: str) -> str | None:
    """Contact header value of a reply with the PBX's own URIs back; None when unchanged."""
    out = []
    changed = False
    for entry in split_header_values(value):
        addr = parse_name_addr(entry)
        restored = restore_uri(secret, addr.uri) if addr else None
        if addr is None or restored is None or restored[1] is None:
            out.append(entry)
            continue
        out.append(addr.with_uri(restored[1]))
        changed = True
    return ", ".join(out) if changed else None


def supports_path(supported: str | None) -> bool:
    """RFC 3327: a registrar may refuse Path (420) unless the UA listed `path` in Supported."""
    return bool(supported) and any(tag.strip().lower() == "path" for tag in supported.split(","))


def strip_own_routes(settings: EndpointSettings, route: str) -> str | None:
    """The Route header value without the entries that point at this endpoint
    (None when nothing was ours). Routes of others stay, in order."""
    kept = []
    for entry in split_header_values(route):
        addr = parse_name_addr(entry)
        uri = parse_uri(addr.uri) if addr else None
        if uri is not None and settings.is_own(uri.host, uri.port):
            continue
        kept.append(entry)
    if len(kept) == len(split_header_values(route)):
        return None
    return ", ".join(kept)


def route_set_refusal(settings: EndpointSettings, route: str | None, source_ip: str) -> str | None:
    """Why an in-dialog request from a PBX does not follow a route this endpoint made (None:
    it does, or it has no Route at all, which the native route answers with 403).

    The leading Route entries must name this endpoint, and at least one must carry the flow
    token the endpoint signed into its Record-Route for this PBX (its source address): a
    forged To tag and a Route imitating the endpoint's gain nothing. An unsigned entry of
    ours is fine (the outbound-proxy Route a PBX preloads). The last of ours names the
    external side, as the endpoint's Record-Route pair does towards a PBX: Kamailio leaves
    from the socket it names (r2), and a PBX's request leaves on the external side only."""
    if not route:
        return None
    signed = False
    last_own = None
    for entry in split_header_values(route):
        addr = parse_name_addr(entry)
        uri = parse_uri(addr.uri) if addr else None
        if uri is None or not settings.is_own(uri.host, uri.port):
            break
        last_own = uri
        token = uri.param(TOKEN_PARAM)
        if token is None:
            continue
        decoded = decode_token(settings.secret, token)
        if decoded is None:
            return "Route entry with a forged signature"
        if decoded[0].host != source_ip:
            return f"Route signed for another instance ({decoded[0].host})"
        signed = True
    if not signed:
        return "Route not signed by this endpoint"
    if not settings.is_external(last_own.host, last_own.port):
        return "Route would leave on the internal side"
    return None


def route_from_pbx(
    settings: EndpointSettings,
    method: str,
    ruri: str,
    source: Flow,
    contact: str | None,
    preset_dst: str | None,
    ruri_is_local: bool,
    path_supported: bool = False,
) -> Decision:
    """An initial request or REGISTER from a PBX instance on the internal side."""
    if not settings.is_instance_source(source.host):
        return Reply(403, "Forbidden")
    uri = parse_uri(ruri)
    if uri is None:
        return Reply(416, "Unsupported URI Scheme")
    if preset_dst is None and ruri_is_local:
        if method == "OPTIONS":
            return Reply(200, "OK")
        return Reply(404, "Not Found")

    provider = settings.providers.get(uri.host.lower())
    ruri_transport = uri.param("transport")
    ruri_transport = ruri_transport.lower() if ruri_transport else None
    transport = (
        (provider.transport if provider else None)
        or _transport_param(preset_dst)
        or ruri_transport
        or source.transport
    )
    socket = settings.external.get(transport)
    if socket is None:
        return Reply(503, f"No {transport.upper()} Transport")

    dst_uri: str | None = None
    alternates: tuple[str, ...] = ()
    if preset_dst is not None:
        if _transport_param(preset_dst) != transport:
            route_uri = parse_uri(preset_dst)
            if route_uri is not None:
                dst_uri = f"sip:{route_uri.hostport};transport={transport}"
    elif provider and provider.addresses:
        hops = [_hop(host, port, transport) for host, port in provider.addresses]
        dst_uri, alternates = hops[0], tuple(hops[1:])
    elif transport != (ruri_transport or "udp"):
        dst_uri = f"sip:{uri.hostport};transport={transport}"

    flow_token = encode_token(settings.secret, source)
    new_contact = rewrite_contacts(settings.secret, contact, source, socket) if contact else None
    if method == "REGISTER":
        path = None
        if settings.path and path_supported:
            tp = "" if transport == "udp" else f";transport={transport}"
            path = f"<sip:{socket.advertised_hostport()}{tp};lr;{TOKEN_PARAM}={flow_token}>"
        return Relay(
            send_socket=socket.spec(), dst_uri=dst_uri, contact=new_contact, path=path,
            on_reply="register_reply", on_failure="register_failure", alternates=alternates,
        )
    return Relay(
        send_socket=socket.spec(),
        dst_uri=dst_uri,
        contact=new_contact,
        record_route=f";{TOKEN_PARAM}={flow_token}" if method in DIALOG_FORMING else None,
        on_failure="relay_failure",
        alternates=alternates,
    )


def _deliver_to_pbx(settings: EndpointSettings, flow: Flow, ruri: str | None, method: str, initial: bool) -> Decision:
    socket = settings.internal.get(flow.transport)
    if socket is None:
        return Reply(503, "Service Unavailable")
    # signed for the PBX it reaches: its in-dialog requests follow only this route
    # (route_set_refusal)
    record_route = f";{TOKEN_PARAM}={encode_token(settings.secret, flow)}"
    return Relay(
        send_socket=socket.spec(),
        dst_uri=flow.uri(),
        ruri=ruri,
        record_route=record_route if initial and method in DIALOG_FORMING else None,
        on_reply="reply_from_pbx" if method in TARGET_REFRESH else None,
    )


def _refuse(method: str, code: int, reason: str) -> Decision:
    return Drop("no reply to ACK") if method == "ACK" else Reply(code, reason)


def flow_of_hop(uri_text: str) -> Flow | None:
    """The flow a next-hop URI we set (`Flow.uri()`) points at."""
    uri = parse_uri(uri_text)
    if uri is None or uri.port is None:
        return None
    return Flow((uri.param("transport") or "udp").lower(), uri.host, uri.port)


def _route_token_flow(settings: EndpointSettings, top_route: str | None) -> Flow | None:
    if not top_route:
        return None
    addr = parse_name_addr(split_header_values(top_route)[0])
    route_uri = parse_uri(addr.uri) if addr else None
    token = route_uri.param(TOKEN_PARAM) if route_uri else None
    decoded = decode_token(settings.secret, token) if token else None
    return decoded[0] if decoded else None


def route_from_provider(
    settings: EndpointSettings,
    method: str,
    ruri: str,
    top_route: str | None,
    ruri_is_local: bool,
    known_source: bool,
) -> Decision:
    """An initial request on the external side: only a valid token opens the way in
    (in the Request-URI: our Contact; or in the top Route: our Path entry)."""
    restored = restore_uri(settings.secret, ruri)
    if restored is not None:
        flow, original = restored
        return _deliver_to_pbx(settings, flow, original, method, initial=True)
    uri = parse_uri(ruri)
    if uri is not None and uri.param(TOKEN_PARAM) is not None:
        return _refuse(method, 403, "Forbidden")
    path_flow = _route_token_flow(settings, top_route)
    if path_flow is not None:
        return _deliver_to_pbx(settings, path_flow, ruri, method, initial=True)
    if ruri_is_local and method == "OPTIONS":
        return Reply(200, "OK") if known_source else Drop("OPTIONS probe from unknown source")
    if known_source:
        return _refuse(method, 404, "Not Found")
    return _refuse(method, 403, "Forbidden")


def route_in_dialog_from_provider(settings: EndpointSettings, method: str, ruri: str, top_route: str | None) -> Decision:
    """An in-dialog request on the external side: delivered along our own signed route only."""
    restored = restore_uri(settings.secret, ruri)
    if restored is not None:
        flow, original = restored
        return _deliver_to_pbx(settings, flow, original, method, initial=False)
    route_flow = _route_token_flow(settings, top_route)
    if route_flow is not None:
        return _deliver_to_pbx(settings, route_flow, ruri, method, initial=False)
    return _refuse(method, 403, "Forbidden")
