"""The endpoint's REGISTER event queue (Kamailio mqueue `tp_ev`): what it holds. Pure.

What is queued, by Python and by the native REGISTER reply route (endpoint.cfg):
`fields|restored Contact|CSeq Call-ID`. `fields` are the event's fields that do not change
between two replies to the same registration (the inside of a JSON object, holding no "|").
The middle part is whatever followed them in the memoised reading of a reply (the PBX's
Contact the native route restores in a 200; empty otherwise): the native route queues the
memo whole because cutting it off would cost a `{s.select}` scan per refresh, and the control
plane ignores it. Then the CSeq and the Call-ID of the message at hand, the Call-ID last since
a malformed one may hold anything. A value that is already a complete JSON object is passed
on as it is.

The timer process (route TICK) sends the queued values as they are, one per line, many per
datagram, after a first line `@<unix time>` (`batch_header`): the time the queued events
take. They were queued at most a tick (200 ms) before it; stamping the batch once instead of
each event saves the workers a clock read and its formatting per REGISTER. The control plane
splits each value (`split_value`) and reads its fields as the JSON event they are the inside
of (trunkproxy.registrations.events, docs/registrations.md).
"""
from __future__ import annotations

_BATCH_MARK = "@"


def queue_value(fields_json: str, cseq: int | str, call_id: str, restored: str = "") -> str:
    """A queued value, as Python builds it (the native reply route builds the same)."""
    return f"{fields_json}|{restored}|{cseq} {call_id}"


def split_value(value: str) -> tuple[str, int, str] | None:
    """(fields, CSeq, Call-ID) of a queued value; None when it is not one."""
    fields, _sep, rest = value.partition("|")
    _restored, sep, seen = rest.partition("|")
    cseq, _sp, call_id = seen.partition(" ")
    if not (fields and sep and cseq.isdigit() and call_id):
        return None
    return fields, int(cseq), call_id


def batch_header(ts: float) -> str:
    """The first line of a datagram of queued values: their time."""
    return f"{_BATCH_MARK}{ts:.3f}\n"


def batch_time(line: str) -> float | None:
    """The time a `batch_header` line states; None when `line` is not one."""
    if not line.startswith(_BATCH_MARK):
        return None
    head, _dot, tail = line[1:].partition(".")
    if not (head.isdigit() and (not tail or tail.isdigit())):
        return None
    return float(line[1:])
