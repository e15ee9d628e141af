from trunkproxy.routing.sipuri import header_param, parse_name_addr, parse_uri, split_header_values


def test_parse_full_uri():
    uri = parse_uri("sip:+4930123;npdi@[2001:db8::1]:5070;transport=tcp;lr?subject=x")
    assert uri.user == "+4930123;npdi"
    assert uri.host == "2001:db8::1"
    assert uri.port == 5070
    assert uri.param("transport") == "tcp"
    assert uri.param("lr") == ""
    assert uri.param("maddr") is None
    assert str(uri) == "sip:+4930123;npdi@[2001:db8::1]:5070;transport=tcp;lr?subject=x"
    assert uri.without_user() == "sip:[2001:db8::1]:5070;transport=tcp;lr?subject=x"


def test_non_sip_schemes_are_not_parsed():
    assert parse_uri("tel:+4930123") is None
    assert parse_uri("urn:uuid:1234") is None
    assert parse_uri("sip:") is None


def test_split_respects_quotes_and_brackets():
    value = '"Doe, John" <sip:a@h;x=1,2>;expires=60, <sip:b@h>, sip:c@h;expires=5'
    assert split_header_values(value) == ['"Doe, John" <sip:a@h;x=1,2>;expires=60', "<sip:b@h>", "sip:c@h;expires=5"]


def test_name_addr_forms():
    addr = parse_name_addr('"PBX" <sip:100@10.0.0.5:5060>;expires=3600;+sip.instance="<urn:x>"')
    assert addr.display == '"PBX"' and addr.uri == "sip:100@10.0.0.5:5060"
    assert header_param(addr.header_params, "expires") == "3600"
    bare = parse_name_addr("sip:100@10.0.0.5;expires=30")
    assert bare.uri == "sip:100@10.0.0.5" and header_param(bare.header_params, "expires") == "30"
    assert parse_name_addr("<sip:broken") is None
