"""Trunk attribution from the hosting trunk store: (aor, registrar) -> trunk name."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from trunkproxy.hosting.trunks import Trunk, TrunkStore
from trunkproxy.registrations.attribution import TrunkStoreAttribution, trunk_store_attribution
from trunkproxy.registrations.events import RegisterReply, RegisterRequest, RegistrationKey
from trunkproxy.registrations.monitor import RegistrationMonitor


class _Clock:
    """Monotonic time the test moves on (the store is looked at once a second at most)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _bump_mtime(path) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_missing_store_means_unknown(tmp_path):
    lookup = trunk_store_attribution(tmp_path)
    assert lookup("sip:4930111@tel.example.test", "tel.example.test") is None
    assert not (tmp_path / "trunks.sqlite").exists()  # looking up never creates the store


def test_username_and_registrar_host_match(tmp_path):
    store = TrunkStore(tmp_path / "trunks.sqlite")
    store.add(Trunk("telekom", "tel.example.test", username="4930111"))
    store.add(Trunk("telekom2", "TEL.example.test:5070", username="4930222"))
    store.add(Trunk("other", "sip.other.test", username="4930111"))
    lookup = trunk_store_attribution(tmp_path)
    assert lookup("sip:4930111@tel.example.test", "tel.example.test") == "telekom"
    assert lookup("sip:4930222@tel.example.test", "tel.example.test") == "telekom2"  # port, case
    assert lookup("sip:4930111@sip.other.test", "sip.other.test") == "other"
    assert lookup("sip:4930333@tel.example.test", "tel.example.test") is None
    assert lookup("sip:4930111@elsewhere.test", "elsewhere.test") is None


def test_single_trunk_without_username_for_the_registrar(tmp_path):
    store = TrunkStore(tmp_path / "trunks.sqlite")
    store.add(Trunk("anon", "tel.example.test"))
    clock = _Clock()
    lookup = TrunkStoreAttribution(store.path, clock=clock)
    assert lookup("sip:4930999@tel.example.test", "tel.example.test") == "anon"
    store.add(Trunk("anon2", "tel.example.test"))
    _bump_mtime(store.path)
    clock.now += 1.0
    assert lookup("sip:4930999@tel.example.test", "tel.example.test") is None  # ambiguous


def test_cached_until_the_file_changes(tmp_path, monkeypatch):
    store = TrunkStore(tmp_path / "trunks.sqlite")
    store.add(Trunk("telekom", "tel.example.test", username="4930111"))
    clock = _Clock()
    lookup = TrunkStoreAttribution(store.path, clock=clock)
    assert lookup("sip:4930111@tel.example.test", "tel.example.test") == "telekom"
    reads = []
    real_list = TrunkStore.list
    monkeypatch.setattr(TrunkStore, "list", lambda self: reads.append(1) or real_list(self))
    for _ in range(50):
        clock.now += 0.1
        assert lookup("sip:4930111@tel.example.test", "tel.example.test") == "telekom"
    assert reads == []  # unchanged file: no SQLite read per event
    store.edit("telekom", username="4930222")
    _bump_mtime(store.path)  # coarse file systems: make sure the change is visible
    assert lookup("sip:4930111@tel.example.test", "tel.example.test") == "telekom"  # not looked at yet
    clock.now += 1.0
    assert lookup("sip:4930111@tel.example.test", "tel.example.test") is None
    assert lookup("sip:4930222@tel.example.test", "tel.example.test") == "telekom"
    assert len(reads) == 1
    store.path.unlink()
    clock.now += 1.0
    assert lookup("sip:4930222@tel.example.test", "tel.example.test") is None


def test_unreadable_store_is_not_an_error(tmp_path):
    (tmp_path / "trunks.sqlite").write_bytes(b"this is not sqlite" * 100)
    lookup = trunk_store_attribution(tmp_path)
    assert lookup("sip:4930111@tel.example.test", "tel.example.test") is None


def test_cli_trunk_add_names_the_registration_in_status(tmp_path):
    """`trunkproxy trunk add` -> monitor attributes the next REGISTER -> `trunkproxy status` shows it."""
    state = tmp_path / "state"
    cfg = tmp_path / "trunkproxy.toml"
    cfg.write_text(f'[proxy]\nstate_dir = "{state}"\n[[endpoints]]\ninterface = "lo"\n')
    cli = [sys.executable, "-m", "trunkproxy.cli", "-c", str(cfg)]
    subprocess.run(cli + ["trunk", "add", "telekom", "--registrar", "tel.example.test",
                          "--username", "4930111"], check=True, capture_output=True, timeout=30)
    monitor = RegistrationMonitor(state, socket_path=tmp_path / "r.sock",
                                  attribute_trunk=RegistrationMonitor.trunk_store_lookup(state))
    key = RegistrationKey("iflo", "sip:4930111@tel.example.test", "tel.example.test", "udp:127.0.0.1:5062")
    from trunkproxy.registrations.store import RegistrationStore

    monitor._store = RegistrationStore(monitor.database_path)
    try:
        now = time.time()
        monitor.handle_event(RegisterRequest(key, now, "c1", 1, 3600))
        monitor.handle_event(RegisterReply(key, now, "c1", 1, 200, "OK", 3600))
    finally:
        monitor._store.close()
    out = subprocess.run(cli + ["status"], check=True, capture_output=True, text=True, timeout=30).stdout
    row = next(line for line in out.splitlines() if "4930111" in line)
    assert row.split()[0] == "telekom" and "registered" in row
    out = subprocess.run(cli + ["status", "--trunk", "telekom", "--json"], check=True, capture_output=True,
                         text=True, timeout=30).stdout
    assert '"trunk": "telekom"' in out
