"""Which trunk a registration belongs to: `(aor, registrar) -> trunk name`, from the trunk store.

The monitor calls the lookup for every REGISTER event, so it must be cheap: the trunk store
(`<state_dir>/trunks.sqlite`, written by `trunkproxy trunk add|edit|remove`) is read once into a
dict and read again only when the file's modification time, size or inode changes (looked at
once a second at most); answers are remembered until then. A missing or
unreadable store means "no trunk known" (the registration shows `-`), never an error.

Matching: the AOR's user part and the registrar host (case-insensitive, port ignored) against
each trunk's `username` and `registrar` host. When no trunk has that username, a trunk for that
registrar host *without* a username is used if it is the only one.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from trunkproxy.routing.addresses import parse_hostport
from trunkproxy.routing.sipuri import parse_uri

log = logging.getLogger("trunkproxy.registrations")

TRUNKS_NAME = "trunks.sqlite"
CHECK_INTERVAL_S = 1.0


def _split_aor(aor: str) -> tuple[str, str]:
    """(user, host) of an AOR such as `sip:4930111@tel.example.test` (lower-case host)."""
    uri = parse_uri(aor)
    if uri is not None:
        user, hostport = uri.user, uri.hostport
    else:
        user, _, hostport = aor.split(":", 1)[-1].rpartition("@")
        hostport = hostport.split(";", 1)[0]
    return user.split(":", 1)[0], _host_of(hostport) if hostport else ""


def _host_of(registrar: str) -> str:
    try:
        return parse_hostport(registrar)[0].lower()
    except ValueError:
        return registrar.strip().lower()


class TrunkStoreAttribution:
    """Callable `(aor, registrar) -> trunk name | None` backed by a trunk store file."""

    def __init__(self, path: Path | str, clock=time.monotonic) -> None:
        self.path = Path(path)
        self._clock = clock
        self._next_check = 0.0
        self._signature: tuple[int, int, int] | None = None
        self._by_user: dict[tuple[str, str], str] = {}
        self._userless: dict[str, list[str]] = {}
        self._answers: dict[tuple[str, str], str | None] = {}

    def _reload_if_changed(self) -> None:
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_INTERVAL_S
        try:
            st = os.stat(self.path)
        except OSError:
            self._signature = None
            self._by_user, self._userless, self._answers = {}, {}, {}
            return
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self._signature:
            return
        from trunkproxy.hosting.trunks import TrunkStore

        try:
            trunks = TrunkStore(self.path).list()
        except Exception as exc:  # noqa: BLE001 - a broken store must not break monitoring
            log.warning("cannot read trunk store %s for trunk names: %s", self.path, exc)
            return  # keep what we had; retried on the next change of the file
        by_user: dict[tuple[str, str], str] = {}
        userless: dict[str, list[str]] = {}
        for trunk in trunks:
            try:
                host = trunk.registrar_host
            except ValueError:
                continue
            if trunk.username:
                by_user.setdefault((trunk.username, host), trunk.name)
            else:
                userless.setdefault(host, []).append(trunk.name)
        self._by_user, self._userless, self._signature = by_user, userless, signature
        self._answers = {}

    def __call__(self, aor: str, registrar: str) -> str | None:
        self._reload_if_changed()
        key = (aor, registrar)
        try:
            return self._answers[key]
        except KeyError:
            pass
        if len(self._answers) > 100_000:
            self._answers = {}
        name = self._answers[key] = self._lookup(aor, registrar)
        return name

    def _lookup(self, aor: str, registrar: str) -> str | None:
        user, aor_host = _split_aor(aor)
        host = _host_of(registrar) if registrar else aor_host
        name = self._by_user.get((user, host))
        if name is not None:
            return name
        if aor_host and aor_host != host:
            name = self._by_user.get((user, aor_host))
            if name is not None:
                return name
        candidates = self._userless.get(host) or []
        return candidates[0] if len(candidates) == 1 else None


def trunk_store_attribution(state_dir: Path | str) -> TrunkStoreAttribution:
    """The lookup for `RegistrationMonitor(attribute_trunk=...)`: `<state_dir>/trunks.sqlite`."""
    return TrunkStoreAttribution(Path(state_dir) / TRUNKS_NAME)
