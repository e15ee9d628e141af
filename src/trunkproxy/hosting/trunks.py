"""Per-instance trunk settings in SQLite: what the instance admin may set.

Secrets are stored (the PJSIP auth section needs them) but `Trunk.__repr__` and `public()`
never show them. The database file is created 0600.
"""
from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from trunkproxy.routing.addresses import parse_hostport

__all__ = ["Trunk", "TrunkError", "TrunkStore", "DEFAULT_INTERFACE", "MASK"]

DEFAULT_INTERFACE = "default"
"""Interface setting meaning: no proxy from the trunk itself (sipproxy.json / Consul may still add one)."""
MASK = "***"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_INTERFACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_USER = re.compile(r"^[^\s;\[\]@]{0,128}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trunks (
    name TEXT PRIMARY KEY,
    registrar TEXT NOT NULL,
    username TEXT NOT NULL DEFAULT '',
    secret TEXT NOT NULL DEFAULT '',
    transport TEXT NOT NULL DEFAULT 'udp',
    interface TEXT NOT NULL DEFAULT 'default',
    fallback TEXT
);
"""
_COLUMNS = ("name", "registrar", "username", "secret", "transport", "interface", "fallback")


class TrunkError(ValueError):
    """A trunk setting that cannot be stored; the message says what to do."""


@dataclass(frozen=True)
class Trunk:
    name: str
    """Section name in the PBX configuration (`telekom`)."""
    registrar: str
    """Registrar `host[:port]` (`tel.t-online.de`): the key looked up in sipproxy.json."""
    username: str = ""
    secret: str = field(default="", repr=False)
    transport: str = "udp"
    interface: str = DEFAULT_INTERFACE
    """`default` (no proxy) or an interface endpoint: `ens5` or its endpoint name `ifens5`."""
    fallback: str | None = None
    """Another trunk to use when this one fails (written as a comment; the dialplan uses it)."""

    @property
    def registrar_host(self) -> str:
        return parse_hostport(self.registrar)[0].lower()

    @property
    def registrar_port(self) -> int | None:
        return parse_hostport(self.registrar, default_port=0)[1] or None

    def public(self) -> dict[str, Any]:
        """The trunk for listings: the secret masked."""
        data = asdict(self)
        data["secret"] = MASK if self.secret else ""
        return data

    def validated(self) -> "Trunk":
        if not _NAME.match(self.name):
            raise TrunkError(f"trunk name {self.name!r}: use letters, digits, '_', '.', '-' (it becomes a PJSIP section name)")
        try:
            host, _ = parse_hostport(self.registrar)
        except ValueError as exc:
            raise TrunkError(f"trunk {self.name}: registrar {exc}; write host[:port], e.g. tel.t-online.de") from exc
        if not host or any(c in host for c in " ;/@"):
            raise TrunkError(f"trunk {self.name}: registrar {self.registrar!r} is not host[:port]; e.g. tel.t-online.de")
        if self.transport not in ("udp", "tcp"):
            raise TrunkError(f"trunk {self.name}: transport {self.transport!r}; use udp or tcp")
        if not _INTERFACE.match(self.interface):
            raise TrunkError(f"trunk {self.name}: interface {self.interface!r}; use 'default' or an interface such as ens5")
        if not _USER.match(self.username):
            raise TrunkError(f"trunk {self.name}: username may not contain spaces, ';', '@' or brackets")
        if "\n" in self.secret or "\r" in self.secret:
            raise TrunkError(f"trunk {self.name}: secret may not contain line breaks")
        if self.fallback is not None and self.fallback == self.name:
            raise TrunkError(f"trunk {self.name}: a trunk cannot be its own fallback")
        return self


class TrunkStore:
    """SQLite file of trunks; every method opens and closes its own connection (safe across processes)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.executescript(_SCHEMA)
        return conn

    def list(self) -> list[Trunk]:
        if not self.path.exists():
            return []
        with _closing(self._connect()) as conn:
            rows = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM trunks ORDER BY name").fetchall()
        return [Trunk(*row) for row in rows]

    def get(self, name: str) -> Trunk | None:
        return next((t for t in self.list() if t.name == name), None)

    def add(self, trunk: Trunk) -> Trunk:
        trunk = trunk.validated()
        with _closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("SELECT 1 FROM trunks WHERE name = ?", (trunk.name,)).fetchone():
                    raise TrunkError(f"trunk {trunk.name} exists; change it with `trunkproxy trunk edit {trunk.name}`")
                self._check_fallback(conn, trunk)
                conn.execute(f"INSERT INTO trunks ({', '.join(_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             tuple(getattr(trunk, c) for c in _COLUMNS))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return trunk

    def edit(self, name: str, **changes: Any) -> Trunk:
        with _closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM trunks WHERE name = ?", (name,)).fetchone()
                if row is None:
                    raise TrunkError(f"no trunk named {name}; see `trunkproxy trunk list`")
                trunk = replace(Trunk(*row), **changes).validated()
                self._check_fallback(conn, trunk)
                conn.execute(f"UPDATE trunks SET {', '.join(c + ' = ?' for c in _COLUMNS[1:])} WHERE name = ?",
                             tuple(getattr(trunk, c) for c in _COLUMNS[1:]) + (name,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return trunk

    def remove(self, name: str) -> None:
        with _closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if not conn.execute("SELECT 1 FROM trunks WHERE name = ?", (name,)).fetchone():
                    raise TrunkError(f"no trunk named {name}; see `trunkproxy trunk list`")
                users = [r[0] for r in conn.execute("SELECT name FROM trunks WHERE fallback = ?", (name,))]
                if users:
                    raise TrunkError(f"trunk {name} is the fallback of {', '.join(users)}; "
                                     f"change that first (`trunkproxy trunk edit {users[0]} --no-fallback`)")
                conn.execute("DELETE FROM trunks WHERE name = ?", (name,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _check_fallback(conn: sqlite3.Connection, trunk: Trunk) -> None:
        if trunk.fallback is None:
            return
        if not conn.execute("SELECT 1 FROM trunks WHERE name = ?", (trunk.fallback,)).fetchone():
            raise TrunkError(f"trunk {trunk.name}: fallback trunk {trunk.fallback} does not exist; add it first")


class _closing:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


def iter_public(trunks: list[Trunk]) -> Iterator[dict[str, Any]]:
    for trunk in trunks:
        yield trunk.public()
