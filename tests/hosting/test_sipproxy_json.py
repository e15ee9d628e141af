"""sipproxy.json: the seed's format exactly, and every bad input named with source, line, key and fix."""
from __future__ import annotations

import pytest

from trunkproxy.hosting.sipproxy_json import ProxyRule, SipProxyJsonError, parse_sipproxy_json, rule_for_host

from .conftest import DATA, PROXY_NAME, TELEKOM_JSON


def test_seed_telekom_example_verbatim():
    rules = parse_sipproxy_json(TELEKOM_JSON, str(DATA / "sipproxy_telekom.json"))
    assert list(rules) == ["tel.t-online.de"]
    rule = rules["tel.t-online.de"]
    assert rule.proxy == PROXY_NAME
    assert rule.options == (("transport", "tcp"),)
    assert rule.option_lines == ("transport=tcp",)
    assert rule.line == 2 and rule.source.endswith("sipproxy_telekom.json")
    assert rule.forced().transport == "tcp"


def test_several_options_and_blank_lines():
    text = '{"a.example": {"proxy": "h-ifens5.cs-proxy.service.pascom", "options": "\\ntransport=tcp\\n\\n nat = yes \\r\\n"}}'
    rule = parse_sipproxy_json(text, "f")["a.example"]
    assert rule.options == (("transport", "tcp"), ("nat", "yes"))


def test_options_optional_and_empty_object_means_no_rules():
    assert parse_sipproxy_json("{}", "f") == {}
    rule = parse_sipproxy_json('{"A.Example": {"proxy": "p.example"}}', "f")["a.example"]
    assert rule.options == () and rule.registrar_host == "a.example"


def test_rule_equality_ignores_where_it_came_from():
    a = parse_sipproxy_json(TELEKOM_JSON, "file")
    b = parse_sipproxy_json(TELEKOM_JSON.replace("\n", "\n\n"), "consul:key")
    assert a == b
    assert isinstance(a["tel.t-online.de"], ProxyRule)


def test_rule_for_host_port_key_wins_over_host():
    rules = parse_sipproxy_json('{"reg.example": {"proxy": "p1.example"}, "reg.example:5070": {"proxy": "p2.example"}}', "f")
    assert rule_for_host(rules, "REG.example").proxy == "p1.example"
    assert rule_for_host(rules, "reg.example:5060").proxy == "p1.example"
    assert rule_for_host(rules, "reg.example:5070").proxy == "p2.example"
    assert rule_for_host(rules, "other.example") is None


# (name, text, expected line, fragments the message must contain)
BAD = [
    ("invalid_json", '{\n  "tel.t-online.de": {\n    "proxy": "p.example",\n  }\n}', 4,
     ["not valid JSON", "fix the JSON syntax"]),
    ("top_level_list", '[\n  {"proxy": "p.example"}\n]', 1, ["top level is a list", "REGISTRAR-HOST"]),
    ("top_level_string", '"tel.t-online.de"', 1, ["top level is a string"]),
    ("unknown_key", '{\n  "tel.t-online.de": {\n    "proxy": "p.example",\n    "option": "transport=tcp"\n  }\n}', 4,
     ["unknown key 'option'", "allowed keys are proxy, options"]),
    ("options_not_string", '{\n "tel.t-online.de": {\n  "proxy": "p.example",\n  "options": ["transport=tcp"]\n }\n}', 4,
     ["'options' of 'tel.t-online.de' is a list, not a string", "one option per line"]),
    ("option_not_key_value", '{\n "tel.t-online.de": {\n  "proxy": "p.example",\n  "options": "\\ntransport=tcp\\nforce-tcp\\n"\n }\n}', 4,
     ["'force-tcp'", "option 2", "is not key=value", "transport=tcp"]),
    ("literal_backslash_n", '{"tel.t-online.de": {"proxy": "p.example", "options": "\\\\ntransport=tcp\\\\n"}}', 1,
     ["literal backslash-n"]),
    ("entry_not_object", '{\n "tel.t-online.de": "p.example"\n}', 2, ["value is a string, not an object"]),
    ("missing_proxy", '{\n "tel.t-online.de": {"options": "transport=tcp"}\n}', 2, ["entry has no 'proxy'"]),
    ("proxy_not_string", '{\n "tel.t-online.de": {\n  "proxy": 5060\n }\n}', 3, ["'proxy' of 'tel.t-online.de' is a number"]),
    ("proxy_with_scheme", '{"tel.t-online.de": {"proxy": "sip:p.example;lr"}}', 1, ["is not a host name", "no 'sip:'"]),
    ("duplicate_host", '{\n "tel.t-online.de": {"proxy": "a.example"},\n "TEL.t-online.de": {"proxy": "b.example"}\n}', 3,
     ["appears twice", "line 2"]),
    ("empty", "  \n", 1, ["is empty"]),
    ("transport_tls", '{"r.example": {"proxy": "p.example", "options": "transport=tls"}}', 1, ["transport=tls", "use transport=tcp"]),
    ("transport_unknown", '{"r.example": {"proxy": "p.example", "options": "transport=sctp"}}', 1, ["'sctp' is unknown"]),
    ("secret_forced", '{"r.example": {"proxy": "p.example", "options": "secret=x"}}', 1, ["'secret' cannot be forced", "trunk edit"]),
    ("owned_key", '{"r.example": {"proxy": "p.example", "options": "endpoint.outbound_proxy=sip:x"}}', 1, ["written by trunkproxy"]),
    ("duplicate_option", '{"r.example": {"proxy": "p.example", "options": "nat=yes\\nnat=no"}}', 1, ["'nat' is given twice"]),
    ("bad_yes_no", '{"r.example": {"proxy": "p.example", "options": "directmedia=maybe"}}', 1, ["not yes or no"]),
]


@pytest.mark.parametrize("name,text,line,fragments", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_source_line_and_fix(name, text, line, fragments):
    with pytest.raises(SipProxyJsonError) as info:
        parse_sipproxy_json(text, "/etc/pascom/sipproxy.json")
    err = info.value
    message = str(err)
    assert isinstance(err, ValueError)
    assert message.startswith(f"/etc/pascom/sipproxy.json:{line}: "), message
    assert err.line == line and err.source == "/etc/pascom/sipproxy.json"
    assert err.fix, "every error says what to do"
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_allow_may_repeat():
    rule = parse_sipproxy_json('{"r.example": {"proxy": "p.example", "options": "disallow=all\\nallow=alaw\\nallow=g722"}}', "f")
    assert rule["r.example"].options == (("disallow", "all"), ("allow", "alaw"), ("allow", "g722"))
