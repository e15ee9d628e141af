"""Network namespaces for e2e tests: a host with veth uplinks named like production (ens5...)."""
from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Sequence

# --------------------------------------------------------------------------- namespaces

_ns_ids = itertools.count(1)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespace tests need root (ip netns add)"
    if not shutil.which("ip"):
        return "iproute2 (ip) not installed"
    return None


class NetNamespace:
    """A named network namespace `tpe2e-...` with lo up; deleted by .delete() (idempotent)."""

    def __init__(self, role: str = "ns"):
        self.name = f"tpe2e-{os.getpid() % 100000}-{next(_ns_ids)}-{role}"[:48]
        self.created = False

    def create(self) -> "NetNamespace":
        _ip("netns", "add", self.name)
        self.created = True
        _ip("-n", self.name, "link", "set", "lo", "up")
        return self

    def delete(self) -> None:
        if self.created:
            # processes still inside keep the namespace alive but it loses its name; the
            # fixtures stop their processes before this runs
            _ip("netns", "delete", self.name, check=False)
            self.created = False

    def run(self, *cmd: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True,
                              text=True, timeout=timeout)

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.delete()


@dataclass
class Uplink:
    iface: str          # the host-side name, like production: ens5
    host_ip: str        # e.g. 198.51.100.1
    peer: NetNamespace  # the provider's namespace ("the internet behind ens5")
    peer_ip: str        # e.g. 198.51.100.2
    peer_iface: str = "uplink"


class Topology:
    """A CSP host as a namespace with veth interfaces named like production (ens5, ens6...),
    each leading to its own provider namespace.

        topo = Topology().create()
        ens5 = topo.add_uplink("ens5", "198.51.100")   # host 198.51.100.1 <-> provider .2
        ProviderRegistrar(tmp, ens5.peer_ip, 5060, netns=ens5.peer.name)
        Sipp(tmp).run(..., netns=topo.host.name, local_ip="127.0.0.1")
        topo.delete()
    """

    def __init__(self):
        self.host = NetNamespace("host")
        self.uplinks: dict[str, Uplink] = {}

    def create(self) -> "Topology":
        self.host.create()
        return self

    def add_uplink(self, iface: str, prefix24: str, host_octet: int = 1, peer_octet: int = 2,
                   peer_ip_extra: Sequence[str] = ()) -> Uplink:
        peer = NetNamespace(f"p{len(self.uplinks) + 1}").create()
        up = Uplink(iface, f"{prefix24}.{host_octet}", peer, f"{prefix24}.{peer_octet}")
        self.uplinks[iface] = up
        _ip("link", "add", iface, "netns", self.host.name, "type", "veth", "peer", "name",
            up.peer_iface, "netns", peer.name)
        _ip("-n", self.host.name, "addr", "add", f"{up.host_ip}/24", "dev", iface)
        _ip("-n", peer.name, "addr", "add", f"{up.peer_ip}/24", "dev", up.peer_iface)
        for extra in peer_ip_extra:
            _ip("-n", peer.name, "addr", "add", f"{extra}/24", "dev", up.peer_iface)
        _ip("-n", self.host.name, "link", "set", iface, "up")
        _ip("-n", peer.name, "link", "set", up.peer_iface, "up")
        return up

    def delete(self) -> None:
        for up in self.uplinks.values():
            up.peer.delete()
        self.host.delete()

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.delete()




_BIND_IN_NETNS = """
import socket, sys
channel = socket.socket(fileno=int(sys.argv[1]))
made = []
for spec in sys.argv[2:]:
    ip, port = spec.rsplit(":", 1)
    made.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    made[-1].bind((ip, int(port)))
socket.send_fds(channel, [b"ok"], [s.fileno() for s in made])
"""


def udp_sockets_in(netns: str, *binds: tuple[str, int]) -> list[socket.socket]:
    """UDP sockets bound inside a network namespace, for this process to use: a helper bound
    them in there and passed them over a unix socket (a socket keeps its namespace)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", _BIND_IN_NETNS, str(theirs.fileno()),
                        *(f"{ip}:{port}" for ip, port in binds)],
                       pass_fds=(theirs.fileno(),), check=True, timeout=10)
        _msg, fds, _flags, _addr = socket.recv_fds(ours, 16, len(binds))
    return [socket.socket(fileno=fd) for fd in fds]
