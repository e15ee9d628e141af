"""Flow tokens: tamper-evident, self-describing references to a PBX's flow.

A token names the flow a PBX sent from (transport, address, port) and, for Contact
rewriting, the URI the PBX originally wrote (minus its user part, which stays visible in
the rewritten URI). It is HMAC-signed with the host secret, so any replica holding the
secret can route with it and no outsider can make the endpoint send to an address of
its choosing. Characters used are URI-unreserved, so a token is a valid URI parameter
value as is.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from dataclasses import dataclass

TOKEN_PARAM = "tpt"
_MAC_BYTES = 12
_TRANSPORTS = ("udp", "tcp", "tls")


@dataclass(frozen=True, slots=True)
class Flow:
    """Where a PBX instance is reachable: the source of what it sent us."""

    transport: str
    host: str
    port: int

    def uri(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"sip:{host}:{self.port}{suffix}"

    def __str__(self) -> str:
        return f"{self.transport}:{self.host}:{self.port}"


@functools.lru_cache(maxsize=1024)
def flow_of_text(text: str) -> Flow | None:
    """`udp:10.0.3.7:5062` (as `str(flow)` writes it) back to a Flow; None if malformed."""
    transport, _sep, hostport = text.partition(":")
    host, _sep, port = hostport.rpartition(":")
    if transport not in _TRANSPORTS or not host or not port.isdigit():
        return None
    return Flow(transport, host, int(port))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()[:_MAC_BYTES]


# A PBX sends the same Contact from the same flow on every call and every refresh: the HMAC
# is computed once per distinct value (bounded; a flood of distinct junk only evicts).
@functools.lru_cache(maxsize=4096)
def encode_token(secret: bytes, flow: Flow, original_uri: str = "") -> str:
    payload = f"{flow.transport}|{flow.host}|{flow.port}|{original_uri}".encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


@functools.lru_cache(maxsize=4096)
def decode_token(secret: bytes, token: str) -> tuple[Flow, str] | None:
    """(flow, original URI or "") for a genuine token; None for anything else."""
    body, dot, mac = token.partition(".")
    if not dot or not body or not mac:
        return None
    try:
        payload = _unb64(body)
        given = _unb64(mac)
    except (ValueError, TypeError):
        return None
    if not hmac.compare_digest(given, _mac(secret, payload)):
        return None
    try:
        transport, host, port, original = payload.decode().split("|", 3)
        flow = Flow(transport, host, int(port))
    except (UnicodeDecodeError, ValueError):
        return None
    if transport not in _TRANSPORTS or not 0 < flow.port < 65536:
        return None
    return flow, original
