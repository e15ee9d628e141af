from trunkproxy.routing.tokens import Flow, decode_token, encode_token

SECRET = b"s" * 32


def test_round_trip_keeps_flow_and_original_uri():
    flow = Flow("tcp", "10.0.3.7", 5062)
    token = encode_token(SECRET, flow, "sip:192.0.2.99:5060;transport=tcp")
    assert decode_token(SECRET, token) == (flow, "sip:192.0.2.99:5060;transport=tcp")


def test_token_is_uri_parameter_safe():
    token = encode_token(SECRET, Flow("udp", "2001:db8::7", 5060), "sips:[2001:db8::7]:5061;a=b?x=y")
    assert all(c.isalnum() or c in "-_." for c in token)


def test_other_secret_rejects():
    token = encode_token(SECRET, Flow("udp", "10.0.0.1", 5060))
    assert decode_token(b"t" * 32, token) is None


def test_tampered_payload_rejects():
    token = encode_token(SECRET, Flow("udp", "10.0.0.1", 5060))
    body, mac = token.split(".")
    forged_body = encode_token(SECRET, Flow("udp", "203.0.113.66", 5060)).split(".")[0]
    assert decode_token(SECRET, f"{forged_body}.{mac}") is None
    assert decode_token(SECRET, f"{body}.{mac[:-2]}AA") is None


def test_garbage_rejects_without_raising():
    for junk in ["", ".", "abc", "abc.", ".abc", "!!!.???", "a" * 500 + "." + "b" * 16]:
        assert decode_token(SECRET, junk) is None
