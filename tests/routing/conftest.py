import ipaddress

import pytest

from trunkproxy.routing.settings import EndpointSettings, ProviderRoute, Socket

SECRET = b"k" * 32


def _sockets(host: str, port: int, adv: str | None = None) -> dict[str, Socket]:
    return {t: Socket(t, host, port, adv or host, port) for t in ("udp", "tcp")}


@pytest.fixture
def settings() -> EndpointSettings:
    return EndpointSettings(
        name="ifens5",
        secret=SECRET,
        internal=_sockets("10.0.3.1", 5060),
        external=_sockets("198.51.100.1", 5060),
        instance_networks=(ipaddress.ip_network("10.0.3.0/24"),),
        providers={
            "tel.example.test": ProviderRoute((("192.0.2.10", 5060), ("192.0.2.11", 5080)), "tcp"),
            "sip.other.test": ProviderRoute((), None),
        },
        pinned_ips=frozenset({"192.0.2.10", "192.0.2.11"}),
    )
