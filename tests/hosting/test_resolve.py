"""Precedence: sipproxy.json > Consul KV > the trunk's interface > direct."""
from __future__ import annotations

import pytest

from trunkproxy.hosting.resolve import EndpointMap, RouteSource, default_kv_key, resolve_routes
from trunkproxy.hosting.sipproxy_json import parse_sipproxy_json
from trunkproxy.hosting.trunks import Trunk

from .conftest import PROXY_NAME, TELEKOM_JSON, host_config

KV_JSON = '{"tel.t-online.de": {"proxy": "csphost01-ifens6.cs-proxy.service.pascom", "options": "transport=udp"}}'


@pytest.fixture
def endpoints(tmp_path):
    return EndpointMap.from_config(host_config(tmp_path))


def test_endpoint_names_follow_consul_dns_form(endpoints, tmp_path):
    assert endpoints.proxy_for("ens5") == PROXY_NAME
    assert endpoints.proxy_for("ifens5") == PROXY_NAME
    assert endpoints.proxy_for("ens7") is None
    assert default_kv_key(host_config(tmp_path)) == "config/csphost01/system/outboundproxy"


@pytest.mark.parametrize("file_json,kv_json,interface,source,proxy,transport", [
    (TELEKOM_JSON, KV_JSON, "ens6", RouteSource.FILE, PROXY_NAME, "tcp"),
    (None, KV_JSON, "ens5", RouteSource.CONSUL, "csphost01-ifens6.cs-proxy.service.pascom", "udp"),
    ('{"other.example": {"proxy": "x.example"}}', KV_JSON, "default", RouteSource.CONSUL,
     "csphost01-ifens6.cs-proxy.service.pascom", "udp"),
    (None, None, "ens5", RouteSource.INTERFACE, PROXY_NAME, "udp"),
    (None, '{}', "default", RouteSource.DIRECT, None, "udp"),
])
def test_precedence(endpoints, file_json, kv_json, interface, source, proxy, transport):
    trunk = Trunk(name="telekom", registrar="tel.t-online.de", interface=interface)
    file_rules = parse_sipproxy_json(file_json, "file") if file_json else None
    kv_rules = parse_sipproxy_json(kv_json, "consul:key") if kv_json else None
    routes, errors = resolve_routes([trunk], file_rules, kv_rules, endpoints)
    assert errors == []
    assert (routes[0].source, routes[0].proxy, routes[0].transport) == (source, proxy, transport)


def test_log_lines(endpoints):
    routes, _ = resolve_routes([Trunk(name="telekom", registrar="tel.t-online.de"),
                                Trunk(name="direct", registrar="sipgate.de")],
                               parse_sipproxy_json(TELEKOM_JSON, "f"), None, endpoints)
    assert routes[0].log_line() == f"Will route trunk [telekom] via proxy [{PROXY_NAME}]"
    assert routes[1].log_line() == "Will route trunk [direct] directly to registrar [sipgate.de] (no proxy)"


def test_unknown_interface_is_an_error_naming_trunk_and_fix(endpoints):
    routes, errors = resolve_routes([Trunk(name="t", registrar="r.example", interface="ens9")], None, None, endpoints)
    assert routes == []
    assert "trunk t: interface 'ens9'" in errors[0] and "ifens5, ifens6" in errors[0] and "trunk edit t" in errors[0]
