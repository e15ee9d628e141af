"""Against a real Consul agent (consul agent -dev on free loopback ports, see conftest.consul_agent)."""
from __future__ import annotations

import asyncio
import json
import logging
import time

import dns.resolver
import pytest

from trunkproxy.cli import main
from trunkproxy.hosting.apply import run_apply
from trunkproxy.hosting.consul import Backoff
from trunkproxy.hosting.dnscheck import make_resolver
from trunkproxy.hosting.live import HostingLive
from trunkproxy.hosting.pjsip import OUTPUT_NAME
from trunkproxy.hosting.resolve import RouteSource

from .conftest import KV_KEY, PROXY_NAME, TELEKOM_JSON, host_config

pytestmark = pytest.mark.consul
IFENS6 = "csphost01-ifens6.cs-proxy.service.pascom"
LINE = f"Will route trunk [telekom] via proxy [{PROXY_NAME}]"


async def until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def sip_listener():
    """Stands in for a running endpoint's SIP TCP port (the target of the TCP health check)."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def consul_records(caplog, level=logging.WARNING):
    return [r for r in caplog.records if r.name == "trunkproxy.hosting.consul" and r.levelno == level]


async def test_endpoints_register_as_cs_proxy_and_resolve_through_consul_dns(tmp_path, consul_agent):
    server, port = await sip_listener()
    live = HostingLive(host_config(tmp_path, consul_agent), [("ifens5", "127.0.0.1", port)], wait=2,
                       check_interval=1)
    await live.start()
    try:
        await until(lambda: "cs-proxy-csphost01-ifens5" in consul_agent.services(), what="registration")
        service = consul_agent.services()["cs-proxy-csphost01-ifens5"]
        assert (service["Service"], service["Tags"], service["Address"], service["Port"]) == \
            ("cs-proxy", ["csphost01-ifens5"], "127.0.0.1", port)
        resolver = make_resolver(consul_agent.dns)
        a = await resolver.resolve(PROXY_NAME, "A")
        assert [r.address for r in a] == ["127.0.0.1"]
        srv = await resolver.resolve(PROXY_NAME, "SRV")
        assert [r.port for r in srv] == [port]
        await asyncio.sleep(1.5)  # the TCP check has run against the listener by now
        checks = json.loads(consul_agent.http("GET", "/v1/agent/checks")[1])
        assert checks["cs-proxy-csphost01-ifens5-sip"]["Status"] == "passing"
    finally:
        await live.stop()
        server.close()
    assert "cs-proxy-csphost01-ifens5" not in consul_agent.services()
    with pytest.raises(dns.resolver.NXDOMAIN):
        await make_resolver(consul_agent.dns).resolve(PROXY_NAME, "A")


async def test_seed_json_in_consul_kv_is_used_by_apply(tmp_path, consul_agent, store, caplog):
    consul_agent.kv_put(KV_KEY, TELEKOM_JSON)
    server, port = await sip_listener()
    config = host_config(tmp_path, consul_agent)
    live = HostingLive(config, [("ifens5", "127.0.0.1", port)], wait=2)
    await live.start()
    caplog.set_level(logging.INFO, logger="trunkproxy.apply")
    try:
        await until(lambda: "cs-proxy-csphost01-ifens5" in consul_agent.services(), what="registration")
        result = await run_apply(config, store=store, output_dir=tmp_path / "out",
                                 sipproxy_json=tmp_path / "absent.json", dns_server=consul_agent.dns)
    finally:
        await live.stop()
        server.close()
    assert result.ok, result.errors
    assert LINE in [r.getMessage() for r in caplog.records]
    assert result.routes[1].source is RouteSource.CONSUL and result.routes[1].rule.source == f"consul:{KV_KEY}"
    assert f"outbound_proxy=sip:{PROXY_NAME}\\;lr\\;transport=tcp" in (tmp_path / "out" / OUTPUT_NAME).read_text()


async def test_file_wins_over_kv(tmp_path, consul_agent, store):
    consul_agent.kv_put(KV_KEY, TELEKOM_JSON.replace("ifens5", "ifens6"))
    (tmp_path / "sipproxy.json").write_text(TELEKOM_JSON)
    result = await run_apply(host_config(tmp_path, consul_agent), store=store, output_dir=tmp_path / "out",
                             sipproxy_json=tmp_path / "sipproxy.json", check_dns=False)
    assert result.ok
    assert result.lines[1] == LINE and result.routes[1].source is RouteSource.FILE
    (tmp_path / "sipproxy.json").unlink()
    result = await run_apply(host_config(tmp_path, consul_agent), store=store, output_dir=tmp_path / "out",
                             sipproxy_json=tmp_path / "sipproxy.json", check_dns=False)
    assert result.lines[1] == f"Will route trunk [telekom] via proxy [{IFENS6}]"


async def test_kv_change_reaches_the_running_endpoint_and_the_next_apply(tmp_path, consul_agent, store, caplog):
    server, port = await sip_listener()
    config = host_config(tmp_path, consul_agent)
    received: list[tuple[float, dict]] = []
    live = HostingLive(config, [("ifens5", "127.0.0.1", port), ("ifens6", "127.0.0.1", port)],
                       on_rules=lambda rules: received.append((time.monotonic(), rules)), wait=30)
    await live.start()
    try:
        assert await live.wait_ready(10)
        assert received == [(received[0][0], {})]  # key absent: no host-wide rules

        consul_agent.kv_put(KV_KEY, TELEKOM_JSON)
        # within 5 s: the blocking query returns on the change, not at the end of its 30 s wait
        await until(lambda: len(received) == 2, timeout=5, what="new rules from a blocking query")
        assert received[1][1]["tel.t-online.de"].proxy == PROXY_NAME
        assert received[1][1]["tel.t-online.de"].options == (("transport", "tcp"),)

        caplog.set_level(logging.INFO, logger="trunkproxy.hosting.consul")
        consul_agent.kv_put(KV_KEY, '{\n "tel.t-online.de": {\n  "proxy": "x.example",\n  "options": 5\n }\n}')
        await until(lambda: consul_records(caplog, logging.ERROR), timeout=5, what="error about the bad value")
        [error] = consul_records(caplog, logging.ERROR)
        assert f"consul:{KV_KEY}:4:" in error.getMessage() and "previous good configuration stays" in error.getMessage()
        assert len(received) == 2 and live.rules["tel.t-online.de"].proxy == PROXY_NAME  # previous stays

        consul_agent.kv_put(KV_KEY, TELEKOM_JSON.replace("ifens5", "ifens6"))
        await until(lambda: len(received) == 3, timeout=5, what="the corrected rules")
        assert received[2][1]["tel.t-online.de"].proxy == IFENS6
        result = await run_apply(config, store=store, output_dir=tmp_path / "out", sipproxy_json=None,
                                 dns_server=consul_agent.dns)
        assert result.ok, result.errors
        assert result.lines[1] == f"Will route trunk [telekom] via proxy [{IFENS6}]"
    finally:
        await live.stop()
        server.close()


async def test_consul_stopped_mid_run_keeps_last_good_and_recovers(tmp_path, consul_agent, store, caplog):
    server, port = await sip_listener()
    config = host_config(tmp_path, consul_agent)
    consul_agent.kv_put(KV_KEY, TELEKOM_JSON)
    received: list[dict] = []
    live = HostingLive(config, [("ifens5", "127.0.0.1", port)], on_rules=received.append, wait=30,
                       resync_interval=0.5, backoff=Backoff(initial=0.1, maximum=0.5))
    caplog.set_level(logging.INFO, logger="trunkproxy.hosting.consul")
    await live.start()
    try:
        await until(lambda: received and "cs-proxy-csphost01-ifens5" in consul_agent.services(), what="start")
        good = live.rules
        assert (await run_apply(config, store=store, output_dir=tmp_path / "out", sipproxy_json=None,
                                check_dns=False)).ok  # also caches the KV value for the outage

        consul_agent.stop()
        await until(lambda: live.consul_reachable is False, timeout=5, what="outage noticed")
        await asyncio.sleep(2)  # several retries with backoff
        warnings = consul_records(caplog, logging.WARNING)
        assert len(warnings) == 1, [w.getMessage() for w in warnings]
        assert "unreachable" in warnings[0].getMessage() and "last good outbound proxy configuration stays" in warnings[0].getMessage()
        assert live.rules == good and len(received) == 1

        result = await run_apply(config, store=store, output_dir=tmp_path / "out2", sipproxy_json=None,
                                 check_dns=False)
        assert result.ok and result.lines[1] == LINE  # from the last good copy

        consul_agent.start()  # same ports, empty dev agent: KV and services are gone
        await until(lambda: "cs-proxy-csphost01-ifens5" in consul_agent.services(), timeout=10,
                    what="re-registration after the agent came back")
        assert any("reachable again" in r.getMessage() for r in consul_records(caplog, logging.INFO))
        consul_agent.kv_put(KV_KEY, TELEKOM_JSON.replace("ifens5", "ifens6"))
        await until(lambda: live.rules.get("tel.t-online.de") and live.rules["tel.t-online.de"].proxy == IFENS6,
                    timeout=10, what="rules after recovery")
    finally:
        await live.stop()
        server.close()


async def test_consul_down_and_no_cache_fails_apply(tmp_path, consul_agent, store):
    config = host_config(tmp_path, consul_agent)
    consul_agent.stop()
    result = await run_apply(config, store=store, output_dir=tmp_path / "out", sipproxy_json=None, check_dns=False)
    assert not result.ok and "unreachable" in result.errors[0] and "--no-consul" in result.errors[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value,fragment", [
    ('{\n  "tel.t-online.de": {"proxy": "p.example"\n', ":3: not valid JSON"),
    ('"tel.t-online.de"', ":1: top level is a string"),
    ('{"tel.t-online.de": {"proxy": "p.example", "opts": "x"}}', ":1: key 'opts'"),
    ('{"tel.t-online.de": {"proxy": "p.example", "options": "transport"}}', "is not key=value"),
])
async def test_bad_kv_value_fails_apply_naming_the_key(tmp_path, consul_agent, store, value, fragment):
    consul_agent.kv_put(KV_KEY, value)
    result = await run_apply(host_config(tmp_path, consul_agent), store=store, output_dir=tmp_path / "out",
                             sipproxy_json=None, check_dns=False)
    assert not result.ok
    assert result.errors[0].startswith(f"consul:{KV_KEY}:") and fragment in result.errors[0], result.errors
    assert not (tmp_path / "out").exists()


async def test_proxy_name_not_registered_in_consul_does_not_resolve(tmp_path, consul_agent, store):
    (tmp_path / "sipproxy.json").write_text(TELEKOM_JSON.replace("ifens5", "ifens7"))
    result = await run_apply(host_config(tmp_path, consul_agent), store=store, output_dir=tmp_path / "out",
                             sipproxy_json=tmp_path / "sipproxy.json", dns_server=consul_agent.dns)
    assert not result.ok
    assert f"{tmp_path / 'sipproxy.json'}:2: proxy 'csphost01-ifens7.cs-proxy.service.pascom'" in result.errors[0]
    assert "NXDOMAIN" in result.errors[0]
    assert not (tmp_path / "out").exists()


def test_cli_apply_with_consul(tmp_path, consul_agent, caplog):
    config = tmp_path / "trunkproxy.toml"
    config.write_text(f'[proxy]\nhostname = "csphost01"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'[consul]\nenabled = true\naddress = "{consul_agent.address}"\n'
                      '[[endpoints]]\ninterface = "ens5"\nexternal_address = "198.51.100.1"\n')
    consul_agent.kv_put(KV_KEY, TELEKOM_JSON)
    consul_agent.http("PUT", "/v1/agent/service/register", json.dumps(
        {"ID": "x", "Name": "cs-proxy", "Tags": ["csphost01-ifens5"], "Address": "127.0.0.1", "Port": 5060}).encode())
    c = str(config)
    assert main(["-c", c, "trunk", "add", "telekom", "--registrar", "tel.t-online.de", "--username", "u",
                 "--secret", "pw"]) == 0
    caplog.set_level(logging.INFO, logger="trunkproxy.apply")
    args = ["-c", c, "apply", "--output", str(tmp_path / "out"), "--sipproxy-json", str(tmp_path / "none.json"),
            "--dns-server", consul_agent.dns]
    assert main(args) == 0
    assert LINE in [r.getMessage() for r in caplog.records]
    assert main(args + ["--no-consul"]) == 0  # host-wide rules ignored: direct
    assert "Will route trunk [telekom] directly to registrar [tel.t-online.de] (no proxy)" in \
        [r.getMessage() for r in caplog.records]
