"""Host/port parsing shared by configuration and routing (stdlib only)."""
from __future__ import annotations


def parse_hostport(text: str, default_port: int = 5060) -> tuple[str, int]:
    """`1.2.3.4`, `1.2.3.4:5070`, `[2001:db8::1]:5060`, `host.example` -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']' in IPv6 reference")
        host, rest = text[1:end], text[end + 1 :]
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':PORT' after ']'")
        return host, _port(rest[1:], text)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, _port(port, text)
    if not text:
        raise ValueError("empty address")
    return text, default_port


def _port(value: str, text: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"{text!r}: port must be a number 1-65535")
    return int(value)
