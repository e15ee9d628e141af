"""The endpoint's REGISTER event queue (Kamailio mqueue `tp_ev`): what it holds. Pure.

What is queued, by Python and by the native REGISTER reply route (endpoint.cfg):
`fields|CSeq time Call-ID`. `fields` are the event's fields that do not change between two
replies to the same registration (the inside of a JSON object, holding no "|"); then the
CSeq, time and Call-ID of the message at hand. A value that is already a complete JSON object
is passed on as it is.

The timer process (route TICK) sends the queued values as they are, one per line, many per
datagram; the control plane splits each (`split_value`) and reads its fields as the JSON
event they are the inside of (trunkproxy.registrations.events, docs/registrations.md).
"""
from __future__ import annotations


def queue_value(fields_json: str, cseq: int | str, ts: float | str, call_id: str) -> str:
    """A queued value, as Python builds it (the native reply route builds the same)."""
    return f"{fields_json}|{cseq} {ts} {call_id}"


def split_value(value: str) -> tuple[str, int, float, str] | None:
    """(fields, CSeq, time, Call-ID) of a queued value; None when it is not one."""
    fields, _sep, seen = value.partition("|")
    cseq, _sp, rest = seen.partition(" ")
    ts, _sp, call_id = rest.partition(" ")
    if not (fields and cseq.isdigit() and _is_number(ts) and call_id):
        return None
    return fields, int(cseq), float(ts), call_id


def _is_number(text: str) -> bool:
    head, _dot, tail = text.partition(".")
    return head.isdigit() and (not tail or tail.isdigit())
