"""Reading rtpengine's per-call statistics (ng `query`): which endpoint a call belongs to,
what each side sent, and whether media stopped in one direction. Pure."""
from __future__ import annotations

from dataclasses import dataclass

from trunkproxy.media.plan import side_names


@dataclass(frozen=True)
class Direction:
    """What rtpengine received from one party of a call (RTP and RTCP)."""

    packets: int = 0
    bytes: int = 0
    errors: int = 0
    last_packet: int = 0
    """Unix time of the last RTP packet from this party (0: none yet)."""


@dataclass(frozen=True)
class CallMedia:
    call_id: str
    endpoint: str | None
    from_pbx: Direction
    from_provider: Direction
    created: int


def _side_of_label(label: str, endpoints: list[str]) -> tuple[str, str] | None:
    for name in endpoints:
        inner, outer = side_names(name)
        if label == inner:
            return name, "pbx"
        if label == outer:
            return name, "provider"
    return None


def _received(monologue: dict) -> Direction:
    packets = bytes_ = errors = last = 0
    for media in monologue.get("medias") or []:
        for stream in media.get("streams") or []:
            stats = stream.get("stats") or {}
            packets += int(stats.get("packets", 0))
            bytes_ += int(stats.get("bytes", 0))
            errors += int(stats.get("errors", 0))
            if "RTP" in (stream.get("flags") or []):
                last = max(last, int(stream.get("last packet", 0)))
    return Direction(packets, bytes_, errors, last)


def read_call(call_id: str, query: dict, endpoints: list[str]) -> CallMedia:
    """A call from its `query` reply: its parties are told apart by the label route MEDIA
    gives the offerer's side (media.plan.offer_flags); a party without one is the other."""
    tags = [t for t in (query.get("tags") or {}).values() if isinstance(t, dict)]
    endpoint, sides = None, {}
    for tag in tags:
        found = _side_of_label(str(tag.get("label", "")), endpoints)
        if found:
            endpoint, side = found
            sides[side] = tag
    for tag in tags:
        if tag not in sides.values() and len(sides) < 2:
            sides["provider" if "pbx" in sides else "pbx"] = tag
    return CallMedia(call_id, endpoint, _received(sides.get("pbx", {})), _received(sides.get("provider", {})),
                     int(query.get("created", 0)))


def stopped_direction(call: CallMedia, now: float, after_s: float) -> str | None:
    """The direction whose media stopped `after_s` ago or more while the other still flows:
    "pbx_to_provider" or "provider_to_pbx"; None while both flow, or neither (hold, silence
    suppression on both sides, a call still setting up)."""
    pbx_quiet = now - call.from_pbx.last_packet >= after_s
    provider_quiet = now - call.from_provider.last_packet >= after_s
    if not call.from_pbx.last_packet or not call.from_provider.last_packet:
        # one side never sent: the other side's media has been flowing alone since the call began
        started = call.from_pbx.last_packet or call.from_provider.last_packet
        if not started or now - call.created < after_s:
            return None
    if pbx_quiet and not provider_quiet:
        return "pbx_to_provider"
    if provider_quiet and not pbx_quiet:
        return "provider_to_pbx"
    return None
