"""Kamailio's own statistics (RPC `stats.get_statistics all`) turned into our SIP counters.

Pure. We take Kamailio's counters rather than counting twice. Two result shapes are accepted:
`stats.get_statistics all` gives a list of "group:name = value" strings, `stats.fetch all` a dict
{"group.name": "value"}. What the counters mean (checked against Kamailio 5.6):

- requests by method: `core:rcv_requests_<method>` (the method list is Kamailio's);
- replies received by class: `core:rcv_replies_<N>xx`;
- replies sent locally by class: `sl:<code>_replies` + `sl:<N>xx_replies` (sl keeps a bucket per
  common code and one "other" bucket per class);
- relayed: requests = `tmx:UAS_transactions` (stateful) + `core:fwd_requests` (stateless),
  replies = `tmx:rpl_relayed` + `core:fwd_replies`;
- rejected: stateless error replies sent (`sl:` buckets of class 3xx-6xx);
- dropped malformed: `core:bad_msg_hdr` + `core:bad_URIs_rcvd`; dropped by the script:
  `core:drop_requests` + `core:drop_replies`;
- refused destinations: `script:tp_refused_destinations`, requests from PBXs the endpoint refused
  to send on (another tenant, the host, a forged in-dialog route: docs/routing.md);
- transactions: `tmx:active_transactions`; dialogs: `trunkproxy:active_dialogs`, the items of the
  endpoint's `tp_dlg` htable (a Call-ID is added when the ACK to a 2xx passes, removed when the BYE
  does; see docs/routing.md), else `dialog:active_dialogs` where the dialog module is loaded.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# "group:name = value", e.g. "core:rcv_requests_invite = 5"
_LINE = re.compile(r"^\s*(?P<group>[\w.-]+):(?P<name>[\w.-]+)\s*=\s*(?P<value>-?\d+)\s*$")
_SL_BUCKET = re.compile(r"^(?P<code>[1-6](?:\d\d|xx))_replies$")
_RCV_CLASS = re.compile(r"^rcv_replies_(?P<cls>[1-6])xx$")
_RCV_METHOD = re.compile(r"^rcv_requests_(?P<method>[a-z]+)$")


def parse_statistics(result: Any) -> dict[str, int]:
    """{"group:name": value} from either RPC result shape; lines that do not parse are skipped."""
    stats: dict[str, int] = {}
    if isinstance(result, dict):
        for key, value in result.items():
            group, _, name = str(key).partition(".")
            try:
                stats[f"{group}:{name}"] = int(value)
            except (TypeError, ValueError):
                continue
    elif isinstance(result, list):
        for line in result:
            match = _LINE.match(str(line))
            if match:
                stats[f"{match['group']}:{match['name']}"] = int(match["value"])
    return stats


@dataclass
class SipCounters:
    """One endpoint's SIP counters, as exported on /metrics."""

    requests_by_method: dict[str, int] = field(default_factory=dict)
    replies_received_by_class: dict[str, int] = field(default_factory=dict)
    replies_local_by_class: dict[str, int] = field(default_factory=dict)
    relayed_requests: int = 0
    relayed_replies: int = 0
    rejected: int = 0
    dropped_malformed: int = 0
    dropped_by_script: int = 0
    refused_destinations: int = 0
    active_transactions: int | None = None
    active_dialogs: int | None = None


def sip_counters(stats: dict[str, int]) -> SipCounters:
    counters = SipCounters()
    for key, value in stats.items():
        group, _, name = key.partition(":")
        if group == "core":
            if m := _RCV_METHOD.match(name):
                counters.requests_by_method[m["method"].upper()] = value
            elif m := _RCV_CLASS.match(name):
                counters.replies_received_by_class[f"{m['cls']}xx"] = value
        elif group == "sl" and (m := _SL_BUCKET.match(name)):
            cls = f"{m['code'][0]}xx"
            counters.replies_local_by_class[cls] = counters.replies_local_by_class.get(cls, 0) + value
    get = stats.get
    counters.relayed_requests = get("tmx:UAS_transactions", 0) + get("core:fwd_requests", 0)
    counters.relayed_replies = get("tmx:rpl_relayed", 0) + get("core:fwd_replies", 0)
    counters.rejected = sum(v for c, v in counters.replies_local_by_class.items() if c[0] in "3456")
    counters.dropped_malformed = get("core:bad_msg_hdr", 0) + get("core:bad_URIs_rcvd", 0)
    counters.dropped_by_script = get("core:drop_requests", 0) + get("core:drop_replies", 0)
    counters.refused_destinations = get("script:tp_refused_destinations", 0)
    counters.active_transactions = get("tmx:active_transactions")
    counters.active_dialogs = get("trunkproxy:active_dialogs", get("dialog:active_dialogs"))
    return counters
