"""Event datagrams: recorded good vectors parse, bad ones (named by their defect) raise EventError."""
from __future__ import annotations

from pathlib import Path

import pytest

from trunkproxy.registrations.events import (
    EventError,
    RegisterReply,
    RegisterRequest,
    RegistrationKey,
    encode_event,
    parse_event,
)

VECTORS = Path(__file__).parent / "vectors"
GOOD = sorted(VECTORS.glob("*.json"))
BAD = sorted((VECTORS / "bad").glob("*.json"))


def test_request_vector():
    event = parse_event((VECTORS / "request_register.json").read_bytes())
    assert event == RegisterRequest(
        key=RegistrationKey("iflo", "sip:4930123@tel.example.test", "tel.example.test", "udp:127.0.0.1:5062"),
        ts=1764300000.12, call_id="a84b4c76e66710", cseq=2, expires=3600)


def test_deregister_and_absent_expires():
    assert parse_event((VECTORS / "request_deregister.json").read_bytes()).expires == 0
    assert parse_event((VECTORS / "request_no_expires.json").read_bytes()).expires is None


def test_reply_vectors():
    ok = parse_event((VECTORS / "reply_200_ok.json").read_bytes())
    assert isinstance(ok, RegisterReply) and (ok.code, ok.reason, ok.expires, ok.local) == (200, "OK", 600, False)
    brief = parse_event((VECTORS / "reply_423_min_expires.json").read_bytes())
    assert (brief.code, brief.min_expires) == (423, 600)
    timeout = parse_event((VECTORS / "reply_408_local_timeout.json").read_bytes())
    assert (timeout.code, timeout.local) == (408, True)
    assert parse_event((VECTORS / "reply_unknown_field_ignored.json").read_bytes()).code == 200


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_good_vectors_roundtrip_through_encode(path):
    event = parse_event(path.read_bytes())
    assert parse_event(encode_event(event)) == event


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_vectors_raise_event_error(path):
    with pytest.raises(EventError):
        parse_event(path.read_bytes())


def test_event_error_is_a_value_error():
    assert issubclass(EventError, ValueError)


def test_queued_values_of_one_registration_differ_only_in_their_message():
    # the fields of a registration's refreshes are parsed once and reused: the CSeq, time and
    # Call-ID must still be each message's own, and a bad fields part fails every time
    fields = encode_event(parse_event((VECTORS / "reply_200_ok.json").read_bytes())).decode()[1:-1]
    fields = ",".join(f for f in fields.split(",") if not f.startswith(('"ts"', '"call_id"', '"cseq"')))
    first = parse_event(f"{fields}|<sip:pbx@10.0.0.5>;expires=60|7 a@pbx".encode(), 1764300000)
    second = parse_event(f"{fields}||8 b@pbx".encode(), 1764300060.5)
    assert (first.cseq, first.ts, first.call_id) == (7, 1764300000.0, "a@pbx")
    assert (second.cseq, second.ts, second.call_id) == (8, 1764300060.5, "b@pbx")
    assert first.key == second.key and first.code == second.code == 200
    for _ in range(2):
        with pytest.raises(EventError):
            parse_event(b'"event":"register_reply","code":"200"||1 c@pbx', 1.0)
