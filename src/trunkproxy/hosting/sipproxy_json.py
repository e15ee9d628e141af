"""The seed's `sipproxy.json` format (file in an instance, or the same text in Consul KV).

```json
{
    "tel.t-online.de" : {
        "proxy" : "csphost01-ifens5.cs-proxy.service.pascom",
        "options" : "\\ntransport=tcp\\n"
    }
}
```

Pure: text in, rules out. Every error names the source (file path or Consul key), the JSON
line, the key and what to do about it.
"""
from __future__ import annotations

import json
import json.decoder
import json.scanner
import re
from dataclasses import dataclass, field
from typing import Any

from trunkproxy.hosting.options import ForcedSettings, OptionError, translate, validate_option

__all__ = ["ProxyRule", "SipProxyJsonError", "parse_sipproxy_json", "rule_for_host"]

ENTRY_KEYS = ("proxy", "options")

# A DNS name (labels of letters, digits, '-', '_'), or an IPv4 address; optional :PORT.
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")
_OPTION_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)?$")
# chan_sip options that may be given several times (they accumulate).
REPEATABLE = frozenset({"allow", "disallow", "endpoint.allow", "endpoint.disallow"})


class SipProxyJsonError(ValueError):
    """A sipproxy.json document (file or Consul KV value) that cannot be used."""

    def __init__(self, source: str, message: str, *, line: int | None = None, key: str | None = None,
                 fix: str = "") -> None:
        self.source = source
        self.line = line
        self.key = key
        self.fix = fix
        where = source if line is None else f"{source}:{line}"
        text = f"{where}: {'key ' + repr(key) + ': ' if key else ''}{message}"
        if fix:
            text += f"; {fix}"
        super().__init__(text)


@dataclass(frozen=True)
class ProxyRule:
    """Which proxy and which forced SIP options apply to every trunk of one registrar host."""

    registrar_host: str
    """The key as written, lower-cased (`tel.t-online.de`; may carry `:PORT`)."""
    proxy: str
    """Proxy endpoint name (`csphost01-ifens5.cs-proxy.service.pascom`), optionally `:PORT`."""
    options: tuple[tuple[str, str], ...] = ()
    """Forced options in chan_sip style, in order: (("transport", "tcp"),)."""
    option_lines: tuple[str, ...] = ()
    """The option lines as written (without blank lines), for messages."""
    source: str = field(default="", compare=False)
    """File path or `consul:KEY` the rule came from."""
    line: int | None = field(default=None, compare=False)
    """JSON line of the entry's key in the source."""

    def where(self) -> str:
        return self.source if self.line is None else f"{self.source}:{self.line}"

    def forced(self) -> ForcedSettings:
        """The options translated: `.transport` ('tcp' / 'udp' / None) is what a running endpoint forces."""
        return translate(self.options)


def parse_sipproxy_json(text: str, source: str) -> dict[str, ProxyRule]:
    """Parse the document; keys of the result are registrar hosts, lower-cased.

    Raises SipProxyJsonError (a ValueError) naming `source`, the line and the fix.
    """
    if not text.strip():
        raise SipProxyJsonError(source, "is empty", line=1,
                                fix='write a JSON object such as {"tel.t-online.de": {"proxy": "..."}} '
                                    "or {} for no rules, or remove it")
    try:
        document, lines = _decode_with_lines(text)
    except json.JSONDecodeError as exc:
        raise SipProxyJsonError(source, f"not valid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno,
                                fix="fix the JSON syntax there (keys and strings in double quotes, "
                                    "commas between entries, no trailing comma)") from exc
    if not isinstance(document, _LocatedObject):
        raise SipProxyJsonError(source, f"top level is {_kind(document)}, not an object", line=1,
                                fix='write {"REGISTRAR-HOST": {"proxy": "HOSTNAME-ifIFACE.cs-proxy.service.DOMAIN", '
                                    '"options": "\\ntransport=tcp\\n"}}')
    rules: dict[str, ProxyRule] = {}
    for key, value, pos in document.located:
        line = lines(pos)
        host = key.strip().lower()
        if host in rules:
            raise SipProxyJsonError(source, "registrar host appears twice", line=line, key=key,
                                    fix=f"merge the two entries (first at line {rules[host].line})")
        if not _valid_host(host):
            raise SipProxyJsonError(source, "is not a registrar host name", line=line, key=key,
                                    fix="use the provider's registrar host as the trunk names it, e.g. tel.t-online.de")
        rules[host] = _parse_entry(host, key, value, source, line, lines)
    return rules


def rule_for_host(rules: dict[str, ProxyRule], registrar: str) -> ProxyRule | None:
    """The rule for a trunk registrar `host[:port]`: an exact `host:port` key wins over `host`."""
    from trunkproxy.routing.addresses import parse_hostport

    wanted = registrar.strip().lower()
    if wanted in rules:
        return rules[wanted]
    host, _port = parse_hostport(wanted)
    return rules.get(host)


def _parse_entry(host: str, key: str, value: Any, source: str, line: int, lines: Any) -> ProxyRule:
    if not isinstance(value, _LocatedObject):
        raise SipProxyJsonError(source, f"value is {_kind(value)}, not an object", line=line, key=key,
                                fix='write {"proxy": "HOSTNAME-ifIFACE.cs-proxy.service.DOMAIN", "options": "..."}')
    fields: dict[str, tuple[Any, int]] = {}
    for name, item, pos in value.located:
        if name not in ENTRY_KEYS:
            raise SipProxyJsonError(source, f"unknown key {name!r} in entry {key!r}", line=lines(pos), key=name,
                                    fix=f"allowed keys are {', '.join(ENTRY_KEYS)}; remove it or check its spelling")
        if name in fields:
            raise SipProxyJsonError(source, f"{name!r} given twice in entry {key!r}", line=lines(pos), key=name,
                                    fix="keep one of them")
        fields[name] = (item, lines(pos))
    if "proxy" not in fields:
        raise SipProxyJsonError(source, "entry has no 'proxy'", line=line, key=key,
                                fix='add "proxy": "HOSTNAME-ifIFACE.cs-proxy.service.DOMAIN"')
    proxy, proxy_line = fields["proxy"]
    if not isinstance(proxy, str):
        raise SipProxyJsonError(source, f"'proxy' of {key!r} is {_kind(proxy)}, not a string", line=proxy_line,
                                key="proxy", fix='write it in double quotes, e.g. "csphost01-ifens5.cs-proxy.service.pascom"')
    proxy = proxy.strip()
    if not _valid_host(proxy.lower()):
        raise SipProxyJsonError(source, f"'proxy' of {key!r} is not a host name: {proxy!r}", line=proxy_line,
                                key="proxy", fix="write the endpoint's DNS name HOSTNAME-ifIFACE.cs-proxy.service.DOMAIN "
                                                 "(no 'sip:', no parameters)")
    options: list[tuple[str, str]] = []
    option_lines: list[str] = []
    if "options" in fields:
        text, options_line = fields["options"]
        if not isinstance(text, str):
            raise SipProxyJsonError(source, f"'options' of {key!r} is {_kind(text)}, not a string",
                                    line=options_line, key="options",
                                    fix='write one string with one option per line: "\\ntransport=tcp\\n"')
        for raw in text.split("\n"):
            stripped = raw.strip()
            if not stripped:
                continue
            option_lines.append(stripped)
            options.append(_parse_option(stripped, len(option_lines), key, source, options_line, options))
    return ProxyRule(registrar_host=host, proxy=proxy.lower(), options=tuple(options),
                     option_lines=tuple(option_lines), source=source, line=line)


def _parse_option(text: str, number: int, entry: str, source: str, line: int,
                  earlier: list[tuple[str, str]]) -> tuple[str, str]:
    label = f"option {text!r} (option {number} of 'options' in {entry!r})"
    name, sep, value = text.partition("=")
    name, value = name.strip().lower(), value.strip()
    if not sep or not name or not value:
        hint = " (a literal backslash-n: in JSON write \\n with one backslash)" if "\\n" in text else ""
        raise SipProxyJsonError(source, f"{label} is not key=value{hint}", line=line, key="options",
                                fix="write one chan_sip style option per line, e.g. transport=tcp")
    if not _OPTION_KEY.match(name):
        hint = " (a literal backslash-n: in JSON write \\n with one backslash)" if "\\" in name else ""
        raise SipProxyJsonError(source, f"{label}: {name!r} is not an option name{hint}", line=line, key="options",
                                fix="option names are letters, digits, '_' and '-' (optionally SECTION.name)")
    if name not in REPEATABLE and any(k == name for k, _ in earlier):
        raise SipProxyJsonError(source, f"{label}: {name!r} is given twice", line=line, key="options",
                                fix="keep one of the lines")
    try:
        validate_option(name, value)
    except OptionError as exc:
        raise SipProxyJsonError(source, f"{label}: {exc}", line=line, key="options", fix=exc.fix) from exc
    return name, value


def _valid_host(text: str) -> bool:
    host, sep, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    if sep and not (port.isdigit() and 0 < int(port) < 65536):
        return False
    return bool(_HOSTNAME.match(host))


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


class _LocatedObject(dict):
    """A JSON object that remembers where each value started (its key is on that line or just before)."""

    located: list[tuple[str, Any, int]]


def _decode_with_lines(text: str) -> tuple[Any, Any]:
    """json.loads, but objects are _LocatedObject with (key, value, offset-of-value) triples."""

    def parse_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None):
        positions: list[int] = []

        def scan_recording(string: str, idx: int) -> Any:
            positions.append(idx)
            return scan_once(string, idx)

        def build(pairs: list[tuple[str, Any]]) -> _LocatedObject:
            obj = _LocatedObject(pairs)
            obj.located = [(k, v, positions[i]) for i, (k, v) in enumerate(pairs)]
            return obj

        return json.decoder.JSONObject(s_and_end, strict, scan_recording, None, build, memo)

    decoder = json.JSONDecoder()
    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    document = decoder.decode(text)

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    return document, line_of
