"""/metrics: a prometheus-client Collector over one scrape's snapshot of live state.

Nothing is counted here: registration gauges come from the monitor's state, SIP counters from
Kamailio's own statistics, restarts from the supervisor. Each scrape builds its own registry,
so the process-wide default registry is never touched.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trunkproxy.api.kamailio_stats import SipCounters
from trunkproxy.registrations.state import Registration, State

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_REG_LABELS = ["endpoint", "trunk", "aor", "registrar", "flow"]


@dataclass
class Snapshot:
    """Everything one scrape shows, gathered before rendering."""

    now: float
    registrations: list[Registration]
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, SipCounters] = field(default_factory=dict)
    """Per endpoint name; an endpoint missing here had no statistics this scrape."""
    events: dict[str, int] = field(default_factory=dict)
    """Event receiver counters: received, malformed, errors."""
    media: dict[str, Any] | None = None
    """The media monitor's snapshot (trunkproxy.media.monitor.MediaSnapshot.as_dict); None: no
    endpoint relays media."""


def _reg_labels(reg: Registration) -> list[str]:
    return [reg.key.endpoint, reg.trunk or "", reg.key.aor, reg.key.registrar, reg.key.flow]


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self._registrations()
        yield from self._endpoints()
        yield from self._sip()
        yield from self._media()
        events = CounterMetricFamily("trunkproxy_registration_events", "REGISTER events received from Kamailio",
                                     labels=["result"])
        for result, value in sorted(self.snapshot.events.items()):
            events.add_metric([result], value)
        yield events

    def _registrations(self) -> Iterator[Metric]:
        snap = self.snapshot
        endpoint_names = {e.get("name") for e in snap.endpoints} | {r.key.endpoint for r in snap.registrations}
        per_state = GaugeMetricFamily("trunkproxy_registrations", "Registrations by endpoint and state",
                                      labels=["endpoint", "state"])
        for name in sorted(n for n in endpoint_names if n):
            for state in State:
                count = sum(1 for r in snap.registrations if r.key.endpoint == name and r.state is state)
                per_state.add_metric([name, state.value], count)
        yield per_state
        current = GaugeMetricFamily("trunkproxy_registration_state",
                                    "1 for the current state of each registration", labels=[*_REG_LABELS, "state"])
        expiry = GaugeMetricFamily("trunkproxy_registration_expiry_seconds",
                                   "Seconds until the granted binding expires", labels=_REG_LABELS)
        failures = GaugeMetricFamily("trunkproxy_registration_consecutive_failures",
                                     "Failed REGISTER attempts since the last success", labels=_REG_LABELS)
        success = GaugeMetricFamily("trunkproxy_registration_last_success_timestamp_seconds",
                                    "Unix time of the last successful REGISTER", labels=_REG_LABELS)
        for reg in snap.registrations:
            labels = _reg_labels(reg)
            current.add_metric([*labels, reg.state.value], 1)
            remaining = reg.seconds_until_expiry(snap.now)
            if remaining is not None:
                expiry.add_metric(labels, remaining)
            failures.add_metric(labels, reg.consecutive_failures)
            if reg.last_success is not None:
                success.add_metric(labels, reg.last_success)
        yield from (current, expiry, failures, success)

    def _endpoints(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily("trunkproxy_kamailio_restarts", "Kamailio restarts by the supervisor",
                                       labels=["endpoint"])
        up = GaugeMetricFamily("trunkproxy_kamailio_up", "1 when the endpoint's Kamailio is running",
                               labels=["endpoint"])
        uptime = GaugeMetricFamily("trunkproxy_kamailio_uptime_seconds", "Seconds since Kamailio started",
                                   labels=["endpoint"])
        for ep in self.snapshot.endpoints:
            name = str(ep.get("name"))
            restarts.add_metric([name], int(ep.get("restarts") or 0))
            up.add_metric([name], 1 if ep.get("state") == "running" else 0)
            if ep.get("uptime_s") is not None:
                uptime.add_metric([name], float(ep["uptime_s"]))
        yield from (restarts, up, uptime)

    def _sip(self) -> Iterator[Metric]:
        L = ["endpoint"]
        stats_up = GaugeMetricFamily("trunkproxy_kamailio_stats_up",
                                     "1 when Kamailio's statistics were read for this scrape", labels=L)
        requests = CounterMetricFamily("trunkproxy_sip_requests", "SIP requests received, by method",
                                       labels=[*L, "method"])
        replies = CounterMetricFamily("trunkproxy_sip_replies",
                                      "SIP replies by class; source=received from a peer or local (sent by us)",
                                      labels=[*L, "class", "source"])
        relayed = CounterMetricFamily("trunkproxy_sip_relayed", "SIP messages relayed", labels=[*L, "kind"])
        rejected = CounterMetricFamily("trunkproxy_sip_rejected", "Requests refused with a local error reply",
                                       labels=L)
        malformed = CounterMetricFamily("trunkproxy_sip_dropped_malformed", "Malformed SIP messages dropped",
                                        labels=L)
        dropped = CounterMetricFamily("trunkproxy_sip_dropped", "SIP messages dropped by the routing logic",
                                      labels=L)
        refused = CounterMetricFamily("trunkproxy_destinations_refused",
                                      "Requests from PBXs not sent on: another tenant, the host, a forged route",
                                      labels=L)
        transactions = GaugeMetricFamily("trunkproxy_active_transactions", "Active SIP transactions", labels=L)
        dialogs = GaugeMetricFamily("trunkproxy_active_dialogs", "Active SIP dialogs", labels=L)
        names = sorted({str(e.get("name")) for e in self.snapshot.endpoints} | set(self.snapshot.counters))
        for name in names:
            c = self.snapshot.counters.get(name)
            stats_up.add_metric([name], 0 if c is None else 1)
            if c is None:
                continue
            for method, value in sorted(c.requests_by_method.items()):
                requests.add_metric([name, method], value)
            for source, by_class in (("received", c.replies_received_by_class), ("local", c.replies_local_by_class)):
                for cls, value in sorted(by_class.items()):
                    replies.add_metric([name, cls, source], value)
            relayed.add_metric([name, "request"], c.relayed_requests)
            relayed.add_metric([name, "reply"], c.relayed_replies)
            rejected.add_metric([name], c.rejected)
            malformed.add_metric([name], c.dropped_malformed)
            dropped.add_metric([name], c.dropped_by_script)
            refused.add_metric([name], c.refused_destinations)
            if c.active_transactions is not None:
                transactions.add_metric([name], c.active_transactions)
            if c.active_dialogs is not None:
                dialogs.add_metric([name], c.active_dialogs)
        yield from (stats_up, requests, replies, relayed, rejected, malformed, dropped, refused, transactions, dialogs)


    def _media(self) -> Iterator[Metric]:
        media = self.snapshot.media
        if media is None:
            return
        up = GaugeMetricFamily("trunkproxy_media_up", "1 when the media relay (rtpengine) answered its last poll")
        up.add_metric([], 1 if media.get("available") else 0)
        yield up
        sessions = GaugeMetricFamily("trunkproxy_media_sessions", "Calls with media relayed, by endpoint",
                                     labels=["endpoint"])
        for endpoint, count in sorted(media.get("sessions", {}).items()):
            sessions.add_metric([endpoint], count)
        yield sessions
        for key, name, doc in (("packets", "trunkproxy_media_packets", "RTP and RTCP packets relayed"),
                               ("bytes", "trunkproxy_media_bytes", "RTP and RTCP bytes relayed"),
                               ("errors", "trunkproxy_media_packet_errors", "Packets the relay could not forward")):
            family = CounterMetricFamily(name, f"{doc}, by endpoint and direction (as of the last poll)",
                                         labels=["endpoint", "direction"])
            for endpoint, by_direction in sorted(media.get(key, {}).items()):
                for direction, value in sorted(by_direction.items()):
                    family.add_metric([endpoint, direction], value)
            yield family
        one_way = CounterMetricFamily("trunkproxy_media_one_way_calls",
                                      "Calls whose media stopped in one direction (logged with their Call-ID)",
                                      labels=["endpoint"])
        for endpoint, count in sorted(media.get("one_way_calls", {}).items()):
            one_way.add_metric([endpoint], count)
        yield one_way
        host = media.get("host") or {}
        for key, doc in (("relayed_packets", "Packets relayed by rtpengine since it started"),
                         ("relayed_bytes", "Bytes relayed by rtpengine since it started"),
                         ("relayed_packet_errors", "Packets rtpengine could not relay since it started"),
                         ("timeout_sessions", "Calls rtpengine ended for lack of media")):
            if key in host:
                family = CounterMetricFamily(f"trunkproxy_media_host_{key}", doc)
                family.add_metric([], host[key])
                yield family


def render(snapshot: Snapshot) -> bytes:
    """The Prometheus text exposition of one snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)
