"""In-dialog requests in both directions traverse the endpoint (README: "record-routes both sides
of every dialog, so ACK, BYE, re-INVITE, UPDATE, PRACK and INFO traverse it in both directions").

Two calls, each carrying every in-dialog method, between SIPp peers through a real endpoint and
the Kamailio provider registrar:

- outbound: PBX (pbx_uac_indialog) -> endpoint -> provider -> far end (provider_uas_indialog);
  PBX sends PRACK, ACK, UPDATE, BYE; the far end sends re-INVITE (+ its ACK) and INFO.
- inbound: caller (provider_uac_indialog) -> provider registrar -> endpoint -> PBX registered
  through the endpoint (pbx_uas_indialog); the caller sends PRACK, ACK, UPDATE, BYE; the PBX
  sends re-INVITE (+ its ACK) and INFO.

So each method crosses the endpoint at least once PBX -> far end and once far end -> PBX. The
scenarios fail the call on any non-200 final reply to an in-dialog request. Beyond the calls
succeeding, the provider must have seen every in-dialog request pass (it is on the route set
only if the endpoint relayed to it: the PBX's Contact is an unreachable 192.0.2.99 and the far
end only knows the endpoint's address), the PBX must get in-dialog requests with its own
original Contact as Request-URI, and the far end must never see 192.0.2.99.
"""
from __future__ import annotations

import pytest

from .endpoint import ProviderPin
from .procs import UNREACHABLE_CONTACT, free_port
from .sipp import trace_messages

pytestmark = pytest.mark.e2e

UNREACHABLE_HOST = UNREACHABLE_CONTACT.split(":")[0]
PBX_TO_FAR_OUT = ("PRACK", "ACK", "UPDATE", "BYE")
FAR_TO_PBX_OUT = ("INVITE", "ACK", "INFO")   # re-INVITE, its ACK, INFO


def _requests(trace: str, direction: str, method: str) -> list[str]:
    """Start lines of `method` requests sent/received in a SIPp trace."""
    return [text.splitlines()[0] for d, text in trace_messages(trace)
            if d == direction and text.startswith(f"{method} ")]


def _in_dialog(msgs, method):
    """Requests of `method` with a To tag (in-dialog), as logged by the provider."""
    return [m for m in msgs if m.msg.is_request and m.msg.method == method
            and ";tag=" in (m.msg.header("To") or "")]


def _assert_relayed_to_endpoint(received, sent, methods, sender: tuple[str, int], ext, who: str) -> None:
    """Each of `methods` came to the provider from `sender` and went on to the endpoint."""
    for method in methods:
        from_sender = [m for m in _in_dialog(received, method) if m.peer[:2] == sender]
        to_endpoint = [m for m in _in_dialog(sent, method) if m.peer[:2] == ext]
        assert from_sender, f"{method} from the {who} did not reach the provider"
        assert to_endpoint, f"{method} from the {who} was not relayed to the endpoint"


def _assert_relayed_from_endpoint(received, methods, ext) -> None:
    """Each of `methods` from the PBX reached the provider from the endpoint's external side."""
    for method in methods:
        from_endpoint = [m for m in _in_dialog(received, method) if m.peer[:2] == ext]
        assert from_endpoint, f"{method} from the PBX did not reach the provider via the endpoint"


def _assert_pbx_got_its_own_contact(pbx_trace: str, methods) -> None:
    """The PBX received each of `methods` with its own original Contact as Request-URI."""
    for method in methods:
        lines = _requests(pbx_trace, "received", method)
        assert lines, f"PBX did not receive {method}"
        assert all(line.split()[1].startswith(f"sip:4930111@{UNREACHABLE_HOST}") for line in lines), lines


def _assert_endpoint_contact(contact: str | None, endpoint, what: str) -> None:
    assert contact, f"{what}: no Contact"
    assert f"127.0.0.1:{endpoint.external_port}" in contact and "tpt=" in contact, f"{what}: {contact}"
    assert UNREACHABLE_HOST not in contact, f"{what}: PBX Contact leaked: {contact}"


def test_outbound_call_in_dialog_requests_both_ways(make_provider, make_endpoint, sipp):
    pstn_port = free_port()
    provider = make_provider(pstn=("127.0.0.1", pstn_port))
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])])
    far = sipp.background("provider_uas_indialog", local_port=pstn_port, timeout=20)
    pbx = sipp.run("pbx_uac_indialog", rsa=endpoint.internal_hostport, timeout=15)
    far_result = far.wait(15)
    pbx.assert_ok(calls=1)
    far_result.assert_ok(calls=1)

    ext = ("127.0.0.1", endpoint.external_port)
    received = provider.received()
    sent = provider.sent()
    # PBX -> far end: each in-dialog request reached the provider from the endpoint's external side
    _assert_relayed_from_endpoint(received, PBX_TO_FAR_OUT, ext)
    # far end -> PBX: each one came from the far end and the provider relayed it to the endpoint
    _assert_relayed_to_endpoint(received, sent, FAR_TO_PBX_OUT, ("127.0.0.1", pstn_port), ext, "far end")
    # the PBX got the far end's requests with its own original Contact as Request-URI
    _assert_pbx_got_its_own_contact(pbx.messages, FAR_TO_PBX_OUT)

    # the Contact of the PBX's UPDATE and of its 200 to the re-INVITE, as the far side sees them
    update = [m for m in _in_dialog(received, "UPDATE") if m.peer[:2] == ext][0]
    _assert_endpoint_contact(update.msg.header("Contact"), endpoint, "UPDATE from PBX")
    reinvite_200 = [m for m in received if not m.msg.is_request and m.msg.status == 200
                    and m.msg.method == "INVITE" and m.peer[:2] == ext
                    and (m.msg.header("CSeq") or "").split()[0] == "1"
                    and "o=pbx 1 3" in m.msg.body]   # the answer to the re-INVITE's offer
    assert reinvite_200, "the PBX's 200 to the re-INVITE did not reach the provider from the endpoint"
    _assert_endpoint_contact(reinvite_200[0].msg.header("Contact"), endpoint, "200 to re-INVITE from PBX")
    assert UNREACHABLE_HOST not in far_result.messages, "the far end saw the PBX's own Contact"
    assert not provider.events("REFUSED"), "something was sent towards the PBX's own Contact"


def test_inbound_call_in_dialog_requests_both_ways(endpoint, provider, sipp):
    pbx_port, caller_port = free_port(), free_port()
    sipp.run("pbx_register", rsa=endpoint.internal_hostport, local_port=pbx_port,
             vars={"user": "4930111", "password": "secret111"}).assert_ok(calls=1)
    pbx = sipp.background("pbx_uas_indialog", vars={"user": "4930111"}, local_port=pbx_port, timeout=20)
    caller = sipp.run("provider_uac_indialog", provider.hostport, vars={"to_user": "4930111"},
                      local_port=caller_port, timeout=15)
    pbx_result = pbx.wait(15)
    caller.assert_ok(calls=1)
    pbx_result.assert_ok(calls=1)

    ext = ("127.0.0.1", endpoint.external_port)
    received = provider.received()
    sent = provider.sent()
    # far end -> PBX: PRACK, ACK, UPDATE, BYE came from the caller and went on to the endpoint
    _assert_relayed_to_endpoint(received, sent, PBX_TO_FAR_OUT, ("127.0.0.1", caller_port), ext, "caller")
    # PBX -> far end: re-INVITE, its ACK, INFO reached the provider from the endpoint
    _assert_relayed_from_endpoint(received, FAR_TO_PBX_OUT, ext)
    # the PBX got every in-dialog request with its own (unreachable) Contact as Request-URI
    _assert_pbx_got_its_own_contact(pbx_result.messages, PBX_TO_FAR_OUT)

    # the Contact of the PBX's re-INVITE (and its 200 to UPDATE) as the far side sees it
    reinvite = [m for m in _in_dialog(received, "INVITE") if m.peer[:2] == ext][0]
    _assert_endpoint_contact(reinvite.msg.header("Contact"), endpoint, "re-INVITE from PBX")
    update_200 = [m for m in received if not m.msg.is_request and m.msg.status == 200
                  and m.msg.method == "UPDATE" and m.peer[:2] == ext]
    assert update_200, "the PBX's 200 to UPDATE did not reach the provider from the endpoint"
    _assert_endpoint_contact(update_200[0].msg.header("Contact"), endpoint, "200 to UPDATE from PBX")
    reinvites_at_caller = [t for d, t in trace_messages(caller.messages)
                           if d == "received" and t.startswith("INVITE ")]
    assert reinvites_at_caller and f"127.0.0.1:{endpoint.external_port}" in reinvites_at_caller[0]
    assert UNREACHABLE_HOST not in caller.messages, "the caller saw the PBX's own Contact"
    assert not provider.events("REFUSED"), "something was sent towards the PBX's own Contact"
