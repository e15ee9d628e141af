"""A rehearsal of the routing decisions for a freshly started Kamailio process. Pure.

The first decision in a new worker measured 2.3 ms where the next ones take a fraction of
that: the interpreter's first pass over the code and objects it needs (a fresh process:
memory to fault in, caches to fill). Under full load at startup every worker pays that at
once while the native decision cache is still empty, long enough for the UDP receive
buffers to overflow (seen as retransmissions in the benchmark). Each worker rehearses the
common decisions with made-up inputs once, in child_init, before it reads a message.
"""
from __future__ import annotations

import json

from trunkproxy.routing import decide, destinations
from trunkproxy.routing.event_queue import queue_value
from trunkproxy.routing.register_memo import Registration, registration_value, reply_memo, request_memo
from trunkproxy.routing.registration_events import aor_of, granted_expires, requested_expires
from trunkproxy.routing.settings import EndpointSettings
from trunkproxy.routing.sipuri import parse_name_addr
from trunkproxy.routing.tokens import Flow, encode_token

_USER = "trunkproxy-warmup"


def rehearse(settings: EndpointSettings) -> int:
    """Run the decisions of an outbound call, a registration and an inbound call; returns how
    many of them relayed (for tests: the inputs reach the code paths that matter)."""
    relayed = 0
    host = "127.0.0.1"
    if settings.instance_networks:
        network = settings.instance_networks[0]
        host = str(network.network_address + (1 if network.num_addresses > 1 else 0))
    source = Flow("udp", host, 5060)
    domain = next(iter(settings.providers), "warmup.invalid")
    contact = f"<sip:{_USER}@{host}:5060>"
    for method in ("INVITE", "REGISTER"):
        decision = decide.route_from_pbx(settings, method, f"sip:{_USER}@{domain}", source, contact, None, False,
                                         decide.supports_path("path"))
        if not isinstance(decision, decide.Relay):
            continue
        relayed += 1
        if method == "REGISTER" and decision.contact:
            expires = requested_expires(decision.contact, "3600")
            granted = granted_expires(settings.secret, f"{decision.contact};expires=600", None, source)
            decide.restore_contacts(settings.secret, f"{decision.contact};expires=600")
            fields = json.dumps({"event": "register_reply", "aor": aor_of(f"sip:{_USER}@{domain}"), "code": 200,
                                 "expires": granted or expires})[1:-1]
            registration = registration_value(Registration(str(source), domain, decision.send_socket,
                                                           f"sip:{_USER}@{domain}", decision.alternates))
            if registration and decision.dst_uri:
                request_memo(settings.socket_name_of(decision.send_socket) or "-", decision.dst_uri, registration,
                             decision.contact, decision.path)
            reply_memo(fields, 200, contact, True)
            queue_value(fields, 1, "warmup")
        elif decision.contact:
            address = parse_name_addr(decision.contact)
            if address is not None:
                inbound = decide.route_from_provider(settings, "INVITE", address.uri, None, False, True)
                relayed += isinstance(inbound, decide.Relay)
    # onsend_route's first destination, a PBX's first in-dialog request
    destinations.destination_refusal(settings.destinations, "192.0.2.1", 5060, domain)
    decide.route_set_refusal(settings, f"<sip:{host};lr;tpt={encode_token(settings.secret, source)}>", host)
    return relayed
