"""What Python memoises for the native route to replay a REGISTER and read its reply. Pure.

The native config (endpoint.cfg, routes REGISTER_FROM_PBX and register_reply) takes these
values apart with `{s.select,N,|}`, so no field may hold a "|"; a value that cannot be built
is not memoised (the request or reply goes to Python every time). Layouts, chosen so that the
replay needs no conditions (each `if` in Kamailio's config costs about as much as a header
rewrite):

- the REGISTER: `socket name|next hop|registration|header lines`, the header lines being the
  rewritten Contact and the Path to add (if any), complete with their CRLFs, appended in one
  go after the PBX's Contact is removed (a REGISTER that already carries a Path goes to Python,
  which puts ours on top);
- the registration, kept in the transaction (`$avp(tp_rid)`) for the reply and failure
  routes: `flow registrar socket To-URI[ failover hop...]`, separated by spaces (none of
  them can hold one: addresses, a host name, URIs, whose spaces would be escaped);
- the reply: `event fields|the PBX's Contact value restored` for a 2xx (the native route
  looks up only 200s), `event fields` for a 401/407 (nothing to restore).
"""
from __future__ import annotations

from typing import NamedTuple


class Registration(NamedTuple):
    flow: str
    registrar: str
    socket: str
    to_uri: str
    alternates: tuple[str, ...] = ()


def registration_value(reg: Registration) -> str | None:
    """The transaction's registration as the routes keep it; None if a field would break it."""
    fields = (reg.flow, reg.registrar, reg.socket, reg.to_uri, *reg.alternates)
    if any(not f or " " in f or "|" in f for f in fields):
        return None
    return " ".join(fields)


def parse_registration(text: str | None) -> Registration | None:
    parts = (text or "").split(" ")
    if len(parts) < 4 or not all(parts[:4]):
        return None
    return Registration(parts[0], parts[1], parts[2], parts[3], tuple(p for p in parts[4:] if p))


def request_memo(socket_name: str, dst_uri: str, registration: str, contact: str, path: str | None) -> str | None:
    """The replay of a REGISTER: forced socket (by name), next hop, the transaction's
    registration, the Contact to send, the Path to add (None: none)."""
    lines = f"Contact: {contact}\r\n" + (f"Path: {path}\r\n" if path else "")
    fields = (socket_name, dst_uri, registration, lines)
    if not all(fields[:3]) or not contact or any("|" in f for f in fields):
        return None
    return "|".join(fields)


def reply_memo(fields: str, code: int, restored: str | None, reply_has_contact: bool) -> str | None:
    """The reading of a final reply to a REGISTER, for the same reply to the same registration:
    a 2xx with the PBX's Contact to restore, or a 401/407 that carries no Contact (the native
    route restores a Contact in every 2xx and touches none in a 401/407)."""
    if "|" in fields:
        return None
    if 200 <= code < 300:
        if not restored or "|" in restored:
            return None
        return f"{fields}|{restored}"
    if code in (401, 407) and not reply_has_contact:
        return fields
    return None
