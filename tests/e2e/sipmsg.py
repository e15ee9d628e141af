"""A tiny SIP message reader for assertions in end-to-end tests (not production code).

Parses one SIP message (request or reply) as logged by the provider registrar, so that tests can
assert on what a peer really received: ``msg.method``, ``msg.status``, ``msg.header("Path")``,
``msg.headers("Via")`` (one entry per comma-separated value), ``msg.uri_of("Contact")``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

COMPACT = {
    "v": "via", "f": "from", "t": "to", "m": "contact", "i": "call-id", "l": "content-length",
    "c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding",
    "o": "event", "u": "allow-events", "r": "refer-to", "b": "referred-by",
}
# headers whose values may be comma-joined lists (RFC 3261 7.3.1); others are kept whole
LIST_HEADERS = {"via", "route", "record-route", "path", "contact", "supported", "require",
                "allow", "proxy-require", "service-route"}


def _split_commas(value: str) -> list[str]:
    """Split a header value at top-level commas (not inside <...> or "...")."""
    out, cur, depth, quoted = [], [], 0, False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


@dataclass
class SipMessage:
    start_line: str
    raw_headers: list[tuple[str, str]]
    body: str = ""
    src: tuple[str, int, str] | None = field(default=None)  # (ip, port, proto) it came from/went to

    @classmethod
    def parse(cls, text: str, src: tuple[str, int, str] | None = None) -> "SipMessage":
        head, _, body = text.replace("\r\n", "\n").partition("\n\n")
        lines = head.split("\n")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and headers:  # folded line
                name, value = headers[-1]
                headers[-1] = (name, value + " " + line.strip())
            elif ":" in line:
                name, value = line.split(":", 1)
                headers.append((name.strip(), value.strip()))
        return cls(lines[0].strip(), headers, body, src)

    @property
    def is_request(self) -> bool:
        return not self.start_line.startswith("SIP/")

    @property
    def method(self) -> str | None:
        """Request method, or the CSeq method of a reply."""
        if self.is_request:
            return self.start_line.split(" ", 1)[0]
        cseq = self.header("CSeq")
        return cseq.split()[-1] if cseq else None

    @property
    def status(self) -> int | None:
        return int(self.start_line.split()[1]) if not self.is_request else None

    @property
    def ruri(self) -> str | None:
        return self.start_line.split()[1] if self.is_request else None

    def headers(self, name: str) -> list[str]:
        """All values of a header (comma-joined list headers are split), in order."""
        want = COMPACT.get(name.lower(), name.lower())
        out = []
        for hname, value in self.raw_headers:
            if COMPACT.get(hname.lower(), hname.lower()) == want:
                out.extend(_split_commas(value) if want in LIST_HEADERS else [value])
        return out

    def header(self, name: str) -> str | None:
        values = self.headers(name)
        return values[0] if values else None

    def uri_of(self, name: str) -> str | None:
        """The URI inside the first value of a name-addr header (Contact, Path, Route...)."""
        value = self.header(name)
        if value is None:
            return None
        m = re.search(r"<([^>]*)>", value)
        return m.group(1) if m else value.split(";", 1)[0].strip()

    def __str__(self) -> str:
        hdrs = "\r\n".join(f"{n}: {v}" for n, v in self.raw_headers)
        return f"{self.start_line}\r\n{hdrs}\r\n\r\n{self.body}"
