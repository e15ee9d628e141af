"""The registration state machine: REGISTER events in, registration state and state changes out.

Pure: no I/O, no clock (`now` is an argument, wall-clock seconds). Everything that decides a
registration's state lives in this file; the table `TRANSITIONS` is the whole story and
docs/registrations.md is generated from it (`transitions_markdown()`).

An event is first classified into an `Input` (which may depend on the registration, e.g. a
second 401 in a row is `RECHALLENGE`), then `TRANSITIONS[state][input]` gives the next state.
A registration that does not exist yet is in the pseudo-state `None`; a `None` target means
"do not create it".
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Iterable, Iterator, NamedTuple

from trunkproxy.registrations.events import RegisterEvent, RegisterReply, RegisterRequest, RegistrationKey

DEFAULT_EXPIRES = 3600
"""Granted expiry assumed when a 200 states none and the request asked for none (RFC 3261 10.2.1.1)."""


class State(StrEnum):
    REGISTERING = "registering"
    """A REGISTER is on its way; no binding known yet."""
    REGISTERED = "registered"
    """The provider accepted the binding and it has not expired."""
    CHALLENGED = "challenged"
    """The provider asked for credentials (401/407); waiting for the PBX's authenticated retry."""
    FAILED = "failed"
    """The provider refused, the credentials were refused, or no answer came (`timeout`)."""
    EXPIRED = "expired"
    """The granted expiry passed without a refresh."""
    UNREGISTERED = "unregistered"
    """The binding was removed (`Expires: 0`)."""


class Input(StrEnum):
    REQUEST = "request"
    """REGISTER relayed, asking for a binding."""
    REMOVE = "remove"
    """REGISTER relayed with expires 0 (de-register)."""
    OK = "ok"
    """2xx granting an expiry > 0."""
    REMOVED = "removed"
    """2xx to a de-register, or granting expiry 0."""
    CHALLENGE = "challenge"
    """401/407 when the previous reply was not a challenge."""
    RECHALLENGE = "rechallenge"
    """401/407 straight after a 401/407: the credentials were refused (wrong password)."""
    TOO_BRIEF = "too_brief"
    """423 Interval Too Brief (its Min-Expires is kept)."""
    REJECTED = "rejected"
    """Any other final reply >= 300 from the provider."""
    TIMEOUT = "timeout"
    """No answer from the provider: Kamailio's local 408, or no final reply seen in time."""
    EXPIRY = "expiry"
    """The granted expiry passed (from `tick`)."""


_R, _OK, _C, _F, _X, _U = (State.REGISTERING, State.REGISTERED, State.CHALLENGED,
                           State.FAILED, State.EXPIRED, State.UNREGISTERED)

# fmt: off
TRANSITIONS: dict[State | None, dict[Input, State | None]] = {
    #              REQUEST REMOVE  OK    REMOVED CHALLENGE RECHALLENGE TOO_BRIEF REJECTED TIMEOUT EXPIRY
    None:  dict(zip(Input, (_R,  None, _OK, _U,     _C,       _F,         _F,       _F,      _F,     None))),
    _R:    dict(zip(Input, (_R,  _R,   _OK, _U,     _C,       _F,         _F,       _F,      _F,     _R))),
    _OK:   dict(zip(Input, (_OK, _OK,  _OK, _U,     _OK,      _F,         _F,       _F,      _F,     _X))),
    _C:    dict(zip(Input, (_C,  _C,   _OK, _U,     _C,       _F,         _F,       _F,      _F,     _C))),
    _F:    dict(zip(Input, (_F,  _F,   _OK, _U,     _F,       _F,         _F,       _F,      _F,     _F))),
    _X:    dict(zip(Input, (_R,  _X,   _OK, _U,     _C,       _F,         _F,       _F,      _F,     _X))),
    _U:    dict(zip(Input, (_R,  _U,   _OK, _U,     _C,       _F,         _F,       _F,      _F,     _U))),
}
# fmt: on
"""Why some cells are what they are:
- a refresh of a `registered` binding (and its 401) keeps `registered`: the binding holds;
- `failed` stays `failed` through retries and challenges until a 2xx: the operator keeps seeing it;
- a de-register of a registration never seen is not recorded until its 2xx (`REMOVED`)."""

FAILURES = frozenset({Input.RECHALLENGE, Input.TOO_BRIEF, Input.REJECTED, Input.TIMEOUT})
"""Inputs that count as a consecutive failure."""


class Registration(NamedTuple):
    """Everything known about one registration (its key: endpoint, aor, registrar, flow).

    A NamedTuple rather than a frozen dataclass: every REGISTER event makes a new one, and
    `_replace` costs a fraction of `dataclasses.replace`."""

    key: RegistrationKey
    state: State
    trunk: str | None = None
    requested_expires: int | None = None
    granted_expires: int | None = None
    expires_at: float | None = None
    """When the granted binding runs out (None: no binding known)."""
    last_success: float | None = None
    last_code: int | None = None
    last_reason: str | None = None
    min_expires: int | None = None
    """From the last 423 Interval Too Brief, until the next 2xx."""
    consecutive_failures: int = 0
    challenge_pending: bool = False
    pending_since: float | None = None
    """When the REGISTER still waiting for its final reply was relayed."""
    pending_removal: bool = False
    call_id: str | None = None
    cseq: int | None = None
    reply_cseq: int | None = None
    """CSeq of the last final reply seen on `call_id` (duplicates and stale replies are ignored)."""
    state_since: float = 0.0
    updated_at: float = 0.0

    def seconds_until_expiry(self, now: float) -> float | None:
        if self.expires_at is None:
            return None
        return max(0.0, self.expires_at - now)

    def as_dict(self, now: float) -> dict[str, Any]:
        """The public view (API, CLI `--json`)."""
        remaining = self.seconds_until_expiry(now)
        return {
            "endpoint": self.key.endpoint, "trunk": self.trunk, "aor": self.key.aor,
            "registrar": self.key.registrar, "flow": self.key.flow, "state": self.state.value,
            "expires": self.granted_expires, "expires_at": self.expires_at,
            "seconds_until_expiry": None if remaining is None else round(remaining, 1),
            "last_success": self.last_success, "last_code": self.last_code,
            "last_reason": self.last_reason, "min_expires": self.min_expires,
            "consecutive_failures": self.consecutive_failures,
            "state_since": self.state_since, "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class StateChange:
    """One state change: what the structured log line says."""

    key: RegistrationKey
    trunk: str | None
    old: State | None
    new: State
    input: Input
    code: int | None
    reason: str | None
    at: float


@dataclass(frozen=True, slots=True)
class Update:
    """What changed in the book: `registration` None means it was forgotten."""

    key: RegistrationKey
    registration: Registration | None
    change: StateChange | None = None


def classify(event: RegisterEvent, current: Registration | None) -> Input | None:
    """Which input an event is for this registration; None for provisional replies."""
    if isinstance(event, RegisterRequest):
        return Input.REMOVE if event.expires == 0 else Input.REQUEST
    code = event.code
    if code < 200:
        return None
    if code < 300:
        removing = current is not None and current.pending_removal
        if event.expires == 0 or (event.expires is None and removing):
            return Input.REMOVED
        return Input.OK
    if code in (401, 407):
        return Input.RECHALLENGE if current is not None and current.challenge_pending else Input.CHALLENGE
    if code == 423:
        return Input.TOO_BRIEF
    if code == 408 and event.local:
        return Input.TIMEOUT
    return Input.REJECTED


def _reply_reason(reply: RegisterReply) -> str:
    if reply.local and reply.code == 408:
        return "timeout"
    reason = reply.reason or ""
    if reply.code == 423 and reply.min_expires is not None:
        reason = f"{reason} (Min-Expires {reply.min_expires})".strip()
    return reason


def _is_stale(reply: RegisterReply, current: Registration | None) -> bool:
    """A reply older than, or a duplicate of, one already seen on the same Call-ID."""
    if current is None or current.call_id != reply.call_id:
        return False
    if current.cseq is not None and reply.cseq < current.cseq:
        return True
    return current.reply_cseq is not None and reply.cseq <= current.reply_cseq


# The _after_* helpers return the changed fields, not a new Registration: `_commit` builds the
# new one in a single `_replace` (the monitor runs this for every REGISTER event).
def _after_request(reg: Registration, req: RegisterRequest, now: float) -> dict[str, Any]:
    return dict(
        requested_expires=req.expires, pending_since=now, pending_removal=req.expires == 0,
        call_id=req.call_id, cseq=req.cseq, reply_cseq=_earlier_reply(reg, req),
    )


def _earlier_reply(reg: Registration, req: RegisterRequest) -> int | None:
    """Keep the last reply's CSeq only while it belongs to an earlier request on the same Call-ID."""
    if req.call_id == reg.call_id and reg.reply_cseq is not None and reg.reply_cseq < req.cseq:
        return reg.reply_cseq
    return None


def _after_reply(reg: Registration, reply: RegisterReply, what: Input, now: float) -> dict[str, Any]:
    changes: dict[str, Any] = dict(
        last_code=reply.code, last_reason=_reply_reason(reply), pending_since=None,
        challenge_pending=what is Input.CHALLENGE, call_id=reply.call_id, reply_cseq=reply.cseq,
    )
    if reply.call_id != reg.call_id:
        changes["cseq"] = reply.cseq
    if what is Input.OK:
        granted = reply.expires if reply.expires is not None else (reg.requested_expires or DEFAULT_EXPIRES)
        changes.update(granted_expires=granted, expires_at=now + granted, last_success=now,
                       consecutive_failures=0, min_expires=None, pending_removal=False)
    elif what is Input.REMOVED:
        changes.update(granted_expires=0, expires_at=None, last_success=now, consecutive_failures=0,
                       min_expires=None, pending_removal=False)
    elif what in FAILURES:
        changes["consecutive_failures"] = reg.consecutive_failures + 1
        if what is Input.TOO_BRIEF:
            changes["min_expires"] = reply.min_expires
    return changes


def _timed_out(reg: Registration) -> dict[str, Any]:
    # The late local 408 for this REGISTER, if it still comes, is then a duplicate and ignored.
    return dict(last_code=408, last_reason="timeout", pending_since=None, challenge_pending=False,
                reply_cseq=reg.cseq, consecutive_failures=reg.consecutive_failures + 1)


class RegistrationBook:
    """All registrations of a host, keyed by (endpoint, aor, registrar, flow)."""

    def __init__(self, registrations: Iterable[Registration] = (), *,
                 reply_timeout: float = 64.0, forget_after: float = 86400.0) -> None:
        self.reply_timeout = reply_timeout
        """A REGISTER with no final reply after this long is a `timeout` (64*T1, Kamailio sends 408 sooner)."""
        self.forget_after = forget_after
        """`unregistered` registrations are dropped after this long without an event."""
        self._regs: dict[RegistrationKey, Registration] = {r.key: r for r in registrations}

    def __len__(self) -> int:
        return len(self._regs)

    def __iter__(self) -> Iterator[Registration]:
        return iter(sorted(self._regs.values(), key=lambda r: r.key))

    def get(self, key: RegistrationKey) -> Registration | None:
        return self._regs.get(key)

    def select(self, *, endpoint: str | None = None, trunk: str | None = None,
               state: State | None = None) -> list[Registration]:
        return [r for r in self if (endpoint is None or r.key.endpoint == endpoint)
                and (trunk is None or r.trunk == trunk) and (state is None or r.state is state)]

    def handle(self, event: RegisterEvent, now: float, trunk: str | None = None) -> Update | None:
        """Apply one event; None when it changes nothing (provisional, stale, duplicate)."""
        current = self._regs.get(event.key)
        if isinstance(event, RegisterReply) and _is_stale(event, current):
            return None
        what = classify(event, current)
        if what is None:
            return None
        old = current.state if current is not None else None
        new = TRANSITIONS[old][what]
        if new is None:
            return None
        reg = current or Registration(key=event.key, state=new, state_since=now)
        if isinstance(event, RegisterRequest):
            changes = _after_request(reg, event, now)
        else:
            changes = _after_reply(reg, event, what, now)
        return self._commit(reg, changes, old, new, what, now, trunk)

    def tick(self, now: float) -> list[Update]:
        """Time passes: bindings expire, unanswered REGISTERs time out, old de-registrations go."""
        updates: list[Update] = []
        for reg in list(self):
            if reg.pending_since is not None and now >= reg.pending_since + self.reply_timeout:
                new = TRANSITIONS[reg.state][Input.TIMEOUT]
                assert new is not None
                updates.append(self._commit(reg, _timed_out(reg), reg.state, new, Input.TIMEOUT, now, None))
            elif reg.expires_at is not None and now >= reg.expires_at:
                new = TRANSITIONS[reg.state][Input.EXPIRY]
                assert new is not None
                updates.append(self._commit(reg, {"expires_at": None}, reg.state, new, Input.EXPIRY, now, None))
            elif reg.state is State.UNREGISTERED and now >= reg.updated_at + self.forget_after:
                del self._regs[reg.key]
                updates.append(Update(key=reg.key, registration=None))
        return updates

    def next_deadline(self) -> float | None:
        """The earliest time `tick` has something to do, or None (looks at every registration)."""
        return min(filter(None, map(self.deadline_of, self._regs.values())), default=None)

    def deadline_of(self, reg: Registration) -> float | None:
        """The earliest time `tick` has something to do for `reg`, or None."""
        deadlines = []
        if reg.pending_since is not None:
            deadlines.append(reg.pending_since + self.reply_timeout)
        if reg.expires_at is not None:
            deadlines.append(reg.expires_at)
        if reg.state is State.UNREGISTERED:
            deadlines.append(reg.updated_at + self.forget_after)
        return min(deadlines, default=None)

    def _commit(self, reg: Registration, changes: dict[str, Any], old: State | None, new: State, what: Input,
                now: float, trunk: str | None) -> Update:
        changed = old is not new
        changes["state"], changes["updated_at"] = new, now
        if trunk is not None:
            changes["trunk"] = trunk
        if changed:
            changes["state_since"] = now
        reg = reg._replace(**changes)
        self._regs[reg.key] = reg
        change = None
        if changed:
            code = reg.last_code if what is not Input.EXPIRY else None
            reason = reg.last_reason if what is not Input.EXPIRY else "not refreshed before expiry"
            if what in (Input.REQUEST, Input.REMOVE):
                code, reason = None, "REGISTER relayed"
            change = StateChange(key=reg.key, trunk=reg.trunk, old=old, new=new, input=what,
                                 code=code, reason=reason, at=now)
        return Update(key=reg.key, registration=reg, change=change)


def transitions_markdown() -> str:
    """`TRANSITIONS` as a Markdown table (rows: current state, columns: input)."""
    head = "| state \\ input | " + " | ".join(i.value for i in Input) + " |"
    rule = "|" + "---|" * (len(Input) + 1)
    rows = []
    for state, row in TRANSITIONS.items():
        name = "(new)" if state is None else state.value
        cells = ["—" if row[i] is None else row[i].value for i in Input]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows])
