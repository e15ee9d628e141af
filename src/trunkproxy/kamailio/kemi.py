"""Thin KSR adapter: gathers message facts, calls the pure decisions, applies the result.

Loaded by Kamailio's app_python3 (Debian's python3, stdlib only) through kemi_entry.py and
called from the generated native config with python_exec("method"), for what the native
decision cache does not know yet; what it decides is stored there for the native route to
replay (docs/routing.md, "Decision cache"). A method must never return 0 there (the native
script would exit), so every entry point returns 1.
"""
from __future__ import annotations

import functools
import json
import os
import socket as _socket
import time
import traceback

import KSR  # type: ignore[import-not-found]  # provided by app_python3

from trunkproxy.kamailio.relay import apply_decision, fail_over, fails_over, header, next_hops, replace_header
from trunkproxy.routing import decide, destinations
from trunkproxy.routing.event_queue import batch_header, queue_value
from trunkproxy.routing.register_memo import (Registration, parse_registration, registration_value, reply_memo,
                                               request_memo)
from trunkproxy.routing.registration_events import aor_of, granted_expires, registrar_of, requested_expires
from trunkproxy.routing.settings import EndpointSettings, settings_from_json
from trunkproxy.routing.tokens import Flow, flow_of_text
from trunkproxy.routing.warmup import rehearse

_RELOAD_CHECK_S = 1.0
# Memoised decisions and replies live in shared memory (htables tp_dec, tp_rep) for a day;
# a flood of distinct requests could grow them without end within that time: a worker
# clears a table after storing this many entries into it.
_NATIVE_CACHE_STORES = 10000
_EVENT_QUEUE = "tp_ev"  # what is queued: trunkproxy.routing.event_queue
REFUSED_STAT = "tp_refused_destinations"  # statistics module: script:tp_refused_destinations


def _request_entry(method):
    """An unexpected error must not silently drop a request (app_python3's default): log it,
    answer 500 and keep serving."""

    @functools.wraps(method)
    def guarded(self, msg):
        try:
            return method(self, msg)
        except Exception:  # noqa: BLE001 - the edge: anything else would lose the message
            KSR.err(f"trunkproxy: {method.__name__} failed: {traceback.format_exc()}\n")
            if KSR.pv.get("$rm") != "ACK":
                KSR.sl.sl_send_reply(500, "Server Internal Error")
            return 1

    return guarded


def _reply_entry(method):
    """A failed rewrite of a reply is logged; the reply is still relayed as it came."""

    @functools.wraps(method)
    def guarded(self, msg):
        try:
            return method(self, msg)
        except Exception:  # noqa: BLE001
            KSR.err(f"trunkproxy: {method.__name__} failed: {traceback.format_exc()}\n")
            return 1

    return guarded


class Router:
    def __init__(self, settings_path: str) -> None:
        self._path = settings_path
        self._mtime = 0.0
        self._next_check = 0.0
        self.settings: EndpointSettings = self._load()
        self._events: _socket.socket | None = None
        # the settings the native decision cache holds decisions for; all processes fork
        # from this one, with these settings
        self._published_mtime = self._mtime
        self._second_reset_at: float | None = None
        self._stores = {"tp_dec": 0, "tp_rep": 0, "tp_ok": 0}

    # -- settings ---------------------------------------------------------------------
    def _load(self) -> EndpointSettings:
        with open(self._path, encoding="utf-8") as fh:
            text = fh.read()
        self._mtime = os.stat(self._path).st_mtime_ns
        return settings_from_json(text)

    def _current(self) -> EndpointSettings:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + _RELOAD_CHECK_S
            try:
                if os.stat(self._path).st_mtime_ns != self._mtime:
                    self.settings = self._load()
                    KSR.info(f"trunkproxy: settings reloaded from {self._path}\n")
            except (OSError, ValueError, KeyError) as exc:
                KSR.err(f"trunkproxy: keeping previous settings, cannot reload {self._path}: {exc}\n")
        return self.settings

    # -- Kamailio entry points ----------------------------------------------------------
    def child_init(self, rank: int) -> int:
        if rank <= 0:
            return 0  # not a SIP worker (main, timers, RPC): no message waits for it
        try:
            rehearse(self.settings)  # before the first message, not during it (routing.warmup)
        except Exception:  # noqa: BLE001 - a rehearsal must never keep a worker from starting
            KSR.err(f"trunkproxy: warm-up failed: {traceback.format_exc()}\n")
        return 0

    def ksr_request_route(self, msg) -> int:
        return 1

    def ksr_reply_route(self, msg) -> int:
        return 1

    def ksr_onsend_route(self, msg) -> int:
        return 1

    @_request_entry
    def initial_from_pbx(self, msg) -> int:
        """A request the native decision cache did not know (route INITIAL_FROM_PBX)."""
        settings = self._current()
        method = KSR.pv.get("$rm")
        preset = KSR.pv.get("$du") if KSR.isdsturiset() > 0 else None
        ruri = KSR.pv.get("$ru")
        source = _source()
        contact = header("Contact")
        register = method == "REGISTER"
        path_ok = register and decide.supports_path(header("Supported"))
        decision = decide.route_from_pbx(
            settings, method, ruri, source, contact, preset, KSR.is_myself_ruri() > 0, path_ok)
        if isinstance(decision, decide.Relay):
            expires = requested_expires(contact, header("Expires")) if register else None
            registration = None
            if register:
                registrar = registrar_of(ruri) or KSR.pv.get("$rd")
                to_uri = KSR.pv.get("$tu") or ""
                registration = registration_value(Registration(
                    str(source), registrar, decision.send_socket, to_uri, decision.alternates))
                # what the reply and failure routes need, kept in the transaction; the native
                # route sets the same for the REGISTERs it replays
                if registration:
                    KSR.pv.sets("$avp(tp_rid)", registration)
                self._emit(_registration_fields("register_request", settings, registrar, source, to_uri,
                                                expires=expires))
            # repeats of a relayed request are replayed by the native route (tp_dec), not asked again
            if expires != 0 and contact != "*":
                key = KSR.pv.get("$var(dk)") or ""
                if not register:
                    self._memoise(key, decision)
                elif registration:
                    self._memoise_register(key, decision, registration)
        apply_decision(decision)
        return 1

    def _memoise(self, native_key: str, decision: decide.Relay) -> None:
        """Store the decision for route INITIAL_FROM_PBX to replay, unless a field holds the
        separator or the route could not replay it."""
        if not native_key or decision.ruri is not None or decision.record_route == "":
            return
        if decision.alternates and not decision.dst_uri:
            return
        socket_name = self.settings.socket_name_of(decision.send_socket)
        if socket_name is None:
            return
        fields = (socket_name, decision.contact or "", decision.record_route or "",
                  decision.dst_uri or "", " ".join(decision.alternates))
        if not any("|" in f for f in fields):
            self._store("tp_dec", native_key, "|".join(fields))

    def _memoise_register(self, native_key: str, decision: decide.Relay, registration: str) -> None:
        """Store a REGISTER's decision for route REGISTER_FROM_PBX (routing.register_memo)."""
        if not native_key or decision.ruri is not None or not (decision.dst_uri and decision.contact):
            return
        socket_name = self.settings.socket_name_of(decision.send_socket)
        if socket_name is None:
            return
        value = request_memo(socket_name, decision.dst_uri, registration, decision.contact, decision.path)
        if value is not None:
            self._store("tp_dec", native_key, value)

    def _memoise_from_provider(self, decision: decide.Decision, remaining_route: str | None) -> None:
        """Store a decision on a request from outside for route FROM_PROVIDER_CACHED."""
        if not isinstance(decision, decide.Relay) or decision.ruri is None or decision.dst_uri is None:
            return
        if decision.on_failure or decision.alternates or decision.contact or decision.path:
            return  # not something route FROM_PROVIDER_CACHED replays
        socket_name = self.settings.socket_name_of(decision.send_socket)
        if socket_name is None:
            return
        flags = ((1 if decision.record_route is not None else 0) | (2 if decision.on_reply == "reply_from_pbx" else 0)
                 | (4 if remaining_route is not None else 0))
        fields = (socket_name, decision.dst_uri, decision.ruri, remaining_route or "", decision.record_route or "",
                  str(flags))
        if not any("|" in f for f in fields):
            self._store("tp_dec", KSR.pv.get("$var(dk)") or "", "|".join(fields))

    def _store_ok(self, key: str) -> None:
        """Remember in tp_ok what Python allowed (a destination, with an in-dialog route)."""
        self._count_store("tp_ok")
        KSR.htable.sht_seti("tp_ok", key, 1)

    def _count_store(self, table: str) -> None:
        self._stores[table] += 1
        if self._stores[table] > _NATIVE_CACHE_STORES:
            self._stores[table] = 0
            KSR.htable.sht_reset(table)

    def _store(self, table: str, key: str, value: str) -> None:
        if not key:
            return
        self._count_store(table)
        KSR.htable.sht_sets(table, key, value)

    @_request_entry
    def initial_from_provider(self, msg) -> int:
        settings = self._current()
        source = KSR.pv.get("$si")
        known = source in settings.pinned_ips or KSR.htable.sht_get("tp_known", source) is not None
        ruri_is_local = KSR.is_myself_ruri() > 0
        ruri, top_route, remaining = _provider_route_facts(settings)  # drops our own Path entry
        decision = decide.route_from_provider(settings, KSR.pv.get("$rm"), ruri, top_route, ruri_is_local, known)
        self._memoise_from_provider(decision, remaining)
        apply_decision(decision)
        return 1

    @_request_entry
    def in_dialog_from_provider(self, msg) -> int:
        settings = self._current()
        ruri, top_route, remaining = _provider_route_facts(settings)  # drops our own Record-Route entries
        method = KSR.pv.get("$rm")
        decision = decide.route_in_dialog_from_provider(settings, method, ruri, top_route)
        self._memoise_from_provider(decision, remaining)
        if isinstance(decision, decide.Relay) and method == "BYE":
            KSR.htable.sht_rm("tp_dlg", KSR.pv.get("$ci"))  # the dialog ends (active dialogs gauge)
        apply_decision(decision)
        return 1

    def check_destination(self, msg) -> int:
        """onsend_route, a case the native cache has not allowed yet: may this request from a
        PBX be sent where it is going (trunkproxy.routing.destinations), and, in a dialog,
        along its Route (decide.route_set_refusal)? Yes: $var(tp_sv) = 1, remembered in
        tp_ok under the native key. No: logged, counted, $var(tp_refused) = this message's
        id (the route that relayed it answers 403: route NOT_RELAYED), and dropped."""
        try:
            settings = self._current()
            sent_from = (KSR.pv.get("$sndfrom(ip)"), KSR.pv.get("$sndfrom(port)"))
            via_external = any((s.host, s.port) == sent_from for s in settings.external.values())
            ip, port, hop = KSR.pv.get("$sndto(ip)"), KSR.pv.get("$sndto(port)"), KSR.pv.get("$nh(d)")
            source = KSR.pv.get("$si")
            # the native key: $sndto(ip):$sndto(port), |$nh(d) when the allow-list has names,
            # and in a dialog |$si|$(hdr(Route)[*]) (which reads <null> without a Route)
            key = f"{ip}:{port}|{hop}" if settings.destinations.allowed_names else f"{ip}:{port}"
            why = destinations.outbound_refusal(settings.destinations, via_external, ip, port, hop)
            if why is None and KSR.isflagset(destinations.FLT_IN_DIALOG) > 0:
                route = header("Route")
                why = decide.route_set_refusal(settings, route, source)
                key = f"{key}|{source}|{'<null>' if route is None else route}"
            if why is None:
                KSR.pv.seti("$var(tp_sv)", 1)
                self._store_ok(key)
                return 1
            KSR.pv.seti("$var(tp_refused)", KSR.pv.get("$mi"))
            KSR.warn(f"trunkproxy: refused {KSR.pv.get('$rm')} from {source}:{KSR.pv.get('$sp')} "
                     f"to {ip}:{port} ({hop}): {why}\n")
            KSR.statistics.update_stat(REFUSED_STAT, 1)
        except Exception:  # noqa: BLE001 - the edge: refuse rather than send unchecked
            KSR.err(f"trunkproxy: check_destination failed: {traceback.format_exc()}\n")
        return 1

    @_reply_entry
    def reply_from_pbx(self, msg) -> int:
        """18x/2xx from a PBX to a provider's dialog-forming request: hide the PBX's Contact."""
        contact = header("Contact")
        if not contact:
            return 1
        settings = self._current()
        socket = settings.external.get(KSR.pv.get("$T_req($pr)") or "udp")
        if socket is None:
            return 1
        # the flow the request was delivered to: where the PBX surely listens
        flow = decide.flow_of_hop(KSR.pv.get("$T_req($du)") or "") or _source()
        new_value = _hide_contact(settings, contact, flow, socket)
        if new_value is not None:
            self._store("tp_dec", KSR.pv.get("$var(dk)") or "", new_value)  # for route reply_from_pbx
        return 1

    @_reply_entry
    def register_reply(self, msg) -> int:
        """Final reply to a REGISTER that the native reply cache did not know (1xx never get
        here; the native route marked the provider as known): restore the PBX's Contact,
        report the outcome, memoise both for the same reply to the same registration."""
        settings = self._current()
        code = int(KSR.pv.get("$rs"))
        flow, reg, kept = _registration_of_transaction()
        if fails_over(code) and next_hops(reg.alternates):
            return 1  # one provider address failed; the failure route tries the next: no outcome yet
        expires = None
        restored = None
        contact = None
        if 200 <= code < 300:
            contact = header("Contact")
            expires = granted_expires(settings.secret, contact, header("Expires"), flow)
            if contact:
                restored = decide.restore_contacts(settings.secret, contact)
                if restored is not None:
                    replace_header("Contact", restored)
        elif code in (401, 407):
            contact = header("Contact")
        min_expires = _int(header("Min-Expires")) if code == 423 else None
        fields = _registration_fields(
            "register_reply", settings, reg.registrar, flow, reg.to_uri,
            provider=f"{KSR.pv.get('$pr')}:{KSR.pv.get('$si')}:{KSR.pv.get('$sp')}",
            socket=reg.socket or None, code=code, reason=KSR.pv.get("$rr"), expires=expires, min_expires=min_expires,
        )
        fragment = self._emit(fields)
        reply_key = KSR.pv.get("$var(rk)") or ""
        # keyed by the transaction's registration: none kept, nothing memoised
        if reply_key and kept:
            memo = reply_memo(fragment, code, restored, bool(contact))
            if memo is not None:
                self._store("tp_rep", reply_key, memo)
        return 1

    @_reply_entry
    def register_failure(self, msg) -> int:
        """Failure route of a REGISTER: a timeout with no answer becomes a `timeout` event."""
        settings = self._current()
        flow, reg, _kept = _registration_of_transaction()
        # a timeout is the REGISTER's outcome only when no provider address is left to try
        if KSR.tm.t_branch_timeout() > 0 and KSR.tm.t_branch_replied() < 0 and not next_hops(reg.alternates):
            self._emit(_registration_fields(
                "register_reply", settings, reg.registrar, flow, reg.to_uri,
                socket=reg.socket or None, code=408, reason="timeout", expires=None, min_expires=None, local=True,
            ))
        return fail_over("register_failure", reg.alternates)

    @_reply_entry
    def relay_failure(self, msg) -> int:
        return fail_over("relay_failure")

    @_request_entry
    def contact_from_pbx(self, msg) -> int:
        """In-dialog target refresh from a PBX (re-INVITE, UPDATE...): hide its Contact too."""
        contact = header("Contact")
        if not contact:
            return 1
        settings = self._current()
        forced = KSR.pv.get("$fs") or ""
        socket = settings.external.get(forced.partition(":")[0] or KSR.pv.get("$pr"))
        if socket is not None:
            _hide_contact(settings, contact, _source(), socket)
        return 1

    # -- registration events ----------------------------------------------------------
    # Every event goes through one shared-memory queue (tp_ev), so the control plane sees
    # them in order whether Python or the native reply cache produced them; the timer
    # process sends them as queued, one per line, many per datagram (the control plane
    # completes them: trunkproxy.routing.event_queue).
    def _emit(self, fields: dict) -> str:
        """Queue an event from `_registration_fields`, completed with the message's CSeq and
        Call-ID (its time is the batch's); returns the fields as queued (the inside of a JSON
        object)."""
        # compact and without nulls (absent reads as null): every byte is copied ~4 times
        # between the worker and the control plane, per REGISTER replayed
        fragment = json.dumps({k: v for k, v in fields.items() if v is not None}, separators=(",", ":"))[1:-1]
        if self.settings.events_socket:
            KSR.mqueue.mq_add(_EVENT_QUEUE, "r", queue_value(fragment, KSR.pv.get("$cs"), KSR.pv.get("$ci")))
        return fragment

    def tick(self, msg) -> int:
        """rtimer, in its own process: publish changed settings, send what is left of the
        batch of queued events route TICK joined."""
        try:
            self._current()
            now = time.monotonic()
            if self._published_mtime != self._mtime:
                # new settings: memoised decisions are void. A worker may still decide with
                # the old ones until its own check (1 s at most) and store that: empty the
                # table once more after that window.
                KSR.htable.sht_reset("tp_dec")
                KSR.htable.sht_reset("tp_ok")
                self._published_mtime = self._mtime
                self._second_reset_at = now + 2 * _RELOAD_CHECK_S
            elif self._second_reset_at is not None and now >= self._second_reset_at:
                KSR.htable.sht_reset("tp_dec")
                KSR.htable.sht_reset("tp_ok")
                self._second_reset_at = None
            self._send(KSR.pv.get("$var(events)"))  # the rest of route TICK's batch
        except Exception:  # noqa: BLE001 - the timer must keep running
            KSR.err(f"trunkproxy: tick failed: {traceback.format_exc()}\n")
        return 1

    def send_events(self, msg) -> int:
        """Route TICK: a batch of queued events the native route joined, one per line."""
        self._send(KSR.pv.get("$var(events)"))
        return 1

    def send_queued_event(self, msg) -> int:
        """Route TICK: one queued event too long to join to a batch, alone."""
        self._send(KSR.pv.get("$mqv(tp_ev)"))
        return 1

    def _send(self, events: str | None) -> None:
        path = self.settings.events_socket
        if not (events and path):
            return
        try:
            if self._events is None:
                self._events = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
            self._events.sendto((batch_header(time.time()) + events).encode(), path)
        except OSError:
            pass  # the control plane is restarting; refreshes report again


def _int(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def _source() -> Flow:
    return Flow(KSR.pv.get("$pr"), KSR.pv.get("$si"), int(KSR.pv.get("$sp")))


def _provider_route_facts(settings: EndpointSettings) -> tuple[str, str | None, str | None]:
    """(Request-URI, Route as received, Route left: None if untouched) of a request from
    outside, after removing the Route entries naming this endpoint. Not loose_route(): our
    Contact in the Request-URI makes it take the strict-router path, which rewrites the
    Request-URI and leaves an empty Route header behind when both of our entries share one
    header line."""
    route = header("Route")
    remaining = decide.strip_own_routes(settings, route) if route else None
    if remaining is not None:
        KSR.hdr.remove("Route")
        if remaining:
            KSR.hdr.insert(f"Route: {remaining}\r\n")
    return KSR.pv.get("$ru"), route, remaining


def _hide_contact(settings: EndpointSettings, contact: str, flow: Flow, socket) -> str | None:
    new_value = decide.rewrite_contacts(settings.secret, contact, flow, socket)
    if new_value is not None:
        replace_header("Contact", new_value)
    return new_value


def _registration_fields(kind: str, settings: EndpointSettings, registrar: str, flow: Flow, to_uri: str,
                         **fields) -> dict:
    """A REGISTER event without what differs between two replies to the same registration
    (Call-ID, CSeq, time): those are added when it is queued and sent."""
    return {"event": kind, "endpoint": settings.name, "aor": aor_of(to_uri), "registrar": registrar,
            "flow": str(flow), **fields}


def _registration_of_transaction() -> tuple[Flow, Registration, bool]:
    """The PBX's flow and the registration the REGISTER of this reply or failure belongs to,
    and whether the transaction kept it ($avp(tp_rid), trunkproxy.routing.register_memo: the
    reply memo is keyed by it); else read from the request."""
    reg = parse_registration(KSR.pv.get("$avp(tp_rid)"))
    flow = flow_of_text(reg.flow) if reg else None
    if reg is None or flow is None:
        flow = Flow(KSR.pv.get("$T_req($pr)") or "udp", KSR.pv.get("$T_req($si)"), int(KSR.pv.get("$T_req($sp)")))
        return flow, Registration(str(flow), KSR.pv.get("$T_req($rd)") or "", "", KSR.pv.get("$T_req($tu)") or ""), False
    return flow, reg, True
