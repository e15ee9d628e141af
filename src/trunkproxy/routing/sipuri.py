"""Just enough SIP URI and Contact/Route parsing for rewriting (RFC 3261 section 25).

Kamailio has already parsed and sanity-checked the message; these helpers take header
values as text and never raise on odd input: they return None / leave text untouched.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SipUri:
    scheme: str  # "sip" or "sips"
    user: str  # userinfo before '@' ("" when absent), password included verbatim
    hostport: str  # host[:port], IPv6 in brackets
    params: str  # ";a=b;lr" including the leading ';' ("" when none)
    headers: str  # "?h=v" including the '?' ("" when none)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{self.scheme}:{user}{self.hostport}{self.params}{self.headers}"

    def without_user(self) -> str:
        return f"{self.scheme}:{self.hostport}{self.params}{self.headers}"

    def param(self, name: str) -> str | None:
        """Value of URI parameter `name` ("" for a flag parameter), None when absent."""
        lname = name.lower()
        for item in self.params.split(";")[1:]:
            key, _eq, value = item.partition("=")
            if key.strip().lower() == lname:
                return value.strip()
        return None

    @property
    def host(self) -> str:
        hp = self.hostport
        if hp.startswith("["):
            return hp[1 : hp.find("]")]
        return hp.rsplit(":", 1)[0] if hp.count(":") == 1 else hp

    @property
    def port(self) -> int | None:
        hp = self.hostport
        tail = hp[hp.find("]") + 1 :] if hp.startswith("[") else hp
        if tail.count(":") == 1:
            value = tail.rsplit(":", 1)[1]
            return int(value) if value.isdigit() else None
        return None


def parse_uri(text: str) -> SipUri | None:
    text = text.strip()
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("sip", "sips"):
        return None
    headers = ""
    qmark = rest.find("?")
    if qmark >= 0:
        rest, headers = rest[:qmark], rest[qmark:]
    user = ""
    at = rest.rfind("@")
    if at >= 0:
        user, rest = rest[:at], rest[at + 1 :]
    semi = rest.find(";")
    hostport, params = (rest, "") if semi < 0 else (rest[:semi], rest[semi:])
    if not hostport:
        return None
    return SipUri(scheme, user, hostport, params, headers)


@dataclass(frozen=True, slots=True)
class NameAddr:
    """One entry of a Contact/Route/Path header: [display] <uri> ;header-params."""

    display: str
    uri: str
    header_params: str
    bracketed: bool

    def with_uri(self, uri: str) -> str:
        display = f"{self.display} " if self.display else ""
        return f"{display}<{uri}>{self.header_params}"


def split_header_values(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and <...>."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


def parse_name_addr(entry: str) -> NameAddr | None:
    entry = entry.strip()
    lt = _unquoted_index(entry, "<")
    if lt >= 0:
        gt = entry.find(">", lt)
        if gt < 0:
            return None
        return NameAddr(entry[:lt].strip(), entry[lt + 1 : gt].strip(), entry[gt + 1 :].strip(), True)
    semi = entry.find(";")
    uri, params = (entry, "") if semi < 0 else (entry[:semi], entry[semi:])
    return NameAddr("", uri.strip(), params, False)


def _unquoted_index(text: str, needle: str) -> int:
    quoted = False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == needle and not quoted:
            return i
    return -1


def header_param(header_params: str, name: str) -> str | None:
    lname = name.lower()
    for item in header_params.split(";")[1:]:
        key, _eq, value = item.partition("=")
        if key.strip().lower() == lname:
            return value.strip().strip('"')
    return None
