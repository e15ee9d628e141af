from __future__ import annotations

import pytest

from trunkproxy.registrations.events import RegisterReply, RegisterRequest, RegistrationKey
from trunkproxy.registrations.monitor import RegistrationMonitor

NOW = 1_764_300_000.0
TELEKOM = RegistrationKey("iflo", "sip:4930123@tel.example.test", "tel.example.test", "udp:127.0.0.1:5062")
TELEKOM_B = TELEKOM._replace(flow="udp:127.0.0.1:5064")
OTHER = RegistrationKey("ifens5", "sip:4940555@other.example.test", "other.example.test", "udp:127.0.0.1:5062")

ENDPOINTS = [
    {"name": "iflo", "interface": "lo", "internal": "127.0.0.1:5060", "external": "127.0.0.1:5080",
     "transports": ["udp", "tcp"], "pid": 4242, "state": "running", "uptime_s": 12.5, "restarts": 1},
    {"name": "ifens5", "interface": "ens5", "internal": "127.0.0.1:5061", "external": "192.0.2.10:5060",
     "transports": ["udp"], "pid": None, "state": "restarting", "uptime_s": None, "restarts": 3},
]

TRUNKS = {("sip:4930123@tel.example.test", "tel.example.test"): "telekom",
          ("sip:4940555@other.example.test", "other.example.test"): "other"}


@pytest.fixture
def monitor(tmp_path):
    """A monitor (not started: no socket, no file) holding three registrations at time NOW."""
    mon = RegistrationMonitor(tmp_path, clock=lambda: NOW,
                              attribute_trunk=lambda aor, registrar: TRUNKS.get((aor, registrar)))
    mon.handle_event(RegisterRequest(TELEKOM, NOW, "a", 1, 600))
    mon.handle_event(RegisterReply(TELEKOM, NOW, "a", 1, 200, "OK", 600))
    mon.handle_event(RegisterRequest(TELEKOM_B, NOW, "b", 1, 600))
    mon.handle_event(RegisterReply(TELEKOM_B, NOW, "b", 1, 401, "Unauthorized", None))
    mon.handle_event(RegisterRequest(OTHER, NOW, "c", 1, 60))
    mon.handle_event(RegisterReply(OTHER, NOW, "c", 1, 423, "Interval Too Brief", None, 600))
    return mon
