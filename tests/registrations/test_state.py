"""The pure registration state machine, scenario by scenario (issue 3), then the table as a whole."""
from __future__ import annotations

import random

import pytest

from trunkproxy.registrations.events import RegisterReply, RegisterRequest, RegistrationKey
from trunkproxy.registrations.state import (
    FAILURES,
    TRANSITIONS,
    Input,
    RegistrationBook,
    State,
)

T0 = 1_764_300_000.0
KEY = RegistrationKey("iflo", "sip:4930123@tel.example.test", "tel.example.test", "udp:127.0.0.1:5062")


def req(expires: int | None = 3600, cseq: int = 1, key: RegistrationKey = KEY, call_id: str = "c1") -> RegisterRequest:
    return RegisterRequest(key=key, ts=T0, call_id=call_id, cseq=cseq, expires=expires)


def rep(code: int, reason: str = "", cseq: int = 1, expires: int | None = None, key: RegistrationKey = KEY,
        call_id: str = "c1", min_expires: int | None = None, local: bool = False) -> RegisterReply:
    return RegisterReply(key=key, ts=T0, call_id=call_id, cseq=cseq, code=code, reason=reason,
                         expires=expires, min_expires=min_expires, local=local)


def feed(book: RegistrationBook, *steps, start: float = T0, trunk: str | None = None):
    """Feed (event) or (event, now) steps; returns the state changes in order."""
    changes = []
    now = start
    for step in steps:
        event, now = step if isinstance(step, tuple) else (step, now)
        update = book.handle(event, now, trunk)
        if update is not None and update.change is not None:
            changes.append(update.change)
    return changes


def digest_register(book: RegistrationBook, granted: int = 600, now: float = T0, cseq: int = 1, trunk=None):
    return feed(book, req(3600, cseq), rep(401, "Unauthorized", cseq), req(3600, cseq + 1),
                rep(200, "OK", cseq + 1, expires=granted), start=now, trunk=trunk)


def test_successful_registration_shows_registered_with_granted_expiry():
    book = RegistrationBook()
    changes = digest_register(book, granted=600, trunk="telekom")
    reg = book.get(KEY)
    assert reg.state is State.REGISTERED
    assert reg.granted_expires == 600 and reg.expires_at == T0 + 600
    assert reg.seconds_until_expiry(T0 + 100) == 500
    assert (reg.last_code, reg.last_reason, reg.last_success) == (200, "OK", T0)
    assert reg.consecutive_failures == 0 and reg.trunk == "telekom"
    assert [(c.old, c.new) for c in changes] == [
        (None, State.REGISTERING), (State.REGISTERING, State.CHALLENGED), (State.CHALLENGED, State.REGISTERED)]
    assert changes[-1].code == 200 and changes[-1].trunk == "telekom"


def test_granted_expiry_falls_back_to_requested_then_default():
    book = RegistrationBook()
    feed(book, req(1800), rep(200, "OK", expires=None))
    assert book.get(KEY).granted_expires == 1800
    other = RegistrationBook()
    feed(other, req(None), rep(200, "OK", expires=None))
    assert other.get(KEY).granted_expires == 3600


def test_wrong_password_is_failed_not_endless_challenged():
    book = RegistrationBook()
    changes = feed(book, req(cseq=1), rep(401, "Unauthorized", 1), req(cseq=2), rep(401, "Unauthorized", 2))
    reg = book.get(KEY)
    assert reg.state is State.FAILED
    assert (reg.last_code, reg.last_reason, reg.consecutive_failures) == (401, "Unauthorized", 1)
    assert changes[-1].old is State.CHALLENGED and changes[-1].new is State.FAILED
    # The PBX keeps retrying with the same wrong password: failed stays failed, failures count up.
    changes = feed(book, req(cseq=3), rep(401, "Unauthorized", 3), req(cseq=4), rep(407, "Proxy Auth", 4))
    assert changes == [] and book.get(KEY).state is State.FAILED
    assert book.get(KEY).consecutive_failures == 2
    # Password fixed.
    changes = feed(book, req(cseq=5), rep(401, "Unauthorized", 5), req(cseq=6), rep(200, "OK", 6, expires=60))
    assert [(c.old, c.new) for c in changes] == [(State.FAILED, State.REGISTERED)]
    assert book.get(KEY).consecutive_failures == 0


def test_provider_not_answering_is_failed_timeout():
    book = RegistrationBook()
    changes = feed(book, req(), rep(408, "Request Timeout", local=True))
    reg = book.get(KEY)
    assert (reg.state, reg.last_code, reg.last_reason) == (State.FAILED, 408, "timeout")
    assert changes[-1].reason == "timeout"


def test_provider_408_is_a_rejection_with_its_own_reason():
    book = RegistrationBook()
    feed(book, req(), rep(408, "Request Timeout"))
    assert (book.get(KEY).state, book.get(KEY).last_reason) == (State.FAILED, "Request Timeout")


def test_no_final_reply_at_all_times_out_on_tick_and_the_late_408_is_ignored():
    book = RegistrationBook(reply_timeout=64)
    feed(book, req())
    assert book.next_deadline() == T0 + 64
    assert book.tick(T0 + 63) == []
    (update,) = book.tick(T0 + 64)
    assert update.change.new is State.FAILED and update.change.reason == "timeout"
    assert book.get(KEY).consecutive_failures == 1
    assert book.handle(rep(408, "Request Timeout", local=True), T0 + 70) is None
    assert book.get(KEY).consecutive_failures == 1


def test_short_expiry_not_refreshed_becomes_expired():
    book = RegistrationBook()
    feed(book, req(5), rep(200, "OK", expires=5))
    assert book.next_deadline() == T0 + 5
    assert book.tick(T0 + 4.9) == []
    (update,) = book.tick(T0 + 5)
    assert (update.change.old, update.change.new) == (State.REGISTERED, State.EXPIRED)
    assert update.change.code is None
    reg = book.get(KEY)
    assert reg.state is State.EXPIRED and reg.seconds_until_expiry(T0 + 6) is None
    assert reg.last_success == T0  # still shows when it last worked
    assert book.tick(T0 + 100) == []


def test_refresh_in_time_keeps_registered_without_state_changes():
    book = RegistrationBook()
    digest_register(book, granted=60)
    changes = feed(book, (req(60, cseq=3), T0 + 50), (rep(401, "Unauthorized", 3), T0 + 50),
                   (req(60, cseq=4), T0 + 50), (rep(200, "OK", 4, expires=60), T0 + 50))
    assert changes == []
    assert book.get(KEY).expires_at == T0 + 110
    assert book.tick(T0 + 100) == []


def test_deregister_becomes_unregistered():
    book = RegistrationBook()
    digest_register(book)
    assert feed(book, req(0, cseq=3)) == []  # the binding holds until the provider confirms
    assert book.get(KEY).state is State.REGISTERED
    changes = feed(book, rep(200, "OK", 3, expires=None))
    reg = book.get(KEY)
    assert (reg.state, reg.expires_at, reg.granted_expires) == (State.UNREGISTERED, None, 0)
    assert (changes[0].old, changes[0].new) == (State.REGISTERED, State.UNREGISTERED)


def test_reply_granting_zero_is_unregistered():
    book = RegistrationBook()
    feed(book, req(3600), rep(200, "OK", expires=0))
    assert book.get(KEY).state is State.UNREGISTERED


def test_unregistered_is_forgotten_after_a_while():
    book = RegistrationBook(forget_after=3600)
    feed(book, req(0), rep(200, "OK", expires=0))
    assert book.tick(T0 + 3599) == []
    (update,) = book.tick(T0 + 3600)
    assert update.registration is None and book.get(KEY) is None


def test_deregister_of_unknown_registration_is_recorded_on_its_reply():
    book = RegistrationBook()
    assert feed(book, req(0)) == [] and book.get(KEY) is None
    feed(book, rep(200, "OK", expires=0))
    assert book.get(KEY).state is State.UNREGISTERED


def test_interval_too_brief_shows_min_expires():
    book = RegistrationBook()
    feed(book, req(60), rep(423, "Interval Too Brief", min_expires=600))
    reg = book.get(KEY)
    assert (reg.state, reg.last_code, reg.min_expires) == (State.FAILED, 423, 600)
    assert reg.last_reason == "Interval Too Brief (Min-Expires 600)"
    feed(book, req(600, cseq=2), rep(200, "OK", 2, expires=600))
    assert (book.get(KEY).state, book.get(KEY).min_expires) == (State.REGISTERED, None)


def test_rejected_refresh_is_failed_and_binding_expiry_stays_visible():
    book = RegistrationBook()
    digest_register(book, granted=100)
    feed(book, (req(100, cseq=3), T0 + 50), (rep(403, "Forbidden", 3), T0 + 50))
    reg = book.get(KEY)
    assert reg.state is State.FAILED and reg.seconds_until_expiry(T0 + 60) == 40
    updates = book.tick(T0 + 100)
    assert [u.change for u in updates if u.change] == []  # failed stays failed
    assert book.get(KEY).expires_at is None


def test_two_instances_and_two_trunks_are_kept_apart():
    pbx_a = KEY
    pbx_b = KEY._replace(flow="udp:127.0.0.1:5064")
    trunk2 = RegistrationKey("iflo", "sip:4940555@other.example.test", "other.example.test", "udp:127.0.0.1:5062")
    book = RegistrationBook()
    feed(book, req(key=pbx_a), rep(200, "OK", expires=600, key=pbx_a), trunk="telekom")
    feed(book, req(key=pbx_b, call_id="c2"), req(key=pbx_b, call_id="c2", cseq=2),
         rep(401, "Unauthorized", 2, key=pbx_b, call_id="c2"), trunk="telekom")
    feed(book, req(key=trunk2, call_id="c3"), rep(403, "Forbidden", key=trunk2, call_id="c3"), trunk="other")
    assert book.get(pbx_a).state is State.REGISTERED
    assert book.get(pbx_b).state is State.CHALLENGED
    assert book.get(trunk2).state is State.FAILED
    assert [r.key for r in book.select(trunk="telekom")] == sorted([pbx_a, pbx_b])
    assert [r.key for r in book.select(state=State.FAILED)] == [trunk2]
    assert book.select(endpoint="ifens5") == []


def test_provisional_duplicate_and_stale_replies_change_nothing():
    book = RegistrationBook()
    feed(book, req(cseq=1), rep(401, "Unauthorized", 1))
    assert book.handle(rep(100, "Trying", 1), T0) is None
    assert book.handle(rep(401, "Unauthorized", 1), T0) is None  # duplicate: not a second challenge
    assert book.get(KEY).state is State.CHALLENGED
    feed(book, req(cseq=2))
    assert book.handle(rep(401, "Unauthorized", 1), T0) is None  # stale: older CSeq
    feed(book, rep(200, "OK", 2, expires=60))
    assert book.get(KEY).state is State.REGISTERED


def test_pbx_restarting_its_cseq_on_the_same_call_id_is_not_stale():
    book = RegistrationBook()
    feed(book, req(cseq=5), rep(200, "OK", 5, expires=60))
    feed(book, req(cseq=1), rep(403, "Forbidden", 1))
    assert book.get(KEY).state is State.FAILED


def test_trunk_attribution_is_kept_when_a_later_lookup_knows_nothing():
    book = RegistrationBook()
    feed(book, req(), trunk="telekom")
    feed(book, rep(200, "OK", expires=60), trunk=None)
    assert book.get(KEY).trunk == "telekom"


def test_as_dict_is_the_public_view():
    book = RegistrationBook()
    digest_register(book, granted=600, trunk="telekom")
    view = book.get(KEY).as_dict(T0 + 10)
    assert view["state"] == "registered" and view["seconds_until_expiry"] == 590
    assert {"endpoint", "trunk", "aor", "registrar", "flow", "expires", "last_success", "last_code",
            "last_reason", "consecutive_failures", "min_expires"} <= set(view)


# --- the table as a whole -------------------------------------------------------------------------

def test_every_state_input_pair_is_in_the_table():
    for state in [None, *State]:
        assert set(TRANSITIONS[state]) == set(Input), state
        for target in TRANSITIONS[state].values():
            assert target is None or isinstance(target, State)
    # Only the pseudo-state "not yet known" may refuse to create a registration.
    assert all(t is not None for s in State for t in TRANSITIONS[s].values())


def test_success_always_registers_and_failures_always_fail():
    for state in [None, *State]:
        assert TRANSITIONS[state][Input.OK] is State.REGISTERED
        assert TRANSITIONS[state][Input.REMOVED] is State.UNREGISTERED
        for failure in FAILURES:
            assert TRANSITIONS[state][failure] is State.FAILED


def _random_event(rng: random.Random, cseq: int):
    if rng.random() < 0.45:
        return req(rng.choice([0, 60, 3600, None]), cseq=cseq)
    code = rng.choice([100, 200, 200, 401, 407, 403, 404, 408, 423, 500, 503, 603])
    return rep(code, "x", cseq=cseq, expires=rng.choice([None, 0, 30, 600]),
               min_expires=600 if code == 423 else None, local=code == 408 and rng.random() < 0.5)


@pytest.mark.parametrize("seed", range(20))
def test_random_walks_keep_the_registration_consistent(seed):
    rng = random.Random(seed)
    book = RegistrationBook(reply_timeout=64)
    now, cseq = T0, 1
    for _ in range(300):
        now += rng.choice([0, 1, 5, 40, 700])
        if rng.random() < 0.2:
            while book.tick(now):
                pass
            deadline = book.next_deadline()
            assert deadline is None or deadline > now  # nothing overdue after a tick
        else:
            cseq += rng.choice([0, 1, 1, 1])
            book.handle(_random_event(rng, cseq), now)
        reg = book.get(KEY)
        if reg is None:
            continue
        assert reg.consecutive_failures >= 0
        if reg.state is State.REGISTERED:
            assert reg.expires_at is not None
        if reg.state is State.UNREGISTERED:
            assert reg.expires_at is None
        if reg.state is State.FAILED:
            assert reg.consecutive_failures >= 1
        if reg.state is State.CHALLENGED:
            assert reg.last_code in (401, 407) or reg.pending_since is not None
