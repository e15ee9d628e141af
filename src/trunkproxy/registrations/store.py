"""Registration state on disk: one SQLite file, written by `trunkproxy run`, read by anyone.

The control plane is the only writer (load once at start, upsert on every change); the CLI opens
the file read-only. WAL mode lets readers look while the writer writes.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterable

from trunkproxy.registrations.events import RegistrationKey
from trunkproxy.registrations.state import Registration, State

SCHEMA_VERSION = 1

_COLUMNS = (
    "endpoint", "aor", "registrar", "flow", "state", "trunk", "requested_expires", "granted_expires",
    "expires_at", "last_success", "last_code", "last_reason", "min_expires", "consecutive_failures",
    "challenge_pending", "pending_since", "pending_removal", "call_id", "cseq", "reply_cseq",
    "state_since", "updated_at",
)

_CREATE = """
CREATE TABLE IF NOT EXISTS registrations (
    endpoint TEXT NOT NULL, aor TEXT NOT NULL, registrar TEXT NOT NULL, flow TEXT NOT NULL,
    state TEXT NOT NULL, trunk TEXT, requested_expires INTEGER, granted_expires INTEGER,
    expires_at REAL, last_success REAL, last_code INTEGER, last_reason TEXT, min_expires INTEGER,
    consecutive_failures INTEGER NOT NULL DEFAULT 0, challenge_pending INTEGER NOT NULL DEFAULT 0,
    pending_since REAL, pending_removal INTEGER NOT NULL DEFAULT 0, call_id TEXT, cseq INTEGER,
    reply_cseq INTEGER, state_since REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (endpoint, aor, registrar, flow)
)
"""


class StoreError(Exception):
    """The state file cannot be opened or has an unknown layout; the message names the file."""


_KEY_FIELDS = {"endpoint", "aor", "registrar", "flow"}


def _to_row(reg: Registration) -> tuple:
    # getattr per column, not dataclasses.asdict: asdict deep-copies and was ~100 µs a row
    special = {"state": reg.state.value, "challenge_pending": int(reg.challenge_pending),
               "pending_removal": int(reg.pending_removal)}
    return tuple(
        getattr(reg.key, c) if c in _KEY_FIELDS else special[c] if c in special else getattr(reg, c)
        for c in _COLUMNS
    )


def _from_row(row: sqlite3.Row) -> Registration:
    values = {c: row[c] for c in _COLUMNS}
    key = RegistrationKey(values.pop("endpoint"), values.pop("aor"), values.pop("registrar"), values.pop("flow"))
    values.update(state=State(values["state"]), challenge_pending=bool(values["challenge_pending"]),
                  pending_removal=bool(values["pending_removal"]))
    return Registration(key=key, **values)


class RegistrationStore:
    """The SQLite file holding every registration; `readonly` for the CLI."""

    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(path)
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open registration state ({exc})") from exc
        self._db.row_factory = sqlite3.Row

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: written by a newer trunkproxy (schema {version}); upgrade or move it away")
        with self._db:
            self._db.execute(_CREATE)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def load(self) -> list[Registration]:
        try:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM registrations").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read registration state ({exc})") from exc
        return [_from_row(row) for row in rows]

    def save(self, registrations: Iterable[Registration]) -> None:
        placeholders = ", ".join("?" for _ in _COLUMNS)
        with self._db:
            self._db.executemany(
                f"INSERT OR REPLACE INTO registrations ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
                [_to_row(r) for r in registrations],
            )

    def delete(self, keys: Iterable[RegistrationKey]) -> None:
        with self._db:
            self._db.executemany(
                "DELETE FROM registrations WHERE endpoint=? AND aor=? AND registrar=? AND flow=?",
                [tuple(k) for k in keys],
            )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "RegistrationStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
