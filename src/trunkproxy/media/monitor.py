"""Watches the host's rtpengine from the control plane: active sessions, what was relayed per
endpoint and direction, and calls whose media stopped one way (logged with their Call-ID)."""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from trunkproxy.media.calls import CallMedia, read_call, stopped_direction
from trunkproxy.media.ng import NgClient, NgError

log = logging.getLogger("trunkproxy.media")

_MAX_QUERIES = 2000
"""Calls queried per poll at most: the monitor must not load rtpengine's control socket more
than the calls themselves do."""


@dataclass
class MediaSnapshot:
    """What /metrics, the API and `trunkproxy status` show."""

    available: bool = False
    sessions: Counter = field(default_factory=Counter)
    """Active calls per endpoint."""
    packets: Counter = field(default_factory=Counter)
    """Relayed RTP+RTCP packets per (endpoint, direction) since trunkproxy started, as of the
    last poll (a call's traffic after its last poll is counted host-wide only)."""
    bytes: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    one_way: Counter = field(default_factory=Counter)
    """Calls found with media stopped in one direction, per endpoint."""
    host: dict = field(default_factory=dict)
    """rtpengine's own totals: relayedpackets, relayedbytes, relayedpacketerrors, sessions..."""

    def as_dict(self) -> dict:
        def per_endpoint(counter: Counter) -> dict:
            out: dict = {}
            for (endpoint, direction), value in counter.items():
                out.setdefault(endpoint, {})[direction] = value
            return out

        return {"available": self.available, "sessions": dict(self.sessions), "packets": per_endpoint(self.packets),
                "bytes": per_endpoint(self.bytes), "errors": per_endpoint(self.errors),
                "one_way_calls": dict(self.one_way), "host": self.host}


class MediaMonitor:
    def __init__(self, client: NgClient, endpoints: list[str], poll_interval_s: float, one_way_after_s: float,
                 clock=time.time) -> None:
        self.client = client
        self.endpoints = endpoints
        self.poll_interval_s = poll_interval_s
        self.one_way_after_s = one_way_after_s
        self.clock = clock
        self.snapshot = MediaSnapshot()
        self._last: dict[str, CallMedia] = {}
        self._alarmed: set[tuple[str, str]] = set()

    async def run(self) -> None:
        while True:
            try:
                await self.poll()
            except NgError as exc:
                if self.snapshot.available:
                    log.warning("media statistics unavailable: %s", exc)
                self.snapshot.available = False
            except (ValueError, TypeError, AttributeError) as exc:
                # a reply of a shape this reading does not know (another rtpengine version):
                # logged, and the monitor goes on with the next poll
                log.warning("media statistics not understood: %r", exc)
                self.snapshot.available = False
            await asyncio.sleep(self.poll_interval_s)

    async def poll(self) -> None:
        stats = (await self.client.command("statistics")).get("statistics") or {}
        calls = (await self.client.command("list", limit=_MAX_QUERIES)).get("calls") or []
        current: dict[str, CallMedia] = {}
        for call_id in calls:
            try:
                query = await self.client.command("query", call_id=call_id)
            except NgError:
                continue  # ended between list and query
            current[call_id] = read_call(call_id, query, self.endpoints)
        self._account(current, stats)

    def _account(self, current: dict[str, CallMedia], stats: dict) -> None:
        snap = self.snapshot
        snap.available = True
        totals = stats.get("totalstatistics") or {}
        now_stats = stats.get("currentstatistics") or {}
        snap.host = {"sessions": int(now_stats.get("sessionsown", 0)),
                     "relayed_packets": int(totals.get("relayedpackets", 0)),
                     "relayed_bytes": int(totals.get("relayedbytes", 0)),
                     "relayed_packet_errors": int(totals.get("relayedpacketerrors", 0)),
                     "one_way_streams": int(totals.get("onewaystreams", 0)),
                     "timeout_sessions": int(totals.get("timeoutsessions", 0))}
        snap.sessions = Counter(dict.fromkeys(self.endpoints, 0))
        snap.sessions.update(call.endpoint or "unknown" for call in current.values())
        now = self.clock()
        for call_id, call in current.items():
            endpoint = call.endpoint or "unknown"
            before = self._last.get(call_id)
            for direction, seen, old in (("pbx_to_provider", call.from_pbx, before.from_pbx if before else None),
                                         ("provider_to_pbx", call.from_provider,
                                          before.from_provider if before else None)):
                for counter, value, previous in ((snap.packets, seen.packets, old.packets if old else 0),
                                                 (snap.bytes, seen.bytes, old.bytes if old else 0),
                                                 (snap.errors, seen.errors, old.errors if old else 0)):
                    # a restarted rtpengine counts from 0 again
                    counter[(endpoint, direction)] += value - previous if value >= previous else value
            stopped = stopped_direction(call, now, self.one_way_after_s)
            if stopped and (call_id, stopped) not in self._alarmed:
                self._alarmed.add((call_id, stopped))
                snap.one_way[endpoint] += 1
                log.warning("endpoint %s: media stopped %s for %.0fs or more (Call-ID %s)", endpoint,
                            stopped.replace("_", " "), self.one_way_after_s, call_id)
        self._last = current
        self._alarmed = {(c, d) for c, d in self._alarmed if c in current}


async def read_media(control_port: int, endpoints: list[str]) -> MediaSnapshot:
    """One reading of the host's rtpengine (for `trunkproxy status`); `available` is False
    when it does not answer."""
    from trunkproxy.media.plan import CONTROL_HOST

    monitor = MediaMonitor(NgClient(CONTROL_HOST, control_port), endpoints, 0, float("inf"))
    try:
        await monitor.poll()
    except NgError:
        pass
    return monitor.snapshot


def describe(snapshot: MediaSnapshot) -> str:
    """`trunkproxy status`'s media lines."""
    if not snapshot.available:
        return "media relay: rtpengine does not answer (is `trunkproxy run` running?)"
    host = snapshot.host
    lines = [f"media relay: {host.get('sessions', 0)} active session(s); relayed {host.get('relayed_packets', 0)} "
             f"packets, {host.get('relayed_bytes', 0)} bytes, {host.get('relayed_packet_errors', 0)} errors "
             "since rtpengine started"]
    for endpoint, count in sorted(snapshot.sessions.items()):
        lines.append(f"  endpoint {endpoint}: {count} call(s) with media")
    return "\n".join(lines)
