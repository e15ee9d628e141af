"""Issue 3 end to end: the registration monitor watching REGISTERs through a real endpoint.

SIPp PBX -> trunkproxy endpoint (`trunkproxy run`, real Kamailio) -> Kamailio provider with digest
auth. What the monitor recorded is read back over the HTTP API (`GET /api/registrations`), with
`trunkproxy status --json` (the CLI reading the state file) and on `/metrics`.
"""
from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from trunkproxy.kamailio.render import PV_BUFFER_BYTES

from .endpoint import ProviderPin
from .procs import free_port, wait_until

pytestmark = pytest.mark.e2e

ENDPOINT = "iflo"  # the endpoint on interface lo
REGISTRAR = "tel.example.test"


# --------------------------------------------------------------------------- helpers

def _endpoint(make_endpoint, *addresses: str):
    return make_endpoint(providers=[ProviderPin(REGISTRAR, list(addresses))], api_port=free_port())


def _register(sipp, run, user="4930111", *, password=None, expires=None, local_ip="127.0.0.1",
              local_port=None, timeout=10):
    vars = {"user": user, "password": password or f"secret{user[-3:]}"}
    if expires is not None:
        vars["expires"] = expires
    return sipp.run("pbx_register", rsa=run.internal_hostport, vars=vars, local_ip=local_ip,
                    local_port=local_port, timeout=timeout)


def _get(run, path: str, **query) -> tuple[int, str]:
    url = run.api_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _api(run, **query) -> list[dict]:
    status, body = _get(run, "/api/registrations", **query)
    assert status == 200, body
    return json.loads(body)["registrations"]


def _cli_status(run, *args: str) -> list[dict]:
    res = run.cli("status", "--json", *args)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["registrations"]


def _one(regs: list[dict], aor: str, flow_ip: str | None = None) -> dict | None:
    found = [r for r in regs if r["aor"] == aor and (flow_ip is None or r["flow"].split(":")[1] == flow_ip)]
    assert len(found) <= 1, found
    return found[0] if found else None


def _wait_state(run, state: str, aor: str = f"sip:4930111@{REGISTRAR}", flow_ip: str | None = None,
                timeout: float = 8.0) -> dict:
    """Poll the API until the registration of `aor` (from `flow_ip`) is in `state`; return it."""
    last: list = []

    def check():
        last[:] = _api(run)
        reg = _one(last, aor, flow_ip)
        return reg if reg and reg["state"] == state else None

    try:
        return wait_until(check, timeout=timeout, interval=0.1, message=f"{aor} {state}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; registrations: {json.dumps(last, indent=1)}") from None


# --------------------------------------------------------------------------- tests

def test_registered_with_the_granted_expiry_in_api_and_cli(provider, make_endpoint, sipp):
    run = _endpoint(make_endpoint, provider.hostport)
    port = free_port()
    _register(sipp, run, expires=600, local_port=port).assert_ok()
    reg = _wait_state(run, "registered")
    assert reg["endpoint"] == ENDPOINT and reg["registrar"] == REGISTRAR
    assert reg["flow"] == f"udp:127.0.0.1:{port}"  # the address the PBX really sent from
    assert reg["expires"] == 600
    assert 590 <= reg["seconds_until_expiry"] <= 600
    assert reg["last_code"] == 200 and reg["consecutive_failures"] == 0 and reg["last_success"]
    assert reg["trunk"] is None  # no trunk store: unknown
    metrics = run.metrics()  # every line of Kamailio's event batches was read, none dropped
    assert metrics.get("trunkproxy_registration_events_total", result="received") >= 1
    assert metrics.get("trunkproxy_registration_events_total", result="malformed") == 0

    cli = _one(_cli_status(run), f"sip:4930111@{REGISTRAR}")
    assert cli["state"] == "registered" and cli["expires"] == 600 and cli["flow"] == reg["flow"]
    assert _cli_status(run, "--state", "failed") == []
    table = run.cli("status").stdout
    assert "registered" in table and f"endpoint {ENDPOINT}" in table


def test_wrong_password_is_failed(provider, make_endpoint, sipp):
    run = _endpoint(make_endpoint, provider.hostport)
    result = _register(sipp, run, password="not-the-secret")
    assert not result.ok
    reg = _wait_state(run, "failed")
    assert reg["last_code"] == 403 and reg["consecutive_failures"] >= 1
    assert reg["last_success"] is None and reg["seconds_until_expiry"] is None
    assert provider.events("AUTHFAIL")
    assert _one(_cli_status(run, "--state", "failed"), f"sip:4930111@{REGISTRAR}")


def test_provider_not_running_is_failed_timeout(make_endpoint, sipp):
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens here
    run = _endpoint(make_endpoint, nobody)
    result = _register(sipp, run, timeout=10)  # provider_timeout_ms = 3000 -> 503 to the PBX
    assert not result.ok
    assert "503" in result.messages
    reg = _wait_state(run, "failed")
    assert reg["last_code"] == 408 and reg["last_reason"] == "timeout"
    assert reg["consecutive_failures"] == 1


def test_short_expiry_not_refreshed_is_expired(make_provider, make_endpoint, sipp):
    provider = make_provider(min_expires=1)
    run = _endpoint(make_endpoint, provider.hostport)
    _register(sipp, run, expires=2).assert_ok()
    reg = _wait_state(run, "registered", timeout=3)
    assert reg["expires"] == 2
    reg = _wait_state(run, "expired", timeout=6)  # the monitor's own timer, nobody refreshes
    assert reg["seconds_until_expiry"] is None or reg["seconds_until_expiry"] <= 0
    assert _one(_cli_status(run), f"sip:4930111@{REGISTRAR}")["state"] == "expired"


def test_register_below_min_expires_is_failed_with_min_expires(make_provider, make_endpoint, sipp):
    provider = make_provider(min_expires=120)
    run = _endpoint(make_endpoint, provider.hostport)
    port = free_port()
    assert not _register(sipp, run, expires=60, local_port=port).ok
    reg = _wait_state(run, "failed")
    assert reg["last_code"] == 423 and reg["min_expires"] == 120
    assert "120" in reg["last_reason"]
    assert [m.status for m in provider.sent("REGISTER") if (m.status or 0) >= 300] == [401, 423]
    _register(sipp, run, expires=120, local_port=port).assert_ok()  # same flow: same registration
    reg = _wait_state(run, "registered")
    assert reg["expires"] == 120 and reg["min_expires"] is None  # forgotten after a success


def test_event_longer_than_a_batch_reaches_the_monitor(provider, make_endpoint, sipp):
    # route TICK joins queued events in Kamailio's pv_printf buffer; one that does not fit
    # even alone (a provider's reason phrase that long) is sent on its own, not lost
    reason = "Temporarily Unavailable " + "x" * PV_BUFFER_BYTES
    run = _endpoint(make_endpoint, provider.hostport)
    port = free_port()
    provider.set_register_reply(503, reason)
    assert not _register(sipp, run, local_port=port).ok
    reg = _wait_state(run, "failed")
    assert reg["last_code"] == 503 and reg["last_reason"] == reason
    provider.set_register_reply(None)
    _register(sipp, run, local_port=port).assert_ok()  # the events after it still arrive
    assert _wait_state(run, "registered")["last_code"] == 200


def test_deregister_is_unregistered(provider, make_endpoint, sipp):
    run = _endpoint(make_endpoint, provider.hostport)
    port = free_port()
    _register(sipp, run, local_port=port).assert_ok()
    _wait_state(run, "registered")
    _register(sipp, run, expires=0, local_port=port).assert_ok()
    reg = _wait_state(run, "unregistered")
    assert reg["seconds_until_expiry"] is None
    assert provider.contacts("4930111") == []
    assert _one(_cli_status(run), f"sip:4930111@{REGISTRAR}")["state"] == "unregistered"


def test_two_instances_and_two_trunks_are_kept_apart(provider, make_endpoint, sipp):
    run = _endpoint(make_endpoint, provider.hostport)
    a, b = free_port("127.0.0.2"), free_port("127.0.0.3")
    _register(sipp, run, "4930111", local_ip="127.0.0.2", local_port=a).assert_ok()
    _register(sipp, run, "4930222", local_ip="127.0.0.2", local_port=a).assert_ok()
    _register(sipp, run, "4930222", expires=300, local_ip="127.0.0.3", local_port=b).assert_ok()
    assert not _register(sipp, run, "4930111", password="wrong", local_ip="127.0.0.3", local_port=b).ok

    aor1, aor2 = f"sip:4930111@{REGISTRAR}", f"sip:4930222@{REGISTRAR}"
    _wait_state(run, "failed", aor1, "127.0.0.3")
    regs = _api(run)
    assert len(regs) == 4, regs
    assert _one(regs, aor1, "127.0.0.2")["state"] == "registered"  # instance A unaffected by B's failure
    assert _one(regs, aor2, "127.0.0.2")["expires"] == 3600
    assert _one(regs, aor2, "127.0.0.3")["expires"] == 300
    assert {r["flow"] for r in regs} == {f"udp:127.0.0.2:{a}", f"udp:127.0.0.3:{b}"}
    failed = _api(run, state="failed")
    assert [(r["aor"], r["flow"]) for r in failed] == [(aor1, f"udp:127.0.0.3:{b}")]
    assert len(_api(run, state="registered")) == 3
    assert _get(run, "/api/registrations", state="bogus")[0] == 400


def test_state_survives_restarting_the_endpoint(provider, make_endpoint, sipp):
    run = _endpoint(make_endpoint, provider.hostport)
    _register(sipp, run, "4930111", expires=600).assert_ok()
    assert not _register(sipp, run, "4930222", password="wrong").ok
    before = _wait_state(run, "registered")
    _wait_state(run, "failed", f"sip:4930222@{REGISTRAR}")

    run.stop()
    offline = {r["aor"]: r for r in _cli_status(run)}  # no `run`: the last recorded state
    assert offline[f"sip:4930111@{REGISTRAR}"]["state"] == "registered"
    assert offline[f"sip:4930222@{REGISTRAR}"]["state"] == "failed"

    run.restart()
    after = {r["aor"]: r for r in _api(run)}
    reg = after[f"sip:4930111@{REGISTRAR}"]
    assert reg["state"] == "registered" and reg["expires"] == 600
    assert reg["last_success"] == before["last_success"] and reg["flow"] == before["flow"]
    assert reg["seconds_until_expiry"] <= before["seconds_until_expiry"]
    assert after[f"sip:4930222@{REGISTRAR}"]["state"] == "failed"
    assert after[f"sip:4930222@{REGISTRAR}"]["last_code"] == 403


def test_trunk_added_with_cli_appears_by_name(provider, make_endpoint, sipp):
    run = _endpoint(make_endpoint, provider.hostport)
    res = run.cli("trunk", "add", "telekom", "--registrar", REGISTRAR, "--username", "4930111")
    assert res.returncode == 0, res.stderr
    _register(sipp, run, "4930111").assert_ok()
    _register(sipp, run, "4930222").assert_ok()
    reg = _wait_state(run, "registered")
    assert reg["trunk"] == "telekom"
    assert _wait_state(run, "registered", f"sip:4930222@{REGISTRAR}")["trunk"] is None
    assert [r["aor"] for r in _api(run, trunk="telekom")] == [f"sip:4930111@{REGISTRAR}"]
    row = next(line for line in run.cli("status").stdout.splitlines() if "sip:4930111@" in line)
    assert row.split()[0] == "telekom"
    assert [r["trunk"] for r in _cli_status(run, "--trunk", "telekom")] == ["telekom"]


def test_metrics_parse_and_count_a_call(provider, make_endpoint, sipp):
    run = _endpoint(make_endpoint, provider.hostport)
    port = free_port()
    _register(sipp, run, local_port=port).assert_ok()
    _wait_state(run, "registered")
    before = run.metrics()
    assert before.get("trunkproxy_kamailio_stats_up", endpoint=ENDPOINT) == 1
    assert before.get("trunkproxy_registrations", endpoint=ENDPOINT, state="registered") == 1
    assert before.get("trunkproxy_registrations", endpoint=ENDPOINT, state="failed") == 0
    labels = dict(endpoint=ENDPOINT, trunk="", aor=f"sip:4930111@{REGISTRAR}", registrar=REGISTRAR,
                  flow=f"udp:127.0.0.1:{port}", state="registered")
    assert before.get("trunkproxy_registration_state", **labels) == 1
    invites_before = before.get("trunkproxy_sip_requests_total", endpoint=ENDPOINT, method="INVITE") or 0

    pbx = sipp.background("pbx_uas", vars={"user": "4930111"}, local_port=port)
    sipp.run("provider_uac", provider.hostport, vars={"to_user": "4930111"}).assert_ok(calls=1)
    assert pbx.wait(10).successful == 1

    after = run.metrics()
    invites_after = after.get("trunkproxy_sip_requests_total", endpoint=ENDPOINT, method="INVITE")
    assert invites_after is not None and invites_after >= invites_before + 1
    byes = after.get("trunkproxy_sip_requests_total", endpoint=ENDPOINT, method="BYE")
    assert byes and byes >= 1
