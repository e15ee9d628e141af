"""Registration events sent from the endpoint to the control plane (one JSON datagram each).

Format documented in docs/registrations.md; the control plane's monitor consumes them.
"""
from __future__ import annotations

import functools

from trunkproxy.routing.sipuri import header_param, parse_name_addr, parse_uri, split_header_values
from trunkproxy.routing.tokens import TOKEN_PARAM, Flow, decode_token


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def requested_expires(contact: str | None, expires_header: str | None) -> int | None:
    """Expiry the PBX asks for: its Contact's expires parameter, else the Expires header."""
    if contact:
        if contact.strip() == "*":
            return _int_or_none(expires_header)
        for entry in split_header_values(contact):
            addr = parse_name_addr(entry)
            if addr is not None:
                value = _int_or_none(header_param(addr.header_params, "expires"))
                if value is not None:
                    return value
    return _int_or_none(expires_header)


@functools.lru_cache(maxsize=4096)
def granted_expires(secret: bytes, contact: str | None, expires_header: str | None, flow: Flow) -> int | None:
    """Expiry the provider granted to this flow's binding (RFC 3261 10.2.4), else Expires header."""
    if contact:
        for entry in split_header_values(contact):
            addr = parse_name_addr(entry)
            uri = parse_uri(addr.uri) if addr else None
            token = uri.param(TOKEN_PARAM) if uri else None
            decoded = decode_token(secret, token) if token else None
            if decoded is not None and decoded[0] == flow:
                value = _int_or_none(header_param(addr.header_params, "expires"))
                if value is not None:
                    return value
    return _int_or_none(expires_header)


def aor_of(to_uri: str) -> str:
    uri = parse_uri(to_uri)
    if uri is None:
        return to_uri
    user = f"{uri.user}@" if uri.user else ""
    return f"{uri.scheme}:{user}{uri.host}"


def registrar_of(ruri: str) -> str | None:
    """The registrar a REGISTER goes to as the PBX wrote it: host and, when written, port
    (two registrars on one host are two registrations). None when the URI does not parse."""
    uri = parse_uri(ruri)
    return uri.hostport.lower() if uri is not None else None
