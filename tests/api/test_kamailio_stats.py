"""Kamailio statistics -> SIP counters, on output recorded from Kamailio 5.6.3 after one call,
one request refused with 403 and one malformed INVITE (see test_metrics_kamailio.py)."""
from __future__ import annotations

import json
from pathlib import Path

from trunkproxy.api.kamailio_stats import parse_statistics, sip_counters

VECTORS = Path(__file__).parent / "vectors"
LISTED = json.loads((VECTORS / "kamailio-5.6.3_get_statistics_after_call.json").read_text())
FETCHED = json.loads((VECTORS / "kamailio-5.6.3_fetch_after_call.json").read_text())


def test_both_rpc_shapes_parse_to_the_same_numbers():
    listed, fetched = parse_statistics(LISTED), parse_statistics(FETCHED)
    assert len(listed) == len(LISTED) == 147
    assert listed == fetched


def test_counters_after_one_call_one_reject_one_malformed():
    c = sip_counters(parse_statistics(LISTED))
    assert c.requests_by_method["INVITE"] == 2 and c.requests_by_method["BYE"] == 1
    assert c.requests_by_method["ACK"] == 2 and c.requests_by_method["REGISTER"] == 0
    assert c.replies_received_by_class == {"1xx": 1, "2xx": 2, "3xx": 0, "4xx": 0, "5xx": 0, "6xx": 0}
    assert c.replies_local_by_class["4xx"] == 1 and c.rejected == 1
    assert (c.relayed_requests, c.relayed_replies) == (3, 3)
    assert c.dropped_malformed == 1 and c.dropped_by_script == 1
    assert c.active_transactions == 0 and c.active_dialogs == 1


def test_missing_groups_and_junk_lines():
    stats = parse_statistics(["core:rcv_requests_invite = 5", "garbage", "x = y", "sl:200_replies = 2",
                              "core:bad_msg_hdr = 3"])
    assert stats == {"core:rcv_requests_invite": 5, "sl:200_replies": 2, "core:bad_msg_hdr": 3}
    c = sip_counters(stats)
    assert c.active_dialogs is None and c.active_transactions is None  # no dialog/tmx module loaded
    assert c.rejected == 0 and c.replies_local_by_class == {"2xx": 2}
    assert parse_statistics(None) == {} and parse_statistics({"core.x": "n/a"}) == {}


def test_active_dialogs_come_from_the_endpoints_dialog_table():
    from trunkproxy.supervisor import dialog_statistics

    tables = [{"name": "tp_known", "slots": 256, "all": 4, "min": 0, "max": 1},
              {"name": "tp_dlg", "slots": 16384, "all": 7, "min": 0, "max": 1}]
    lines = dialog_statistics(tables)
    assert lines == ["trunkproxy:active_dialogs = 7"]
    c = sip_counters(parse_statistics(["tmx:active_transactions = 2", *lines]))
    assert c.active_dialogs == 7 and c.active_transactions == 2
    assert dialog_statistics(None) == [] and dialog_statistics([{"name": "tp_dlg", "all": "x"}]) == []


def test_refused_destinations_from_the_endpoints_script_statistic():
    # the endpoint config declares it (statistics module, group "script")
    assert sip_counters(parse_statistics(["script:tp_refused_destinations = 4"])).refused_destinations == 4
    assert sip_counters(parse_statistics(LISTED)).refused_destinations == 0
