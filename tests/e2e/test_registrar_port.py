"""Issue 15: registrations to two ports of one registrar host are two registrations (the
registration monitor's key keeps the port the PBX wrote)."""
from __future__ import annotations

import json
import urllib.request

import pytest

from .dialog import SipUa
from .procs import free_port, wait_until

pytestmark = pytest.mark.e2e


def test_two_ports_of_one_registrar_host_are_two_registrations(make_endpoint):
    registrars = [SipUa("127.0.0.1", "registrar_a"), SipUa("127.0.0.1", "registrar_b")]
    endpoint = make_endpoint(api_port=free_port())
    pbx = SipUa("127.0.0.1", "pbx", outbound=endpoint.internal_hostport)
    try:
        for registrar in registrars:
            pbx.send_register(registrar.hostport)
            register = registrar.expect_request("REGISTER")
            registrar.reply(register, 200, "OK", extra=f"Contact: {register.header('Contact')};expires=300")
            pbx.expect_status("REGISTER", 200)

        def registered() -> list[str]:
            with urllib.request.urlopen(f"{endpoint.api_url}/api/registrations", timeout=5) as response:
                return sorted(r["registrar"] for r in json.load(response)["registrations"]
                              if r["state"] == "registered")

        wait_until(lambda: len(registered()) == 2, timeout=5, message="both registrations known")
        assert registered() == sorted(r.hostport for r in registrars)
    finally:
        for party in (pbx, *registrars):
            party.close()
