"""The HTTP API through aiohttp's test server: JSON bodies, filters, JSON errors."""
from __future__ import annotations

import asyncio

import httpx
import pytest
from aiohttp.test_utils import TestClient, TestServer

from trunkproxy.api.app import create_api_app
from trunkproxy.api.server import ApiServer

from .conftest import ENDPOINTS, NOW


@pytest.fixture
async def client(monitor):
    async with TestClient(TestServer(create_api_app(monitor, lambda: ENDPOINTS))) as c:
        yield c


async def test_registrations_all(client):
    resp = await client.get("/api/registrations")
    assert resp.status == 200 and resp.content_type == "application/json"
    body = await resp.json()
    assert body["now"] == NOW
    states = {(r["endpoint"], r["flow"]): (r["trunk"], r["state"]) for r in body["registrations"]}
    assert states == {
        ("iflo", "udp:127.0.0.1:5062"): ("telekom", "registered"),
        ("iflo", "udp:127.0.0.1:5064"): ("telekom", "challenged"),
        ("ifens5", "udp:127.0.0.1:5062"): ("other", "failed"),
    }
    failed = next(r for r in body["registrations"] if r["state"] == "failed")
    assert (failed["last_code"], failed["min_expires"]) == (423, 600)
    assert failed["last_reason"] == "Interval Too Brief (Min-Expires 600)"


@pytest.mark.parametrize("query, count", [
    ("endpoint=iflo", 2), ("trunk=telekom", 2), ("state=failed", 1), ("endpoint=iflo&state=registered", 1),
    ("trunk=nobody", 0), ("endpoint=ifens5&trunk=telekom", 0),
])
async def test_registration_filters(client, query, count):
    resp = await client.get(f"/api/registrations?{query}")
    assert resp.status == 200
    assert len((await resp.json())["registrations"]) == count


@pytest.mark.parametrize("query, fragment", [("state=bogus", "unknown state 'bogus'"),
                                             ("trunks=telekom", "unknown filter 'trunks'")])
async def test_bad_filters_are_400_json(client, query, fragment):
    resp = await client.get(f"/api/registrations?{query}")
    assert resp.status == 400
    body = await resp.json()
    assert body["status"] == 400 and fragment in body["error"]


async def test_endpoints(client):
    resp = await client.get("/api/endpoints")
    assert resp.status == 200
    endpoints = (await resp.json())["endpoints"]
    assert [e["name"] for e in endpoints] == ["iflo", "ifens5"]
    assert endpoints[0]["pid"] == 4242 and endpoints[0]["uptime_s"] == 12.5 and endpoints[1]["state"] == "restarting"
    assert endpoints[0]["registrations"]["registered"] == 1 and endpoints[0]["registrations"]["challenged"] == 1
    assert endpoints[1]["registrations"]["failed"] == 1


async def test_async_endpoints_provider(monitor):
    async def provider():
        await asyncio.sleep(0)
        return ENDPOINTS[:1]

    async with TestClient(TestServer(create_api_app(monitor, provider))) as c:
        assert [e["name"] for e in (await (await c.get("/api/endpoints")).json())["endpoints"]] == ["iflo"]


async def test_not_found_and_method_not_allowed_are_json(client):
    resp = await client.get("/nope")
    assert resp.status == 404 and (await resp.json())["status"] == 404
    resp = await client.post("/api/registrations")
    assert resp.status == 405 and (await resp.json())["status"] == 405
    assert "GET" in resp.headers["Allow"]


async def test_a_crashing_provider_is_500_json_without_a_traceback(monitor, caplog):
    def broken():
        raise RuntimeError("secret internals")

    async with TestClient(TestServer(create_api_app(monitor, broken))) as c:
        resp = await c.get("/api/endpoints")
        text = await resp.text()
    assert resp.status == 500 and resp.content_type == "application/json"
    assert "secret" not in text and "Traceback" not in text
    assert "secret internals" in caplog.text  # but the log has it


async def test_served_on_loopback_with_an_ephemeral_port(monitor):
    server = ApiServer(create_api_app(monitor, lambda: ENDPOINTS), "127.0.0.1", 0)
    await server.start()
    try:
        assert server.port != 0
        async with httpx.AsyncClient(base_url=server.url) as http:
            resp = await http.get("/api/registrations", params={"state": "registered"})
            assert resp.status_code == 200 and len(resp.json()["registrations"]) == 1
            metrics = await http.get("/metrics")
            assert metrics.headers["content-type"].startswith("text/plain")
    finally:
        await server.stop()
