"""End-to-end harness: a real provider (Kamailio registrar), SIPp peers, network namespaces.

Everything here is bounded: every subprocess has a timeout, every daemon is stopped by its PID
(SIGTERM, then SIGKILL of its own process group), every namespace is deleted in teardown.
Network traffic stays on loopback or in namespaces the test created.

Main pieces (see tests/e2e/README.md for examples):
    free_port(ip)                          -> int, free for UDP and TCP
    KamailioProcess(workdir, cfg_path, ip, port, netns=None, ...)   start/stop/ping/log
    ProviderRegistrar(workdir, ip, port, users=..., min_expires=..., pstn=..., ...)
    Sipp(workdir).run(scenario, target, vars=..., calls=1, rsa=..., ...) -> SippResult
    Sipp(workdir).background(scenario, ...) -> SippProcess (.wait() -> SippResult, .stop())
    NetNamespace(name) / Topology (host namespace with veth uplinks named ens5, ens6, ...)
"""
from __future__ import annotations

from .netns import NetNamespace, Topology, Uplink, netns_unavailable
from .procs import (ALLOWED_SUBNETS, DEFAULT_USERS, DOMAIN, KAMAILIO, KAMCMD, SIPP,
                    UNREACHABLE_CONTACT, KamailioProcess, free_port, netns_prefix, sip_ping,
                    tools_missing, wait_until)
from .provider import LoggedMessage, ProviderRegistrar
from .sipmsg import SipMessage
from .sipp import KEY_DEFAULTS, Sipp, SippProcess, SippResult

__all__ = [
    "ALLOWED_SUBNETS", "DEFAULT_USERS", "DOMAIN", "KAMAILIO", "KAMCMD", "KEY_DEFAULTS",
    "SIPP", "UNREACHABLE_CONTACT", "KamailioProcess", "LoggedMessage", "NetNamespace",
    "ProviderRegistrar", "SipMessage", "Sipp", "SippProcess", "SippResult", "Topology",
    "Uplink", "free_port", "netns_prefix", "netns_unavailable", "sip_ping", "tools_missing",
    "wait_until",
]
