"""The memoised REGISTER and reply values the native routes take apart with {s.select,N,|}."""
from __future__ import annotations

from trunkproxy.routing.register_memo import (Registration, parse_registration, registration_value, reply_memo,
                                              request_memo)

REG = Registration("udp:10.0.0.5:5060", "tel.example.test", "udp:192.0.2.1:5080", "sip:4930111@tel.example.test",
                   ("sip:192.0.2.8:5060", "sip:192.0.2.9:5060"))


def select(value: str, n: int) -> str:
    """Kamailio's {s.select,n,|} (a negative n counts from the end)."""
    return value.split("|")[n]


def test_registration_round_trip_with_and_without_failover_hops():
    text = registration_value(REG)
    assert text == ("udp:10.0.0.5:5060 tel.example.test udp:192.0.2.1:5080 sip:4930111@tel.example.test "
                    "sip:192.0.2.8:5060 sip:192.0.2.9:5060")
    assert parse_registration(text) == REG
    plain = REG._replace(alternates=())
    assert parse_registration(registration_value(plain)) == plain


def test_registration_that_the_separators_would_break_is_not_kept():
    assert registration_value(REG._replace(to_uri="sip:a b@x")) is None
    assert registration_value(REG._replace(registrar="a|b")) is None
    assert registration_value(REG._replace(registrar="")) is None
    assert parse_registration(None) is None and parse_registration("too few fields") is None


def test_request_memo_fields_where_the_route_selects_them():
    registration = registration_value(REG)
    value = request_memo("ext_udp", "sip:192.0.2.7:5060", registration, "<sip:4930111@192.0.2.1:5080;tpt=abc>",
                         "<sip:tpt.xyz@192.0.2.1:5080;lr>")
    assert [select(value, n) for n in range(3)] == ["ext_udp", "sip:192.0.2.7:5060", registration]
    assert select(value, -1) == ("Contact: <sip:4930111@192.0.2.1:5080;tpt=abc>\r\n"
                                 "Path: <sip:tpt.xyz@192.0.2.1:5080;lr>\r\n")
    without_path = request_memo("ext_udp", "sip:192.0.2.7:5060", registration, "<sip:x@y>", None)
    assert select(without_path, -1) == "Contact: <sip:x@y>\r\n"
    assert request_memo("ext_udp", "sip:192.0.2.7:5060", registration, "<sip:x|y@z>", None) is None
    assert request_memo("ext_udp", "", registration, "<sip:x@y>", None) is None
    assert request_memo("ext_udp", "sip:192.0.2.7:5060", registration, "", None) is None


def test_reply_memo_restores_a_2xx_and_reports_a_challenge():
    fields = '"event": "register_reply", "code": 200'
    assert reply_memo(fields, 200, "<sip:4930111@10.0.0.5:5060>;expires=600", True) == (
        f"{fields}|<sip:4930111@10.0.0.5:5060>;expires=600")
    assert select(reply_memo(fields, 200, "<sip:a@b>", True), 0) == fields
    assert reply_memo(fields, 401, None, False) == fields  # select 0 is the fields too
    # what the native route could not replay exactly
    assert reply_memo(fields, 200, None, True) is None  # a 2xx whose Contact was not ours
    assert reply_memo(fields, 407, None, True) is None  # a challenge with a Contact
    assert reply_memo(fields, 403, None, False) is None
    assert reply_memo('"reason": "a|b"', 401, None, False) is None
