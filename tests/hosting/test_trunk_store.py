"""The instance's trunk store: SQLite, validated, secrets stored but never shown."""
from __future__ import annotations

import stat

import pytest

from trunkproxy.hosting.trunks import MASK, Trunk, TrunkError, TrunkStore


def test_add_list_edit_remove(tmp_path):
    store = TrunkStore(tmp_path / "t.sqlite")
    assert store.list() == []
    store.add(Trunk(name="telekom", registrar="tel.t-online.de", username="u", secret="pw"))
    store.add(Trunk(name="backup", registrar="sipgate.de:5060", interface="ens6"))
    assert [t.name for t in store.list()] == ["backup", "telekom"]
    edited = store.edit("telekom", interface="ens5", transport="tcp", fallback="backup")
    assert (edited.interface, edited.transport, edited.fallback) == ("ens5", "tcp", "backup")
    assert TrunkStore(tmp_path / "t.sqlite").get("telekom") == edited  # persisted
    with pytest.raises(TrunkError, match="fallback of telekom"):
        store.remove("backup")
    store.edit("telekom", fallback=None)
    store.remove("backup")
    assert [t.name for t in store.list()] == ["telekom"]


def test_file_is_private_and_secret_never_shown(tmp_path):
    store = TrunkStore(tmp_path / "t.sqlite")
    trunk = store.add(Trunk(name="telekom", registrar="tel.t-online.de", username="u", secret="pw-VERY-secret"))
    assert stat.S_IMODE((tmp_path / "t.sqlite").stat().st_mode) == 0o600
    assert "pw-VERY-secret" not in repr(trunk)
    assert trunk.public()["secret"] == MASK
    assert store.get("telekom").secret == "pw-VERY-secret"  # the PBX needs it in the auth section


@pytest.mark.parametrize("trunk,fragment", [
    (Trunk(name="bad name", registrar="r.example"), "trunk name"),
    (Trunk(name="t", registrar="r.example:99999"), "port"),
    (Trunk(name="t", registrar="sip:r.example"), "registrar"),
    (Trunk(name="t", registrar="r.example", transport="tls"), "udp or tcp"),
    (Trunk(name="t", registrar="r.example", interface="ens 5"), "interface"),
    (Trunk(name="t", registrar="r.example", secret="a\nb"), "line breaks"),
    (Trunk(name="t", registrar="r.example", fallback="t"), "own fallback"),
    (Trunk(name="t", registrar="r.example", fallback="missing"), "does not exist"),
])
def test_invalid_trunks_are_refused(tmp_path, trunk, fragment):
    store = TrunkStore(tmp_path / "t.sqlite")
    with pytest.raises(TrunkError, match=fragment):
        store.add(trunk)
    assert store.list() == []


def test_duplicates_and_missing_names(tmp_path):
    store = TrunkStore(tmp_path / "t.sqlite")
    store.add(Trunk(name="t", registrar="r.example"))
    with pytest.raises(TrunkError, match="exists"):
        store.add(Trunk(name="t", registrar="r.example"))
    with pytest.raises(TrunkError, match="no trunk named x"):
        store.edit("x", interface="ens5")
    with pytest.raises(TrunkError, match="no trunk named x"):
        store.remove("x")
