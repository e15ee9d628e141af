"""Keepalives towards providers that hold a registration of a flow through an endpoint.

An OPTIONS from the endpoint's external socket every `keepalive_interval` seconds keeps NAT
bindings in front of the endpoint open. Which providers to ping is learned from the REGISTER
replies the endpoint reports (`KeepaliveTargets`, pure); the sending goes through Kamailio's
tm over RPC, so it leaves from exactly the socket the registration used.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import NamedTuple

from trunkproxy.kamailio.rpc import RpcError, rpc_call
from trunkproxy.registrations.events import RegisterEvent, RegisterReply

log = logging.getLogger("trunkproxy.keepalive")


class Target(NamedTuple):
    """One provider flow to keep alive (a NamedTuple: built for every REGISTER reply event)."""

    endpoint: str
    provider: str  # transport:ip:port
    socket: str  # udp:ip:port
    registrar: str


class KeepaliveTargets:
    """Provider flows with a live binding, learned from REGISTER replies."""

    def __init__(self) -> None:
        self._until: dict[Target, float] = {}

    def observe(self, event: RegisterEvent) -> None:
        if not isinstance(event, RegisterReply) or not (200 <= event.code < 300):
            return
        if not event.provider or not event.socket:
            return
        target = Target(event.key.endpoint, event.provider, event.socket, event.key.registrar)
        if event.expires:
            self._until[target] = max(self._until.get(target, 0.0), event.ts + event.expires)

    def live(self, endpoint: str, now: float) -> list[Target]:
        for target, until in list(self._until.items()):
            if until <= now:
                del self._until[target]
        return [t for t in self._until if t.endpoint == endpoint]


def options_request(target: Target) -> tuple[str, str, str, str, str, str]:
    """Arguments of Kamailio's `tm.t_uac_start` RPC for one keepalive OPTIONS."""
    transport, _sep, hostport = target.provider.partition(":")
    host, _sep, port = hostport.rpartition(":")
    host = f"[{host}]" if ":" in host else host
    suffix = "" if transport == "udp" else f";transport={transport}"
    local = target.socket.partition(":")[2]
    headers = (f"From: <sip:keepalive@{local}>\r\n"
               f"To: <sip:{target.registrar}>\r\n"
               "Max-Forwards: 70\r\n")
    return ("OPTIONS", f"sip:{target.registrar}", f"sip:{host}:{port}{suffix}", target.socket, headers, "")


async def run_keepalives(endpoint: str, rpc_socket: Path, interval: float, targets: KeepaliveTargets,
                         clock) -> None:
    """Forever: every `interval` seconds one OPTIONS per live provider flow of `endpoint`."""
    while True:
        await asyncio.sleep(interval)
        for target in targets.live(endpoint, clock()):
            try:
                await rpc_call(rpc_socket, "tm.t_uac_start", *options_request(target))
            except RpcError as exc:
                log.debug("keepalive to %s via %s not sent: %s", target.provider, endpoint, exc)
