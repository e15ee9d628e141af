"""The SQLite store: what is saved loads back identically, across a restart of the process."""
from __future__ import annotations

import sqlite3

import pytest

from trunkproxy.registrations.events import RegisterReply, RegisterRequest, RegistrationKey
from trunkproxy.registrations.state import RegistrationBook, State
from trunkproxy.registrations.store import RegistrationStore, StoreError

T0 = 1_764_300_000.0
KEY = RegistrationKey("iflo", "sip:4930123@tel.example.test", "tel.example.test", "udp:127.0.0.1:5062")


def _registered_book() -> RegistrationBook:
    book = RegistrationBook()
    book.handle(RegisterRequest(KEY, T0, "c1", 1, 60), T0, "telekom")
    book.handle(RegisterReply(KEY, T0, "c1", 1, 200, "OK", 60), T0)
    other = KEY._replace(flow="tcp:127.0.0.1:40000")
    book.handle(RegisterRequest(other, T0, "c2", 1, 60), T0)
    book.handle(RegisterReply(other, T0, "c2", 1, 423, "Interval Too Brief", None, 600), T0)
    return book


def test_save_and_load_roundtrip(tmp_path):
    book = _registered_book()
    with RegistrationStore(tmp_path / "registrations.sqlite") as store:
        store.save(book)
    with RegistrationStore(tmp_path / "registrations.sqlite") as store:
        loaded = sorted(store.load(), key=lambda r: r.key)
    assert loaded == list(book)


def test_state_survives_a_restart_and_time_passing_while_down(tmp_path):
    path = tmp_path / "state" / "registrations.sqlite"
    with RegistrationStore(path) as store:
        store.save(_registered_book())
    with RegistrationStore(path) as store:
        book = RegistrationBook(store.load())
    assert book.get(KEY).state is State.REGISTERED and book.get(KEY).trunk == "telekom"
    updates = book.tick(T0 + 61)
    assert [u.change.new for u in updates if u.change] == [State.EXPIRED]


def test_upsert_and_delete(tmp_path):
    book = _registered_book()
    with RegistrationStore(tmp_path / "r.sqlite") as store:
        store.save(book)
        store.save(book)  # saving again replaces, never duplicates
        assert len(store.load()) == 2
        store.delete([KEY])
        assert [r.key for r in store.load()] == [KEY._replace(flow="tcp:127.0.0.1:40000")]


def test_readonly_reader_sees_what_the_writer_wrote(tmp_path):
    path = tmp_path / "r.sqlite"
    writer = RegistrationStore(path)
    writer.save(_registered_book())
    with RegistrationStore(path, readonly=True) as reader:
        assert len(reader.load()) == 2
        with pytest.raises(sqlite3.Error):
            reader.save(_registered_book())
    writer.close()


def test_missing_file_readonly_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="cannot open"):
        RegistrationStore(tmp_path / "absent.sqlite", readonly=True)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StoreError, match="newer trunkproxy"):
        RegistrationStore(path)
