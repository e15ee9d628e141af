"""Memoised decisions replayed natively (docs/routing.md, "Decision cache").

Python decides the first request of its kind from a PBX flow and reads the first reply to a
REGISTER; the native route replays both for repeats. A repeat must be treated exactly like the
first: the same rewrites on the wire, the same events for the registration monitor, the same
failover, and changed settings must void what was memoised.
"""
from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from trunkproxy.kamailio.rpc import rpc_call

from .endpoint import ProviderPin
from .procs import free_port, wait_until
from .sipmsg import SipMessage
from .sipp import trace_messages

pytestmark = pytest.mark.e2e

REGISTRAR = "tel.example.test"
AOR = f"sip:4930111@{REGISTRAR}"


def _rpc(run, method: str, *params):
    return asyncio.run(rpc_call(run.state_dir / "run" / "iflo" / "rpc.sock", method, *params))


def _entries(run, table: str) -> list[dict]:
    dump = _rpc(run, "htable.dump", table) or []
    return [cell for slot in dump for cell in slot.get("slot", [])]


def _register(sipp, run, port: int, **kw):
    return sipp.run("pbx_register", rsa=run.internal_hostport, vars={"user": "4930111", "password": "secret111"},
                    local_port=port, **kw)


def _received(trace: str, status: int) -> list[SipMessage]:
    """The replies with `status` received in a SIPp message trace."""
    return [SipMessage.parse(text.replace("\n", "\r\n")) for direction, text in trace_messages(trace)
            if direction == "received" and text.startswith(f"SIP/2.0 {status} ")]


def _registration(run) -> dict:
    """The registration of AOR as the API shows it ({} before the monitor heard of it)."""
    with urllib.request.urlopen(run.api_url + "/api/registrations", timeout=5) as resp:
        regs = [r for r in json.load(resp)["registrations"] if r["aor"] == AOR]
    assert len(regs) <= 1, regs
    return regs[0] if regs else {}


def test_register_refreshes_are_replayed_with_the_same_rewrites_and_reported(make_endpoint, provider, sipp):
    run = make_endpoint(providers=[ProviderPin(REGISTRAR, [provider.hostport])], api_port=free_port())
    port = free_port()
    _register(sipp, run, port).assert_ok()
    decided = _entries(run, "tp_dec")
    assert len(decided) == 1 and decided[0]["name"].startswith("REGISTER|")
    # the destination onsend_route allowed (tenant isolation): the provider
    assert [e["name"] for e in _entries(run, "tp_ok")] == [provider.hostport]
    wait_until(lambda: _registration(run).get("state") == "registered", timeout=5, message="registered")
    first_success = _registration(run)["last_success"]

    results = [_register(sipp, run, port) for _ in range(2)]
    for result in results:
        result.assert_ok()
        (ok,) = _received(result.messages, 200)
        # the PBX gets its own Contact back, the registrar's expiry kept; no token leaks to it
        assert "192.0.2.99" in ok.header("Contact") and "tpt=" not in ok.header("Contact")
        assert "expires=" in ok.header("Contact")
    # replayed: no new decision, the REGISTERs' replies memoised (401 and 200)
    assert _entries(run, "tp_dec") == decided
    replies = [cell["name"] for cell in _entries(run, "tp_rep")]
    assert any("|401 " in name for name in replies) and any("|200 " in name for name in replies)

    registers = [m.msg for m in provider.received("REGISTER") if m.msg.is_request]
    assert len(registers) == 6  # 3 x (challenged, authenticated)
    assert len({r.header("Contact") for r in registers}) == 1 and len({r.header("Path") for r in registers}) == 1
    assert all(m.peer[:2] == ("127.0.0.1", run.external_port) for m in provider.received("REGISTER")
               if m.msg.is_request)
    # the monitor heard of the replayed refreshes (their replies went through the event queue)
    wait_until(lambda: _registration(run)["last_success"] > first_success, timeout=5,
               message="last_success moved by a replayed refresh")
    reg = _registration(run)
    assert reg["state"] == "registered" and reg["consecutive_failures"] == 0


def test_calls_from_one_pbx_flow_are_replayed_and_counted_as_active_dialogs(make_provider, make_endpoint, sipp):
    pstn_port = free_port()
    provider = make_provider(pstn=("127.0.0.1", pstn_port))
    run = make_endpoint(providers=[ProviderPin(REGISTRAR, [provider.hostport])], api_port=free_port())
    far = sipp.background("provider_uas", local_port=pstn_port, calls=3)
    pbx = sipp.background("pbx_uac", rsa=run.internal_hostport, calls=3, pause_ms=1500)

    def active_dialogs() -> float | None:
        return run.metrics().get("trunkproxy_active_dialogs", endpoint="iflo")

    wait_until(lambda: active_dialogs() == 1, timeout=10, interval=0.1, message="one call up")
    assert pbx.wait(20).successful == 3 and far.wait(10).successful == 3
    wait_until(lambda: active_dialogs() == 0, timeout=5, interval=0.2, message="no call up after the BYEs")

    invites = [m.msg for m in provider.received("INVITE") if m.msg.is_request and m.peer[1] == run.external_port]
    assert len(invites) == 3
    # the same treatment for the replayed calls: endpoint's Contact with a token, its Record-Route
    assert len({i.header("Contact") for i in invites}) == 1 and "tpt=" in invites[0].header("Contact")
    assert len({tuple(i.headers("Record-Route")) for i in invites}) == 1
    assert any("tpt=" in rr for rr in invites[0].headers("Record-Route"))
    assert len([e for e in _entries(run, "tp_dec") if e["name"].startswith("INVITE|")]) == 1, _entries(run, "tp_dec")
    byes = [m for m in provider.received("BYE") if m.msg.is_request]
    assert len(byes) >= 3


def test_replayed_call_fails_over_to_the_second_pinned_address(make_provider, make_endpoint, sipp):
    pstn_port = free_port()
    provider = make_provider(pstn=("127.0.0.1", pstn_port))
    dead = f"127.0.0.1:{free_port()}"
    run = make_endpoint(providers=[ProviderPin(REGISTRAR, [dead, provider.hostport])])
    far = sipp.background("provider_uas", local_port=pstn_port, calls=2)
    sipp.run("pbx_uac", rsa=run.internal_hostport, calls=2, timeout=30).assert_ok(calls=2)
    assert far.wait(10).successful == 2
    (decision,) = [e for e in _entries(run, "tp_dec") if e["name"].startswith("INVITE|")]
    assert decision["value"].endswith(f"|sip:{provider.hostport}")  # the alternate, replayed


def test_replayed_register_fails_over_to_the_second_pinned_address(make_provider, make_endpoint, sipp):
    # the failover hops of a replayed REGISTER come from the registration kept in its
    # transaction (the failure route reads them there, not from a Python decision)
    provider = make_provider()
    dead = f"127.0.0.1:{free_port()}"
    run = make_endpoint(providers=[ProviderPin(REGISTRAR, [dead, provider.hostport])], api_port=free_port())
    port = free_port()
    _register(sipp, run, port, timeout=30).assert_ok()
    decided = _entries(run, "tp_dec")
    (register,) = [e for e in decided if e["name"].startswith("REGISTER|")]
    assert register["value"].split("|")[1] == f"sip:{dead}"  # replayed towards the dead one first
    before = len([m for m in provider.received("REGISTER") if m.msg.is_request])
    _register(sipp, run, port, timeout=30).assert_ok()
    assert _entries(run, "tp_dec") == decided  # replayed, not decided again
    assert len([m for m in provider.received("REGISTER") if m.msg.is_request]) == before + 2  # 401, then 200
    wait_until(lambda: _registration(run).get("state") == "registered", timeout=5, message="registered")
    assert _registration(run)["consecutive_failures"] == 0  # the dead address's timeouts were no outcome


def test_register_answered_503_by_one_address_is_registered_by_the_next(make_provider, make_endpoint, sipp):
    # a 5xx from the first pinned address is not the REGISTER's outcome when failover follows
    busy, provider = make_provider(), make_provider()
    busy.set_register_reply(503, "Service Unavailable")
    run = make_endpoint(providers=[ProviderPin(REGISTRAR, [busy.hostport, provider.hostport])], api_port=free_port())
    port = free_port()
    for _ in range(2):  # decided by Python, then replayed
        _register(sipp, run, port).assert_ok()
    assert [m.status for m in busy.sent("REGISTER") if m.status] == [503] * 4
    wait_until(lambda: _registration(run).get("last_code") == 200, timeout=5, message="last code 200")
    reg = _registration(run)
    assert reg["state"] == "registered" and reg["consecutive_failures"] == 0, reg


def test_changed_settings_void_memoised_decisions(make_provider, make_endpoint, sipp):
    provider = make_provider()
    run = make_endpoint(providers=[ProviderPin(REGISTRAR, [provider.hostport])])
    port = free_port()

    def registers_over(transport: str) -> bool:
        before = len(provider.received("REGISTER"))
        ok = _register(sipp, run, port).ok
        return ok and {m.peer[2] for m in provider.received("REGISTER")[before:]} == {transport}

    assert registers_over("udp") and registers_over("udp")  # the second one replayed
    run.providers = [ProviderPin(REGISTRAR, [provider.hostport], "tcp")]
    run.reload()
    wait_until(lambda: "reload done" in run.log(), timeout=10, message="reload logged")
    # the identical REGISTER from the identical flow now follows the new settings
    wait_until(lambda: registers_over("tcp"), timeout=10, interval=0.5, message="REGISTER over TCP after reload")


def test_inbound_calls_to_a_registered_pbx_are_replayed(make_provider, make_endpoint, sipp):
    provider = make_provider()
    run = make_endpoint(providers=[ProviderPin(REGISTRAR, [provider.hostport])])
    port = free_port()
    _register(sipp, run, port).assert_ok()
    pbx = sipp.background("pbx_uas", vars={"user": "4930111"}, local_port=port, calls=3)
    caller = sipp.background("provider_uac", provider.hostport, vars={"to_user": "4930111"}, calls=3,
                             pause_ms=1500)
    # an answered call from outside is an active dialog until its BYE
    wait_until(lambda: len(_entries(run, "tp_dlg")) >= 1, timeout=10, interval=0.1, message="a call up")
    caller = caller.wait(20)
    caller.assert_ok(calls=3)
    answered = pbx.wait(10)
    assert answered.successful == 3
    assert _entries(run, "tp_dlg") == []
    invites = [line.split()[1] for line in answered.messages.splitlines() if line.startswith("INVITE ")]
    # every call, replayed or not, reaches the PBX with its own Contact as Request-URI
    assert len(invites) == 3 and all(uri.startswith("sip:4930111@192.0.2.99") for uri in invites)
    assert answered.messages.count("BYE sip:") == 3
    # the caller sees the endpoint, never the PBX, in every 200's Contact
    oks = _received(caller.messages, 200)
    contacts = {ok.header("Contact") for ok in oks if "INVITE" in (ok.header("CSeq") or "")}
    assert len(contacts) == 1
    (contact,) = contacts
    assert f"127.0.0.1:{run.external_port}" in contact and "tpt=" in contact and "192.0.2.99" not in contact
    names = [e["name"] for e in _entries(run, "tp_dec")]
    assert len([n for n in names if n.startswith("I|INVITE|")]) == 1  # decided once, replayed twice
    assert [n for n in names if n.startswith("Y|")]  # the PBX's 180/200 Contact, rewritten once
    assert [n for n in names if n.startswith("D|BYE|")]  # in-dialog requests from outside
