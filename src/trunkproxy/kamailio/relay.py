"""Relaying from the Python side: headers read and replaced, a decision applied, a failover
to the next provider address. Thin KSR calls, used by trunkproxy.kamailio.kemi (Kamailio's
embedded python3: stdlib only)."""
from __future__ import annotations

import KSR  # type: ignore[import-not-found]  # provided by app_python3

from trunkproxy.routing import decide


def fail_over(route_name: str, alternates: tuple[str, ...] = ()) -> int:
    """Next pinned provider address, else a quick 503 when the provider never answered.
    `alternates`: the failover hops of a REGISTER replayed natively (kept in its
    registration); $avp(tp_alt) holds those not tried yet, empty when all were."""
    if KSR.tm.t_is_canceled() > 0:
        KSR.route("MEDIA_END")
        return 1
    remaining = next_hops(alternates)
    if remaining and fails_over(int(KSR.pv.get("$T_reply_code") or 0)):
        first, _sep, rest = remaining.partition(" ")
        KSR.pv.sets("$du", first)
        KSR.pv.sets("$avp(tp_alt)", rest)
        KSR.tm.t_on_failure(route_name)
        if KSR.tm.t_relay() < 0:
            KSR.route("MEDIA_END")
            if refused():
                KSR.tm.t_reply(403, "Forbidden")
        return 1
    KSR.route("MEDIA_END")
    if KSR.tm.t_branch_timeout() > 0 and KSR.tm.t_branch_replied() < 0:
        KSR.tm.t_reply(503, "Service Unavailable")
    return 1


def next_hops(alternates: tuple[str, ...]) -> str:
    """The provider addresses a failover has not tried yet: $avp(tp_alt) once set (empty when
    all were tried), else all of `alternates` (a REGISTER replayed natively keeps them in its
    registration)."""
    remaining = KSR.pv.get("$avp(tp_alt)")
    return " ".join(alternates) if remaining is None else remaining


def fails_over(code: int) -> bool:
    """A final reply after which fail_over tries the next provider address."""
    return code == 408 or 500 <= code < 600


def refused() -> bool:
    """Did onsend_route refuse to send the current message (Router.check_destination)?"""
    return KSR.pv.get("$var(tp_refused)") == KSR.pv.get("$mi")


def media_refused() -> bool:
    """Did route MEDIA refuse the current message's SDP (and answer it 488)?"""
    return KSR.pv.get("$var(tp_nomedia)") == KSR.pv.get("$mi")


_HEADER_SPECS: dict[str, str] = {}


def header(name: str) -> str | None:
    """All values of a header, comma-joined (a header may be repeated)."""
    spec = _HEADER_SPECS.get(name)
    if spec is None:
        spec = _HEADER_SPECS[name] = f"$(hdr({name})[*])"
    return KSR.pv.get(spec)


def replace_header(name: str, value: str) -> None:
    KSR.hdr.remove(name)
    KSR.hdr.append(f"{name}: {value}\r\n")


def apply_decision(decision: decide.Decision) -> None:
    if isinstance(decision, decide.Reply):
        KSR.sl.sl_send_reply(decision.code, decision.reason)
        return
    if isinstance(decision, decide.Drop):
        return  # the native route exits without a reply
    if decision.ruri is not None:
        KSR.pv.sets("$ru", decision.ruri)
    if decision.dst_uri is not None:
        KSR.pv.sets("$du", decision.dst_uri)
    KSR.pv.sets("$fs", decision.send_socket)
    if decision.contact is not None:
        replace_header("Contact", decision.contact)
    if decision.path is not None:
        # on top of any Path entries already there (RFC 3327), else after the Contact as the
        # native route's replay puts it
        if KSR.hdr.is_present("Path") > 0:
            KSR.hdr.insert(f"Path: {decision.path}\r\n")
        else:
            KSR.hdr.append(f"Path: {decision.path}\r\n")
    if decision.record_route is not None:
        if decision.record_route:
            KSR.rr.record_route_params(decision.record_route)
        else:
            KSR.rr.record_route()
    if decision.alternates:
        KSR.pv.sets("$avp(tp_alt)", " ".join(decision.alternates))
    if decision.on_reply:
        KSR.tm.t_on_reply(decision.on_reply)
    if decision.on_failure:
        KSR.tm.t_on_failure(decision.on_failure)
    # one final answer when nothing could be sent: ours (as route NOT_RELAYED), not tm's 477
    KSR.tm.t_set_disable_internal_reply(1)
    # the media step of route RELAY: SDP rewritten, reply and failure routes armed
    KSR.route("MEDIA")
    if media_refused():
        return
    if KSR.tm.t_relay() < 0 and KSR.pv.get("$rm") != "ACK":
        KSR.route("MEDIA_END")
        if refused():
            KSR.sl.send_reply(403, "Forbidden")
        else:
            KSR.sl.send_reply(503, "Service Unavailable")
