"""The registration monitor of `trunkproxy run`: receiver + state machine + store + timer + log.

The single writer of registration state: every Kamailio process of every endpoint sends its
REGISTER events here; the state survives restarts in `<state_dir>/registrations.sqlite`.
Each state change is one log line on logger `trunkproxy.registrations`, as key=value fields:

    registration endpoint=ifens5 trunk=telekom aor=sip:4930123@tel.t-online.de
    registrar=tel.t-online.de flow=udp:10.0.3.7:5060 old=challenged new=registered code=200 reason=OK
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from trunkproxy.registrations import paths
from trunkproxy.registrations.attribution import trunk_store_attribution
from trunkproxy.registrations.events import RegisterEvent
from trunkproxy.registrations.receiver import EventReceiver
from trunkproxy.registrations.state import Registration, RegistrationBook, State, StateChange, Update
from trunkproxy.registrations.store import RegistrationStore

log = logging.getLogger("trunkproxy.registrations")

TrunkLookup = Callable[[str, str], "str | None"]
"""(aor, registrar) -> trunk name, or None when no trunk is known for it. Must be cheap."""

MAX_TIMER_DELAY = 30.0
FLUSH_DELAY = 1.0
"""Seconds a changed registration may wait in memory before it is written to the store."""
"""Re-check at least this often, so a wall-clock jump cannot delay expiry for long."""


def _quote(value: Any) -> str:
    text = "-" if value is None else str(value)
    if not text or any(c in text for c in ' "=\\'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def change_fields(change: StateChange) -> dict[str, Any]:
    """The fields of a state change's log line (also attached to the record as `registration`)."""
    return {
        "endpoint": change.key.endpoint, "trunk": change.trunk, "aor": change.key.aor,
        "registrar": change.key.registrar, "flow": change.key.flow,
        "old": change.old.value if change.old else None, "new": change.new.value,
        "code": change.code, "reason": change.reason,
    }


def format_change(change: StateChange) -> str:
    """The structured log line for one state change: `registration key=value ...`."""
    fields = change_fields(change)
    return "registration " + " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


class RegistrationMonitor:
    """Owns every registration's state. `await start()` inside `trunkproxy run`, `await stop()` at exit.

    `attribute_trunk(aor, registrar)` names the trunk of a registration (default: unknown).
    `clock` returns wall-clock seconds (injectable for tests).
    """

    trunk_store_lookup = staticmethod(trunk_store_attribution)
    """`trunk_store_lookup(state_dir)`: the attribution `trunkproxy run` uses (`<state_dir>/trunks.sqlite`)."""

    def __init__(self, state_dir: Path | str, *, socket_path: Path | str | None = None,
                 database_path: Path | str | None = None, attribute_trunk: TrunkLookup | None = None,
                 clock: Callable[[], float] = time.time, reply_timeout: float = 64.0,
                 forget_after: float = 86400.0,
                 listeners: Sequence[Callable[[RegisterEvent], None]] = ()) -> None:
        self.socket_path = Path(socket_path) if socket_path else paths.socket_path(state_dir)
        self.database_path = Path(database_path) if database_path else paths.database_path(state_dir)
        self.attribute_trunk = attribute_trunk
        self.listeners = tuple(listeners)
        """Also told of every event (e.g. the keepalive sender learns providers from them)."""
        self.clock = clock
        self.book = RegistrationBook(reply_timeout=reply_timeout, forget_after=forget_after)
        self.receiver = EventReceiver(self.socket_path, self.handle_event)
        self._store: RegistrationStore | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # write-behind: a refresh that changes no state (the common case: thousands of trunks
        # re-registering) must not cost a disk commit each; such rows are written together at
        # most FLUSH_DELAY later. State changes are written at once.
        self._pending_save: dict[Any, Registration] = {}
        self._pending_delete: set[Any] = set()
        self._flush_handle: asyncio.TimerHandle | None = None
        self.started_at: float | None = None
        self._running = False

    async def start(self) -> None:
        """Load the persisted state, catch up on time that passed, bind the event socket."""
        self._store = RegistrationStore(self.database_path)
        self.book = RegistrationBook(self._store.load(), reply_timeout=self.book.reply_timeout,
                                     forget_after=self.book.forget_after)
        log.info("monitoring registrations: %d loaded from %s", len(self.book), self.database_path)
        try:
            await self.receiver.start()
        except Exception:
            self._store.close()
            self._store = None
            raise
        self._running = True
        self.started_at = self.clock()
        self.tick()

    async def stop(self) -> None:
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.receiver.stop()
        self.flush()
        if self._store is not None:
            self._store.close()
            self._store = None

    def handle_event(self, event: RegisterEvent) -> None:
        """Apply one REGISTER event (called by the receiver; usable directly)."""
        for listener in self.listeners:
            listener(event)
        trunk = self._trunk_of(event.key.aor, event.key.registrar)
        update = self.book.handle(event, self.clock(), trunk)
        if update is None:
            return
        self._apply([update])
        deadline = self.book.deadline_of(update.registration) if update.registration is not None else None
        if deadline is not None:
            # only this registration changed: its deadline is the only one that can be earlier
            # than the armed timer (a full scan per event was O(registrations))
            self._rearm(deadline)

    def tick(self) -> None:
        """Expire and time out what is due now (runs by itself on a timer once started)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._apply(self.book.tick(self.clock()))
        self._rearm()

    def registrations(self, *, endpoint: str | None = None, trunk: str | None = None,
                      state: State | None = None) -> list[Registration]:
        return self.book.select(endpoint=endpoint, trunk=trunk, state=state)

    def snapshot(self, **filters: Any) -> list[dict[str, Any]]:
        """The registrations as the API shows them (same filters as `registrations`)."""
        now = self.clock()
        return [r.as_dict(now) for r in self.registrations(**filters)]

    def _trunk_of(self, aor: str, registrar: str) -> str | None:
        if self.attribute_trunk is None:
            return None
        try:
            return self.attribute_trunk(aor, registrar)
        except Exception:  # noqa: BLE001 - attribution is a nicety, never a reason to lose an event
            log.exception("trunk lookup failed for %s at %s", aor, registrar)
            return None

    def _apply(self, updates: list[Update]) -> None:
        if not updates:
            return
        for update in updates:
            if update.change is not None:
                log.info(format_change(update.change), extra={"registration": change_fields(update.change)})
        if self._store is None:
            return
        for update in updates:
            if update.registration is not None:
                self._pending_save[update.key] = update.registration
                self._pending_delete.discard(update.key)
            else:
                self._pending_save.pop(update.key, None)
                self._pending_delete.add(update.key)
        if not self._running or any(u.change is not None for u in updates):
            self.flush()  # state changes are on disk at once (`trunkproxy status` reads it)
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Write the pending changes to the store (one transaction)."""
        self._flush_handle = None
        if self._store is None or not (self._pending_save or self._pending_delete):
            return
        saves, deletes = list(self._pending_save.values()), list(self._pending_delete)
        self._pending_save.clear()
        self._pending_delete.clear()
        try:
            self._store.save(saves)
            self._store.delete(deletes)
        except Exception:  # noqa: BLE001 - keep monitoring in memory even if the disk fails
            log.exception("cannot persist registration state to %s", self.database_path)

    def _rearm(self, deadline: float | None = None) -> None:
        """Arm the timer for `deadline` if it comes before the armed one; without an argument,
        for the book's earliest deadline (after a tick)."""
        if not self._running:
            return  # not started (tests, tools): the caller ticks
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = self.book.next_deadline()
        now = self.clock()
        delay = MAX_TIMER_DELAY if deadline is None else min(MAX_TIMER_DELAY, max(0.0, deadline - now))
        at = now + delay
        if self._timer is not None and self._timer_at is not None and self._timer_at <= at:
            return  # the armed timer comes first anyway; tick() re-arms from the book
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_later(delay + 0.01, self.tick)