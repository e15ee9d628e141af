"""The trunk provider for e2e tests: a Kamailio registrar rendered from provider/registrar.cfg.tmpl."""
from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .procs import (ALLOWED_SUBNETS, DEFAULT_USERS, DOMAIN, PROVIDER_TMPL, KamailioProcess,
                    free_port)
from .sipmsg import SipMessage

# --------------------------------------------------------------------------- provider

# $sndto(proto) is a number in Kamailio; $pr is a name
_PROTO_NUMBERS = {"1": "udp", "2": "tcp", "3": "tls", "4": "sctp", "5": "ws", "6": "wss"}


@dataclass
class LoggedMessage:
    """A message the provider received (direction 'in') or sent ('out')."""
    direction: str
    peer: tuple[str, int, str]   # (ip, port, proto) it came from / went to
    msg: SipMessage

    def __getattr__(self, name):  # delegate .method, .status, .header() ... to the message
        return getattr(self.msg, name)


class ProviderRegistrar(KamailioProcess):
    """The trunk provider: Kamailio registrar for `domain` with digest auth (see the cfg template).

    users:        {user: password}; AoR user == auth user.
    min_expires:  REGISTERs below it get 423 Interval Too Brief (with Min-Expires).
    pstn:         (ip, port[, transport]) where INVITEs to unregistered numbers go (a SIPp UAS);
                  None: 404.
    auth_invite:  challenge those outgoing INVITEs with 407.
    """

    def __init__(self, workdir: Path, ip: str = "127.0.0.1", port: int | None = None, *,
                 users: Mapping[str, str] | None = None, domain: str = DOMAIN,
                 min_expires: int = 10, max_expires: int = 3600, default_expires: int = 3600,
                 max_contacts: int = 10, nonce_expire: int = 300,
                 pstn: tuple | None = None, auth_invite: bool = False, qop: bool = True,
                 fr_timer_ms: int = 3000, fr_inv_timer_ms: int = 10000,
                 netns: str | None = None, debug: int = 2, children: int = 2,
                 name: str = "provider"):
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        port = port or free_port(ip)
        super().__init__(workdir, workdir / f"{name}.cfg", ip, port, netns=netns,
                         children=children, name=name)
        self.domain = domain
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.render(min_expires=min_expires, max_expires=max_expires,
                    default_expires=default_expires, max_contacts=max_contacts,
                    nonce_expire=nonce_expire, pstn=pstn, auth_invite=auth_invite, qop=qop,
                    fr_timer_ms=fr_timer_ms, fr_inv_timer_ms=fr_inv_timer_ms, debug=debug)

    def render(self, *, pstn, auth_invite, qop, **values) -> None:
        defines = []
        pstn_uri = ""
        if pstn:
            host, pport, *rest = pstn
            transport = rest[0] if rest else "udp"
            pstn_uri = f"sip:{host}:{pport}" + (f";transport={transport}" if transport != "udp" else "")
            defines.append("#!define WITH_PSTN")
        if auth_invite:
            defines.append("#!define WITH_AUTH_INVITE")
        for u, p in list(self.users.items()):
            if not re.fullmatch(r"[A-Za-z0-9_.+-]+", u) or '"' in p or "\\" in p:
                raise ValueError(f"user/password not usable in the cfg: {u!r}")
        users = "\n".join(f'\t$sht(users=>{u}) = "{p}";' for u, p in self.users.items())
        subst = dict(values, defines="\n".join(defines), users=users, domain=self.domain,
                     ip=self.ip, port=self.port, children=self.children, rundir=self.rundir,
                     pstn_uri=pstn_uri, challenge_flags="1" if qop else "0",
                     allowed_subnets=ALLOWED_SUBNETS)
        text = PROVIDER_TMPL.read_text()
        for k, v in subst.items():
            text = text.replace(f"@@{k}@@", str(v))
        left = re.findall(r"@@\w+@@", re.sub(r"(?m)^#.*$", "", text))
        if left:
            raise ValueError(f"unrendered template variables: {left}")
        self.cfg_path.write_text(text)

    # --- addressing
    @property
    def hostport(self) -> str:
        return f"{self.ip}:{self.port}"

    def uri(self, user: str | None = None, transport: str = "udp") -> str:
        u = f"sip:{user + '@' if user else ''}{self.hostport}"
        return u + (f";transport={transport}" if transport != "udp" else "")

    # --- what went over the wire
    def _logged(self, kind: str, direction: str) -> list[LoggedMessage]:
        out = []
        for m in re.finditer(rf"E2E-{kind}\|([^|]*)\|([^|]*)\|([^|]*)\|([A-Za-z0-9+/=]+)", self.log()):
            ip, port, proto, b64 = m.groups()
            try:
                text = base64.b64decode(b64).decode(errors="replace")
            except ValueError:
                continue
            peer = (ip, int(port) if port.isdigit() else 0, _PROTO_NUMBERS.get(proto, proto))
            out.append(LoggedMessage(direction, peer, SipMessage.parse(text, peer)))
        return out

    def received(self, method: str | None = None) -> list[LoggedMessage]:
        """Messages the provider received, in order (requests and replies).

        `method` filters requests by method and replies by CSeq method ('INVITE' gives both).
        """
        msgs = self._logged("RCV", "in")
        return [m for m in msgs if method is None or m.msg.method == method]

    def sent(self, method: str | None = None) -> list[LoggedMessage]:
        msgs = self._logged("SND", "out")
        return [m for m in msgs if method is None or m.msg.method == method]

    def events(self, kind: str) -> list[list[str]]:
        """Other E2E log lines: SAVED, AUTHFAIL, REFUSED, BADROUTE, DROPPED, INSANE."""
        return [line.split("E2E-" + kind + "|", 1)[1].split("|")
                for line in self.log().splitlines() if "E2E-" + kind + "|" in line]

    # --- runtime control and state
    def set_register_reply(self, reply: str | int | None, reason: str | None = None) -> None:
        """None: normal; 'drop': ignore REGISTERs; a code (503): answer every REGISTER with it
        (and `reason` as its reason phrase)."""
        self.rpc("htable.sets", "ctl", "register_reason", "s:" + (reason or ""))
        self.rpc("htable.sets", "ctl", "register_reply", "s:" + ("" if reply is None else str(reply)))

    def set_invite_reply(self, reply: str | int | None) -> None:
        self.rpc("htable.sets", "ctl", "invite_reply", "s:" + ("" if reply is None else str(reply)))

    def contacts(self, user: str) -> list[dict]:
        """Registered contacts of `user` ([] if none): dicts with 'contact', 'path', 'expires',
        'received', 'user_agent', 'socket' (parsed from `kamcmd ul.lookup`)."""
        try:
            out = self.rpc("ul.lookup", "location", "s:" + user)
        except RuntimeError as e:
            if "not found" in str(e).lower() or "404" in str(e):
                return []
            raise
        contacts: list[dict] = []
        for line in out.splitlines():
            m = re.match(r"\s*(\w[\w-]*):\s*(.*)$", line)
            if not m:
                continue
            key, value = m.group(1).lower(), m.group(2).strip()
            if key == "address":
                contacts.append({"contact": value})
            elif contacts:
                contacts[-1][key.replace("-", "_")] = None if value == "[not set]" else value
        return contacts

    def wait_registered(self, user: str, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            c = self.contacts(user)
            if c:
                return c
            if time.monotonic() > deadline:
                raise AssertionError(f"{user} not registered at the provider after {timeout}s")
            time.sleep(0.1)


