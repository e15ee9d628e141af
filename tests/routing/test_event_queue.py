"""The REGISTER event queue's values -> the events the control plane parses from them."""
from __future__ import annotations

import json

import pytest

from trunkproxy.registrations.events import (EventError, RegisterReply, RegisterRequest, RegistrationKey, encode_event,
                                             parse_event)
from trunkproxy.routing.event_queue import batch_header, batch_time, queue_value, split_value

FIELDS = json.dumps({"event": "register_reply", "endpoint": "iflo", "aor": "sip:4930111@tel.example.test",
                     "registrar": "tel.example.test", "flow": "udp:127.0.0.1:5062", "provider": "udp:127.0.0.1:5070",
                     "socket": "udp:127.0.0.1:5080", "code": 200, "reason": "OK", "expires": 600,
                     "min_expires": None})[1:-1]


def test_a_replayed_reply_becomes_the_event_the_monitor_reads():
    event = parse_event(queue_value(FIELDS, "7", 'odd"call\\id@pbx').encode(), 1764300000.25)
    assert isinstance(event, RegisterReply)
    assert (event.code, event.expires, event.cseq, event.ts) == (200, 600, 7, 1764300000.25)
    assert event.call_id == 'odd"call\\id@pbx'  # escaped, not trusted to be JSON-safe
    assert event.key.flow == "udp:127.0.0.1:5062" and event.socket == "udp:127.0.0.1:5080"


def test_the_native_routes_format_matches():
    # endpoint.cfg queues the memoised reading whole: "fields|restored Contact" for a 200 as
    # "$var(r)|$cs $ci", "fields" for a 401/407 as "$var(r)||$cs $ci"
    contact = '"Office" <sip:pbx@10.0.0.5:5062;transport=udp>;expires=600'
    event = parse_event(f"{FIELDS}|{contact}|2 a84b4c76e66710@10.0.0.1".encode(), 1764300000.5)
    assert (event.cseq, event.ts, event.call_id) == (2, 1764300000.5, "a84b4c76e66710@10.0.0.1")
    assert event.code == 200
    challenged = parse_event(f"{FIELDS}||3 c|with|bars".encode(), 1.0)
    assert (challenged.cseq, challenged.call_id) == (3, "c|with|bars")  # the Call-ID comes last: anything goes


def test_a_queued_value_needs_the_time_of_its_batch():
    with pytest.raises(EventError, match="no time"):
        parse_event(queue_value(FIELDS, 1, "c").encode())


def test_batch_header_round_trip():
    assert batch_time(batch_header(1764300000.25).rstrip("\n")) == 1764300000.25
    for line in ("", "1764300000.25", "@", "@x", "@1.2.3", "@-1"):
        assert batch_time(line) is None, line


def test_complete_events_pass_and_broken_values_are_dropped():
    full = RegisterRequest(RegistrationKey("iflo", "sip:4930111@tel.example.test", "tel.example.test",
                                           "udp:127.0.0.1:5062"), 1764300000.5, "c@pbx", 3, 600)
    assert parse_event(encode_event(full)) == full  # a complete JSON object is read as it is
    for broken in ("", "no separator", f"{FIELDS}|1 cid", f"{FIELDS}||x cid", f"{FIELDS}||1 ", f"{FIELDS}||1",
                   "||1 cid", f"{FIELDS}|<sip:a@b>|cid"):
        assert split_value(broken) is None, broken
        with pytest.raises(EventError):
            parse_event(broken.encode(), 1.0)
