"""Routing decisions, one scenario per test, no Kamailio needed."""
import pytest

from trunkproxy.routing import decide
from trunkproxy.routing.decide import Drop, Relay, Reply
from trunkproxy.routing.sipuri import parse_name_addr, parse_uri
from trunkproxy.routing.tokens import TOKEN_PARAM, Flow, decode_token, encode_token

PBX = Flow("udp", "10.0.3.7", 5062)
UNREACHABLE_CONTACT = "<sip:4930111@192.0.2.99:5060>;expires=600"


def _from_pbx(settings, method="INVITE", ruri="sip:4930222@tel.example.test", source=PBX,
              contact=UNREACHABLE_CONTACT, preset=None, local=False, path=True):
    return decide.route_from_pbx(settings, method, ruri, source, contact, preset, local, path)


def test_register_goes_to_pinned_provider_over_forced_tcp_with_path_and_hidden_contact(settings):
    d = _from_pbx(settings, "REGISTER", "sip:tel.example.test")
    assert isinstance(d, Relay)
    assert d.dst_uri == "sip:192.0.2.10:5060;transport=tcp"
    assert d.alternates == ("sip:192.0.2.11:5080;transport=tcp",)
    assert d.send_socket == "tcp:198.51.100.1:5060"
    assert d.on_reply == "register_reply" and d.on_failure == "register_failure"
    assert d.record_route is None
    contact = parse_name_addr(d.contact)
    uri = parse_uri(contact.uri)
    assert uri.user == "4930111" and uri.hostport == "198.51.100.1:5060" and uri.param("transport") == "tcp"
    assert "192.0.2.99" not in d.contact
    assert contact.header_params == ";expires=600"
    flow, original = decode_token(settings.secret, uri.param(TOKEN_PARAM))
    assert flow == PBX and original == "sip:192.0.2.99:5060"
    path_uri = parse_uri(parse_name_addr(d.path).uri)
    assert path_uri.param("lr") == "" and decode_token(settings.secret, path_uri.param(TOKEN_PARAM))[0] == PBX


def test_invite_is_record_routed_with_signed_flow(settings):
    d = _from_pbx(settings, "INVITE", "sip:4930222@sip.other.test")
    assert isinstance(d, Relay)
    assert d.dst_uri is None  # DNS (RFC 3263) resolves the Request-URI inside Kamailio
    assert d.send_socket == "udp:198.51.100.1:5060"
    token = d.record_route.split(f"{TOKEN_PARAM}=")[1]
    assert decode_token(settings.secret, token)[0] == PBX


def test_transport_param_in_ruri_selects_tcp_socket(settings):
    d = _from_pbx(settings, "INVITE", "sip:4930222@sip.other.test;transport=tcp")
    assert d.send_socket == "tcp:198.51.100.1:5060" and d.dst_uri is None


def test_pbx_over_tcp_stays_on_tcp_towards_unconfigured_provider(settings):
    d = _from_pbx(settings, "OPTIONS", "sip:sip.other.test", source=Flow("tcp", "10.0.3.7", 40000), contact=None)
    assert d.send_socket == "tcp:198.51.100.1:5060"
    assert d.dst_uri == "sip:sip.other.test;transport=tcp"
    assert d.record_route is None and d.contact is None


def test_unknown_instance_network_is_forbidden(settings):
    assert _from_pbx(settings, source=Flow("udp", "203.0.113.5", 5060)) == Reply(403, "Forbidden")


def test_request_for_the_proxy_itself(settings):
    assert _from_pbx(settings, "OPTIONS", "sip:10.0.3.1", local=True) == Reply(200, "OK")
    assert _from_pbx(settings, "INVITE", "sip:10.0.3.1", local=True) == Reply(404, "Not Found")


def test_inbound_call_with_valid_token_reaches_the_flow_not_the_claimed_contact(settings):
    register = _from_pbx(settings, "REGISTER", "sip:tel.example.test")
    our_contact = parse_name_addr(register.contact).uri
    d = decide.route_from_provider(settings, "INVITE", our_contact, None, True, True)
    assert isinstance(d, Relay)
    assert d.dst_uri == "sip:10.0.3.7:5062"
    assert d.send_socket == "udp:10.0.3.1:5060"
    assert d.ruri == "sip:4930111@192.0.2.99:5060"
    assert d.on_reply == "reply_from_pbx"
    # record-routed, signed for the PBX it reaches: its in-dialog requests must carry it
    assert decode_token(settings.secret, d.record_route.split(f";{TOKEN_PARAM}=")[1])[0] == PBX


def test_provider_may_replace_the_user_part(settings):
    register = _from_pbx(settings, "REGISTER", "sip:tel.example.test")
    uri = parse_uri(parse_name_addr(register.contact).uri)
    called = str(uri).replace("sip:4930111@", "sip:+4930111999@")
    d = decide.route_from_provider(settings, "INVITE", called, None, True, True)
    assert d.ruri == "sip:+4930111999@192.0.2.99:5060"


def test_forged_token_is_forbidden_even_from_known_provider(settings):
    token = encode_token(b"x" * 32, Flow("udp", "203.0.113.66", 5060), "sip:203.0.113.66")
    ruri = f"sip:victim@198.51.100.1:5060;{TOKEN_PARAM}={token}"
    assert decide.route_from_provider(settings, "INVITE", ruri, None, True, True) == Reply(403, "Forbidden")


def test_no_token_no_entry(settings):
    # open-relay probes: any Request-URI, with or without alias=/received=
    for ruri in ["sip:1000@203.0.113.9", "sip:1000@198.51.100.1;alias=10.0.3.7~5062~1"]:
        assert decide.route_from_provider(settings, "INVITE", ruri, None, False, False) == Reply(403, "Forbidden")
    assert decide.route_from_provider(settings, "INVITE", "sip:1000@198.51.100.1", None, True, True) == Reply(404, "Not Found")
    assert isinstance(decide.route_from_provider(settings, "OPTIONS", "sip:198.51.100.1", None, True, False), Drop)
    assert decide.route_from_provider(settings, "OPTIONS", "sip:198.51.100.1", None, True, True) == Reply(200, "OK")


def test_in_dialog_forged_route_with_foreign_ruri_is_refused(settings):
    route = "<sip:198.51.100.1:5060;r2=on;lr>, <sip:10.0.3.1:5060;r2=on;lr>"
    d = decide.route_in_dialog_from_provider(settings, "BYE", "sip:victim@203.0.113.50", route)
    assert d == Reply(403, "Forbidden")
    assert isinstance(decide.route_in_dialog_from_provider(settings, "ACK", "sip:victim@203.0.113.50", route), Drop)


def test_in_dialog_follows_signed_record_route_when_ruri_has_no_token(settings):
    invite = _from_pbx(settings, "INVITE")
    route = f"<sip:198.51.100.1:5060;r2=on;lr{invite.record_route}>"
    d = decide.route_in_dialog_from_provider(settings, "BYE", "sip:4930111@192.0.2.99", route)
    assert isinstance(d, Relay) and d.dst_uri == "sip:10.0.3.7:5062" and d.ruri == "sip:4930111@192.0.2.99"
    assert d.record_route is None


def test_in_dialog_reinvite_rewrites_pbx_answer(settings):
    invite = _from_pbx(settings, "INVITE")
    our_contact = parse_name_addr(invite.contact).uri
    d = decide.route_in_dialog_from_provider(settings, "INVITE", our_contact, None)
    assert d.on_reply == "reply_from_pbx" and d.record_route is None
    assert decide.route_in_dialog_from_provider(settings, "BYE", our_contact, None).on_reply is None


def test_rewrite_then_restore_contacts_round_trip(settings):
    value = '"A" <sip:100@192.0.2.99:5060;ob>;expires=60, *'
    rewritten = decide.rewrite_contacts(settings.secret, value, PBX, settings.external["udp"])
    assert "192.0.2.99" not in rewritten and rewritten.endswith(", *")
    assert decide.restore_contacts(settings.secret, rewritten) == '"A" <sip:100@192.0.2.99:5060;ob>;expires=60, *'
    # already ours: never double-wrapped
    assert decide.rewrite_contacts(settings.secret, rewritten, PBX, settings.external["udp"]) is None


def test_advertised_address_used_in_contacts(settings):
    from trunkproxy.routing.settings import Socket

    socket = Socket("udp", "198.51.100.1", 5060, "203.0.113.1", 5070)
    rewritten = decide.rewrite_contacts(settings.secret, "<sip:1@10.0.3.7>", PBX, socket)
    assert "@203.0.113.1:5070;" in rewritten


def test_inbound_call_via_path_route_when_provider_keeps_its_own_ruri(settings):
    register = _from_pbx(settings, "REGISTER", "sip:tel.example.test")
    d = decide.route_from_provider(settings, "INVITE", "sip:4930111@192.0.2.99", register.path, False, True)
    assert isinstance(d, Relay) and d.dst_uri == "sip:10.0.3.7:5062" and d.ruri == "sip:4930111@192.0.2.99"


def test_flow_of_hop_round_trip():
    for flow in (PBX, Flow("tcp", "2001:db8::5", 5070)):
        assert decide.flow_of_hop(flow.uri()) == flow
    assert decide.flow_of_hop("sip:host.example") is None


def test_no_path_unless_the_pbx_supports_it(settings):
    assert _from_pbx(settings, "REGISTER", "sip:tel.example.test", path=False).path is None
    assert decide.supports_path("replaces, path,100rel") and not decide.supports_path("pathological")
    assert not decide.supports_path(None)


def test_own_routes_stripped_others_kept_in_order(settings):
    route = ("<sip:198.51.100.1:5060;r2=on;lr>, <sip:10.0.3.1;r2=on;lr>, <sip:sbc.pbx.test;lr>, "
             "<sip:192.0.2.7:5070;lr>")
    assert decide.strip_own_routes(settings, route) == "<sip:sbc.pbx.test;lr>, <sip:192.0.2.7:5070;lr>"
    assert decide.strip_own_routes(settings, "<sip:198.51.100.1;lr>, <sip:10.0.3.1:5060;lr>") == ""
    assert decide.strip_own_routes(settings, "<sip:192.0.2.7;lr>") is None
    assert decide.strip_own_routes(settings, "<sip:198.51.100.1:5999;lr>") is None  # other port


def _signed_route(settings, flow, first="10.0.3.1", second="198.51.100.1", token=None):
    token = token or encode_token(settings.secret, flow)
    return (f"<sip:{first}:5060;r2=on;lr;{TOKEN_PARAM}={token}>, "
            f"<sip:{second}:5060;r2=on;lr;{TOKEN_PARAM}={token}>")


def test_in_dialog_route_signed_for_this_pbx_is_followed(settings):
    assert decide.route_set_refusal(settings, _signed_route(settings, PBX), PBX.host) is None
    # the outbound-proxy Route a PBX preloads may stand before the signed entries
    preloaded = "<sip:10.0.3.1:5060;lr>, " + _signed_route(settings, PBX)
    assert decide.route_set_refusal(settings, preloaded, PBX.host) is None
    # no Route at all: the native route answers 404 itself
    assert decide.route_set_refusal(settings, None, PBX.host) is None


@pytest.mark.parametrize("route, why", [
    ("<sip:10.0.3.1:5060;r2=on;lr>, <sip:198.51.100.1:5060;r2=on;lr>", "Route not signed by this endpoint"),
    ("<sip:10.0.3.1:5060;r2=on;lr;tpt=dWRwfDEwLjAuMy43fDUwNjJ8.AAAAAAAAAAAAAAAA>",
     "Route entry with a forged signature"),
    ("<sip:10.0.3.9:5060;lr>", "Route not signed by this endpoint"),  # not ours at all
])
def test_forged_in_dialog_routes_are_refused(settings, route, why):
    assert decide.route_set_refusal(settings, route, PBX.host) == why


def test_a_signed_route_reordered_to_leave_on_the_internal_side_is_refused(settings):
    reordered = _signed_route(settings, PBX, first="198.51.100.1", second="10.0.3.1")
    assert decide.route_set_refusal(settings, reordered, PBX.host) == "Route would leave on the internal side"


def test_a_route_signed_for_another_tenant_is_refused(settings):
    other = Flow("udp", "10.0.3.8", 5060)
    assert decide.route_set_refusal(settings, _signed_route(settings, other), PBX.host) == \
        "Route signed for another instance (10.0.3.8)"
