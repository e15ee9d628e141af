"""/metrics over a real Kamailio: its `stats.get_statistics all` parses, and a call moves the counters."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from trunkproxy.api.app import create_api_app
from trunkproxy.api.kamailio_stats import parse_statistics

from .rpc_client import rpc

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (shutil.which("kamailio") and shutil.which("sipp")), reason="needs kamailio and sipp"),
]

PROXY, UAS, UAC = 5160, 5161, 5162
CFG = Path(__file__).parent / "kamailio" / "stats_proxy.cfg"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def kamailio():
    """A stateful Kamailio proxy on 127.0.0.1:5160 relaying to a SIPp UAS on :5161; yields its RPC socket."""
    work = Path(tempfile.mkdtemp(prefix="tpkam", dir="/tmp"))
    rpc_socket = work / "rpc.sock"
    cfg = work / "kamailio.cfg"
    cfg.write_text(CFG.read_text().replace("RPC_SOCKET", str(rpc_socket))
                   .replace("LISTEN", f"127.0.0.1:{PROXY}").replace("NEXT_HOP", f"127.0.0.1:{UAS}"))
    log = (work / "kamailio.log").open("w")
    kam = subprocess.Popen(["kamailio", "-f", str(cfg), "-DD", "-E", "-n", "1", "-Y", str(work)],
                           stdout=log, stderr=subprocess.STDOUT)
    uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(UAS), "-nostdin"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    try:
        deadline = time.monotonic() + 10
        while not rpc_socket.exists():
            assert kam.poll() is None, (work / "kamailio.log").read_text()
            assert time.monotonic() < deadline, "kamailio did not open its RPC socket"
            time.sleep(0.05)
        yield rpc_socket
    finally:
        _stop(uas)
        _stop(kam)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def _call(dialed: str, port: int) -> int:
    return subprocess.run(
        ["sipp", "-sn", "uac", "-i", "127.0.0.1", "-p", str(port), f"127.0.0.1:{PROXY}", "-s", dialed,
         "-m", "1", "-nostdin", "-timeout", "10", "-timeout_error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20, cwd=tempfile.gettempdir()).returncode


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_real_statistics_parse(kamailio):
    result = await rpc(kamailio, "stats.get_statistics", "all")
    stats = parse_statistics(result)
    assert len(stats) > 100 and len(stats) == len(result)  # every line of the real output parses
    for name in ("core:rcv_requests_invite", "core:rcv_replies_2xx", "core:bad_msg_hdr", "core:fwd_requests",
                 "sl:403_replies", "tmx:UAS_transactions", "tmx:active_transactions", "tmx:rpl_relayed",
                 "dialog:active_dialogs"):
        assert name in stats, name
    fetched = parse_statistics(await rpc(kamailio, "stats.fetch", "all"))
    assert fetched["core:rcv_requests"] == stats["core:rcv_requests"]


async def test_metrics_change_when_a_call_goes_through(kamailio, monitor):
    async def stats_provider():
        return {"iflo": await rpc(kamailio, "stats.get_statistics", "all")}

    app = create_api_app(monitor, lambda: [{"name": "iflo", "state": "running", "restarts": 0, "uptime_s": 1.0}],
                         stats_provider)
    async with TestClient(TestServer(app)) as client:
        before = _samples(await (await client.get("/metrics")).text())
        assert await asyncio.to_thread(_call, "4930555", UAC) == 0
        assert await asyncio.to_thread(_call, "reject", UAC + 1) != 0  # answered 403 by the proxy itself
        # A malformed message: Via without a transport.
        await asyncio.to_thread(_send_udp, b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: broken\r\n\r\n")
        # tmx: counters move only when tm frees the transaction (after wt_timer, 200 ms here): poll.
        deadline = time.monotonic() + 5
        while True:
            after = _samples(await (await client.get("/metrics")).text())
            if _delta(before, after, "trunkproxy_sip_relayed_total", kind="reply") >= 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)

    ep = (("endpoint", "iflo"),)

    def delta(name: str, **labels: str) -> float:
        return _delta(before, after, name, **labels)

    assert after[("trunkproxy_kamailio_stats_up", ep)] == 1
    assert delta("trunkproxy_sip_requests_total", method="INVITE") == 2
    assert delta("trunkproxy_sip_requests_total", method="BYE") == 1
    assert delta("trunkproxy_sip_replies_total", **{"class": "2xx", "source": "received"}) == 2  # INVITE + BYE
    assert delta("trunkproxy_sip_relayed_total", kind="request") == 3  # INVITE, BYE (tm) + ACK (stateless)
    assert delta("trunkproxy_sip_relayed_total", kind="reply") == 3  # 180, 200, 200
    assert delta("trunkproxy_sip_rejected_total") == 1
    assert delta("trunkproxy_sip_replies_total", **{"class": "4xx", "source": "local"}) == 1
    assert delta("trunkproxy_sip_dropped_malformed_total") == 1
    assert ("trunkproxy_active_transactions", ep) in after and ("trunkproxy_active_dialogs", ep) in after
    # Registration gauges are there too, from the monitor's state.
    assert after[("trunkproxy_registrations", (("endpoint", "iflo"), ("state", "registered")))] == 1


def _delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted({"endpoint": "iflo", **labels}.items())))
    return after.get(key, 0) - before.get(key, 0)


def _send_udp(data: bytes) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, ("127.0.0.1", PROXY))
