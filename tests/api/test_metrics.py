"""/metrics output: parsed back with prometheus_client's own parser; the default registry stays clean."""
from __future__ import annotations

import asyncio

import prometheus_client
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from trunkproxy.api.app import create_api_app

from .conftest import ENDPOINTS

STATS = {"iflo": ["core:rcv_requests_invite = 7", "core:rcv_requests_register = 40", "core:rcv_replies_2xx = 30",
                  "sl:403_replies = 2", "sl:5xx_replies = 1", "tmx:UAS_transactions = 47",
                  "core:fwd_requests = 3", "tmx:rpl_relayed = 50", "core:bad_msg_hdr = 4",
                  "tmx:active_transactions = 2", "dialog:active_dialogs = 1",
                  "script:tp_refused_destinations = 5"],
         "ifens5": None}


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(family, **labels) -> float:
    matches = [s.value for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (family.name, labels, family.samples)
    return matches[0]


async def _scrape(monitor, stats_provider) -> tuple[int, str, str]:
    async with TestClient(TestServer(create_api_app(monitor, lambda: ENDPOINTS, stats_provider,
                                                    stats_timeout=0.2))) as client:
        resp = await client.get("/metrics")
        return resp.status, resp.headers["Content-Type"], await resp.text()


async def test_metrics_families_and_values(monitor):
    async def stats():
        return STATS

    status, content_type, text = await _scrape(monitor, stats)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    fam = _families(text)
    regs = fam["trunkproxy_registrations"]
    assert _value(regs, endpoint="iflo", state="registered") == 1
    assert _value(regs, endpoint="iflo", state="challenged") == 1
    assert _value(regs, endpoint="ifens5", state="failed") == 1
    assert _value(regs, endpoint="ifens5", state="expired") == 0
    assert len(regs.samples) == 2 * 6  # every state of every endpoint, zeros included
    assert _value(fam["trunkproxy_registration_state"], flow="udp:127.0.0.1:5062", endpoint="iflo",
                  state="registered") == 1
    assert _value(fam["trunkproxy_registration_expiry_seconds"], endpoint="iflo", flow="udp:127.0.0.1:5062") == 600
    assert _value(fam["trunkproxy_registration_consecutive_failures"], endpoint="ifens5") == 1
    sip = fam["trunkproxy_sip_requests"]
    assert sip.type == "counter" and _value(sip, endpoint="iflo", method="INVITE") == 7
    assert _value(fam["trunkproxy_sip_replies"], endpoint="iflo", **{"class": "2xx", "source": "received"}) == 30
    assert _value(fam["trunkproxy_sip_replies"], endpoint="iflo", **{"class": "4xx", "source": "local"}) == 2
    assert _value(fam["trunkproxy_sip_relayed"], endpoint="iflo", kind="request") == 50
    assert _value(fam["trunkproxy_sip_relayed"], endpoint="iflo", kind="reply") == 50
    assert _value(fam["trunkproxy_sip_rejected"], endpoint="iflo") == 3
    assert _value(fam["trunkproxy_sip_dropped_malformed"], endpoint="iflo") == 4
    assert _value(fam["trunkproxy_destinations_refused"], endpoint="iflo") == 5
    assert _value(fam["trunkproxy_active_transactions"], endpoint="iflo") == 2
    assert _value(fam["trunkproxy_active_dialogs"], endpoint="iflo") == 1
    assert _value(fam["trunkproxy_kamailio_stats_up"], endpoint="iflo") == 1
    assert _value(fam["trunkproxy_kamailio_stats_up"], endpoint="ifens5") == 0
    assert _value(fam["trunkproxy_kamailio_restarts"], endpoint="ifens5") == 3
    assert _value(fam["trunkproxy_kamailio_up"], endpoint="ifens5") == 0
    assert _value(fam["trunkproxy_kamailio_up"], endpoint="iflo") == 1
    assert "trunkproxy_registration_events" in fam
    # Our metrics never land in the process-wide default registry.
    assert prometheus_client.REGISTRY.get_sample_value("trunkproxy_registrations", {"endpoint": "iflo",
                                                                                    "state": "registered"}) is None


async def test_metrics_without_kamailio_statistics(monitor):
    async def broken():
        raise ConnectionRefusedError("no kamailio")

    async def slow():
        await asyncio.sleep(5)
        return STATS

    for provider in (broken, slow, None):
        status, _, text = await _scrape(monitor, provider)
        fam = _families(text)
        assert status == 200
        assert _value(fam["trunkproxy_registrations"], endpoint="iflo", state="registered") == 1
        assert all(s.value == 0 for s in fam["trunkproxy_kamailio_stats_up"].samples)
        assert fam["trunkproxy_sip_requests"].samples == []


async def test_metrics_move_with_registration_state(monitor):
    from trunkproxy.registrations.events import RegisterReply

    from .conftest import NOW, TELEKOM_B

    _, _, before = await _scrape(monitor, None)
    monitor.handle_event(RegisterReply(TELEKOM_B, NOW, "b", 2, 200, "OK", 300))
    _, _, after = await _scrape(monitor, None)
    assert _value(_families(before)["trunkproxy_registrations"], endpoint="iflo", state="registered") == 1
    assert _value(_families(after)["trunkproxy_registrations"], endpoint="iflo", state="registered") == 2
