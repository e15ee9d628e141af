"""Forced options: chan_sip style `key=value` lines -> Asterisk PJSIP settings.

The mapping is a table (`TRANSLATIONS`) so docs/hosting.md and the tests read the same data.
Options with a PJSIP equivalent are translated; `SECTION.name=value` (SECTION one of endpoint,
aor, auth, registration, identify) goes verbatim into that section; any other option goes
verbatim into the endpoint section. Pure, stdlib only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

__all__ = ["OptionError", "ForcedSettings", "SECTIONS", "TRANSLATIONS", "REJECTED", "translate", "validate_option"]

SECTIONS = ("endpoint", "aor", "auth", "registration", "identify")
TRANSPORTS = ("udp", "tcp")
# Keys the PJSIP writer owns: forcing them would break the trunk's wiring.
OWNED_KEYS = frozenset({"type", "outbound_proxy", "aors", "outbound_auth", "endpoint"})


class OptionError(ValueError):
    """One forced option that cannot be used; `fix` says what to write instead."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


Setting = tuple[str, str, str]  # (section, pjsip key, value); section "_transport" / "_port" are special


def _yes_no(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise OptionError(f"{value!r} is not yes or no", "write yes or no")


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


def _transport(value: str) -> list[Setting]:
    first = value.split(",")[0].strip().lower()
    if first == "tls":
        raise OptionError("transport=tls is not offered by trunkproxy endpoints (udp, tcp)",
                          "use transport=tcp; the proxy talks TLS to no one")
    if first not in TRANSPORTS:
        raise OptionError(f"transport {first!r} is unknown", "write transport=udp or transport=tcp")
    return [("_transport", "transport", first)]


def _port(value: str) -> list[Setting]:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise OptionError(f"port {value!r} is not a number 1-65535", "write e.g. port=5060")
    return [("_port", "port", value)]


def _nat(value: str) -> list[Setting]:
    parts = {p.strip().lower() for p in value.split(",") if p.strip()}
    known = {"yes", "no", "never", "force_rport", "comedia", "auto_force_rport", "auto_comedia", "route"}
    if not parts or not parts <= known:
        raise OptionError(f"nat={value} is not a chan_sip nat value",
                          "write nat=yes, nat=no or a list of force_rport, comedia")
    rport = bool(parts & {"yes", "force_rport", "auto_force_rport", "route"})
    comedia = bool(parts & {"yes", "comedia", "auto_comedia"})
    return [("endpoint", "force_rport", _yn(rport)), ("endpoint", "rewrite_contact", _yn(rport)),
            ("endpoint", "rtp_symmetric", _yn(comedia))]


def _choice(pjsip_key: str, choices: dict[str, str], section: str = "endpoint") -> Callable[[str], list[Setting]]:
    def convert(value: str) -> list[Setting]:
        lowered = value.split(",")[0].strip().lower()
        if lowered not in choices:
            raise OptionError(f"{value!r} is not one of {', '.join(choices)}", f"write one of {', '.join(choices)}")
        return [(section, pjsip_key, choices[lowered])]
    return convert


def _flag(pjsip_key: str, section: str = "endpoint") -> Callable[[str], list[Setting]]:
    def convert(value: str) -> list[Setting]:
        return [(section, pjsip_key, _yn(_yes_no(value.split(",")[0].strip())))]
    return convert


def _same(pjsip_key: str, section: str = "endpoint") -> Callable[[str], list[Setting]]:
    def convert(value: str) -> list[Setting]:
        return [(section, pjsip_key, value)]
    return convert


def _number(pjsip_key: str, section: str, *, zero_means: str | None = None) -> Callable[[str], list[Setting]]:
    def convert(value: str) -> list[Setting]:
        if not value.isdigit():
            raise OptionError(f"{value!r} is not a whole number", "write a number of seconds, e.g. 60")
        if value == "0" and zero_means is not None:
            value = zero_means
        return [(section, pjsip_key, value)]
    return convert


def _qualify(value: str) -> list[Setting]:
    if value.isdigit():
        timeout = int(value) / 1000
        return [("aor", "qualify_frequency", "60"), ("aor", "qualify_timeout", f"{timeout:g}")]
    return [("aor", "qualify_frequency", "60" if _yes_no(value) else "0")]


def _insecure(value: str) -> list[Setting]:
    parts = {p.strip().lower() for p in value.split(",")}
    if not parts <= {"port", "invite", "no", "very"}:
        raise OptionError(f"insecure={value} is not a chan_sip insecure value", "write insecure=port,invite or remove it")
    return []  # trunk endpoints written by trunkproxy never challenge the provider; identify matches by address


def _sendrpid(value: str) -> list[Setting]:
    lowered = value.lower()
    if lowered == "pai":
        return [("endpoint", "send_pai", "yes")]
    if lowered == "rpid":
        return [("endpoint", "send_rpid", "yes")]
    return [("endpoint", "send_rpid", _yn(_yes_no(value)))]


TRANSLATIONS: dict[str, Callable[[str], list[Setting]]] = {
    "transport": _transport,
    "port": _port,
    "nat": _nat,
    "dtmfmode": _choice("dtmf_mode", {"rfc2833": "rfc4733", "rfc4733": "rfc4733", "info": "info",
                                      "shortinfo": "info", "inband": "inband", "auto": "auto"}),
    "allow": _same("allow"),
    "disallow": _same("disallow"),
    "context": _same("context"),
    "fromuser": _same("from_user"),
    "fromdomain": _same("from_domain"),
    "callerid": _same("callerid"),
    "language": _same("language"),
    "directmedia": _flag("direct_media"),
    "canreinvite": _flag("direct_media"),
    "encryption": lambda v: [("endpoint", "media_encryption", "sdes" if _yes_no(v) else "no")],
    "sendrpid": _sendrpid,
    "trustrpid": _flag("trust_id_inbound"),
    "t38pt_udptl": _flag("t38_udptl"),
    "session-timers": _choice("timers", {"accept": "yes", "originate": "always", "refuse": "no"}),
    "session-expires": _number("timers_sess_expires", "endpoint"),
    "session-minse": _number("timers_min_se", "endpoint"),
    "rtptimeout": _number("rtp_timeout", "endpoint"),
    "rtpholdtimeout": _number("rtp_timeout_hold", "endpoint"),
    "qualify": _qualify,
    "qualifyfreq": _number("qualify_frequency", "aor"),
    "defaultexpiry": _number("expiration", "registration"),
    "registertimeout": _number("retry_interval", "registration"),
    "registerattempts": _number("max_retries", "registration", zero_means="10000"),
    "insecure": _insecure,
}

REJECTED: dict[str, str] = {
    "host": "the registrar host is the entry's key; remove this line",
    "outboundproxy": "the proxy is the entry's \"proxy\" value; remove this line",
    "secret": "secrets do not belong in a shared file; set them per trunk with `trunkproxy trunk edit --secret-stdin`",
    "remotesecret": "secrets do not belong in a shared file; set them per trunk with `trunkproxy trunk edit`",
    "md5secret": "secrets do not belong in a shared file; set them per trunk with `trunkproxy trunk edit`",
    "username": "usernames are per trunk; set them with `trunkproxy trunk edit --username`",
    "defaultuser": "usernames are per trunk; set them with `trunkproxy trunk edit --username`",
    "type": "trunkproxy writes the PJSIP section types itself; remove this line",
}


@dataclass(frozen=True)
class ForcedSettings:
    """What a rule's forced options do to a trunk's PJSIP sections."""

    transport: str | None = None
    """Forced transport (`tcp`): the transport section, and `;transport=tcp` on the proxy URI."""
    registrar_port: int | None = None
    sections: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    """Per section (endpoint, aor, ...): (key, value) pairs in order; replace the trunk's own keys."""


def validate_option(name: str, value: str) -> None:
    """Raise OptionError when a (lower-case) option cannot be translated or passed on."""
    _settings(name, value)


def translate(options: Iterable[tuple[str, str]]) -> ForcedSettings:
    """Options as parsed from sipproxy.json (already validated) -> ForcedSettings."""
    transport: str | None = None
    port: int | None = None
    sections: dict[str, list[tuple[str, str]]] = {}
    for name, value in options:
        for section, key, converted in _settings(name, value):
            if section == "_transport":
                transport = converted
            elif section == "_port":
                port = int(converted)
            else:
                sections.setdefault(section, []).append((key, converted))
    return ForcedSettings(transport=transport, registrar_port=port,
                          sections={name: tuple(pairs) for name, pairs in sections.items()})


def _settings(name: str, value: str) -> list[Setting]:
    if name in REJECTED:
        raise OptionError(f"{name!r} cannot be forced", REJECTED[name])
    if "." in name:
        section, _, key = name.partition(".")
        if section not in SECTIONS:
            raise OptionError(f"section {section!r} is unknown", f"write one of {', '.join(SECTIONS)} before the dot")
        if key in OWNED_KEYS:
            raise OptionError(f"{key!r} is written by trunkproxy", "remove this line")
        return [(section, key, value)]
    if name in TRANSLATIONS:
        return TRANSLATIONS[name](value)
    if name in OWNED_KEYS:
        raise OptionError(f"{name!r} is written by trunkproxy", "remove this line")
    return [("endpoint", name, value)]
