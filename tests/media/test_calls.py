import pytest

from trunkproxy.media.calls import CallMedia, Direction, read_call, stopped_direction
from trunkproxy.media.monitor import MediaMonitor


def _stream(packets, last, kind="RTP"):
    return {"flags": [kind], "last packet": last, "stats": {"packets": packets, "bytes": packets * 172, "errors": 0}}


def _query(pbx_packets=30, provider_packets=10, pbx_last=100, provider_last=100, labels=("ifa-int", "ifa-ext")):
    return {"created": 90, "tags": {
        "pbx1": {"label": labels[0], "medias": [{"streams": [_stream(pbx_packets, pbx_last), _stream(1, 0, "RTCP")]}]},
        "prov2": {"label": labels[1], "medias": [{"streams": [_stream(provider_packets, provider_last)]}]},
    }}


def test_a_call_is_attributed_to_its_endpoint_and_sides_by_the_offerers_label():
    call = read_call("c1", _query(), ["ifb", "ifa"])
    assert call.endpoint == "ifa"
    assert call.from_pbx == Direction(31, 31 * 172, 0, 100)
    assert call.from_provider.packets == 10


def test_the_unlabelled_party_is_the_other_side():
    call = read_call("c1", _query(labels=("", "ifa-ext")), ["ifa"])
    assert call.from_pbx.packets == 31 and call.from_provider.packets == 10


@pytest.mark.parametrize("pbx_last, provider_last, now, expected", [
    (100, 100, 105, None),                 # both flow
    (90, 100, 101, "pbx_to_provider"),     # the PBX went quiet 11 s ago
    (100, 90, 101, "provider_to_pbx"),
    (80, 80, 120, None),                   # both quiet: hold, or a call about to time out
    (0, 100, 101, "pbx_to_provider"),      # the PBX never sent, 11 s into the call
    (0, 95, 99, None),                     # ... only 9 s into the call
    (0, 0, 200, None),                     # no media yet at all
])
def test_media_stopped_one_way_is_told_only_while_the_other_way_flows(pbx_last, provider_last, now, expected):
    call = CallMedia("c", "ifa", Direction(1, 1, 0, pbx_last), Direction(1, 1, 0, provider_last), created=90)
    assert stopped_direction(call, now, 10) == expected


def test_the_monitor_counts_deltas_and_alarms_once_per_call_and_direction(caplog):
    clock = [101.0]
    monitor = MediaMonitor(client=None, endpoints=["ifa"], poll_interval_s=5, one_way_after_s=10,
                           clock=lambda: clock[0])
    stats = {"currentstatistics": {"sessionsown": 1}, "totalstatistics": {"relayedpackets": 41}}
    monitor._account({"c1": read_call("c1", _query(pbx_last=90), ["ifa"])}, stats)
    monitor._account({"c1": read_call("c1", _query(pbx_packets=50, pbx_last=90), ["ifa"])}, stats)
    snap = monitor.snapshot.as_dict()
    assert snap["sessions"] == {"ifa": 1}
    assert snap["packets"]["ifa"] == {"pbx_to_provider": 51, "provider_to_pbx": 10}
    assert snap["one_way_calls"] == {"ifa": 1}
    assert caplog.text.count("media stopped pbx to provider") == 1 and "Call-ID c1" in caplog.text
    # the call ended: no session, the counters stay
    monitor._account({}, stats)
    snap = monitor.snapshot.as_dict()
    assert snap["sessions"] == {"ifa": 0} and snap["packets"]["ifa"]["pbx_to_provider"] == 51


async def test_a_reply_of_an_unknown_shape_does_not_stop_the_monitor(caplog):
    import asyncio

    class OddRtpengine:
        calls = 0

        async def command(self, name, **params):
            self.calls += 1
            if name == "statistics":
                return {"statistics": {"currentstatistics": {"sessionsown": "many"}}}
            return {"calls": []}

    engine = OddRtpengine()
    monitor = MediaMonitor(client=engine, endpoints=["ifa"], poll_interval_s=0.01, one_way_after_s=10)
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.1)
    task.cancel()
    assert engine.calls > 4  # still polling after the first odd reply
    assert "media statistics not understood" in caplog.text and monitor.snapshot.available is False
