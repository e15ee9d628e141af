"""How many concurrent calls the host's rtpengine relays (issue 13): 20 ms packetisation both
ways (50 packets/s per direction), ladder of call counts until loss >= 0.1% or added jitter
>= 5 ms; reports the knee and rtpengine's CPU per stream.

    .venv/bin/python -m bench.media_capacity               # full ladder
    .venv/bin/python -m bench.media_capacity --calls 50,100 --seconds 5

rtpengine runs with trunkproxy's command line (trunkproxy.media.plan, via bench.lib.media_argv)
pinned to --relay-cpus; calls are opened over its ng socket with trunkproxy's flags (no SIP:
what is measured is the media path). Each party is one UDP socket on loopback (callers on
127.0.0.2, callees on 127.0.0.3), sending from and receiving on the address its SDP names
(rtpengine latches onto the source). A sender and a receiver process, pinned to --load-cpus,
share the sockets; each packet carries its send time, so the receiver computes every stream's
RFC 3550 interarrival jitter. The same load sent directly between the parties (no relay) is the
baseline the added jitter is measured against. Every step is bounded (--seconds).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import selectors
import socket
import struct
import sys
import time
from pathlib import Path

from bench import lib
from trunkproxy.media.ng import NgClient
from trunkproxy.media.plan import offer_flags

PTIME_S = 0.020
PAYLOAD = 160


def _sdp(ip: str, port: int) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n")


def _media_port(sdp: str) -> int:
    for line in sdp.splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise ValueError(sdp)


def _sockets(ip: str, count: int) -> list[socket.socket]:
    out = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((ip, 0))
        out.append(s)
    return out


async def _open_calls(ng: NgClient, callers, callees) -> tuple[list, list, list[str]]:
    """ng offer/answer per call as Kamailio sends them; the relay's port for each party."""
    to_relay_from_caller, to_relay_from_callee, call_ids = [], [], []
    for n, (a, b) in enumerate(zip(callers, callees)):
        call_id = f"cap-{os.getpid()}-{n}"
        offer = await ng.command("offer", call_id=call_id, from_tag=f"a{n}", sdp=_sdp(*a.getsockname()),
                                 flags=[], replace=["origin", "session-connection"],
                                 direction=[f"{lib.MEDIA_ENDPOINT}-int", f"{lib.MEDIA_ENDPOINT}-ext"],
                                 ICE="remove", label=f"{lib.MEDIA_ENDPOINT}-int")
        answer = await ng.command("answer", call_id=call_id, from_tag=f"a{n}", to_tag=f"b{n}",
                                  sdp=_sdp(*b.getsockname()), replace=["origin", "session-connection"])
        to_relay_from_callee.append((lib.IP, _media_port(offer["sdp"])))
        to_relay_from_caller.append((lib.IP, _media_port(answer["sdp"])))
        call_ids.append(call_id)
    return to_relay_from_caller, to_relay_from_callee, call_ids


def _sender(pairs, seconds: float, cpus: set[int] | None) -> None:
    """pairs: (socket, destination); one packet per pair every 20 ms, timestamps inside."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    pad = b"\xd5" * (PAYLOAD - 8)
    start = time.monotonic()
    tick = 0
    while (now := time.monotonic()) - start < seconds:
        seq = tick & 0xFFFF
        for ssrc, (sock, dest) in enumerate(pairs):
            header = struct.pack("!BBHII", 0x80, 8, seq, tick * 160, ssrc)
            sock.sendto(header + struct.pack("!q", time.monotonic_ns()) + pad, dest)
        tick += 1
        delay = start + tick * PTIME_S - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _receiver(socks, seconds: float, cpus: set[int] | None, out) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    count = [0] * len(socks)
    jitter = [0.0] * len(socks)
    last_transit = [None] * len(socks)
    deadline = time.monotonic() + seconds + 1.0
    while time.monotonic() < deadline:
        for key, _ev in sel.select(timeout=0.05):
            i, s = key.data, key.fileobj
            while True:
                try:
                    data = s.recv(2048)
                except BlockingIOError:
                    break
                if len(data) < 20:
                    continue
                transit = time.monotonic_ns() - struct.unpack_from("!q", data, 12)[0]
                count[i] += 1
                if last_transit[i] is not None:
                    jitter[i] += (abs(transit - last_transit[i]) - jitter[i]) / 16
                last_transit[i] = transit
    out.send({"count": count, "jitter_ms": [j / 1e6 for j in jitter]})


def run_load(pairs_by_receiver, seconds: float, load_cpus: set[int] | None) -> dict:
    """Send on every (socket, destination), receive on every socket; per stream counts and jitter."""
    ctx = multiprocessing.get_context("fork")
    socks = [s for s, _dest in pairs_by_receiver]
    parent, child = ctx.Pipe()
    receiver = ctx.Process(target=_receiver, args=(socks, seconds, load_cpus, child))
    sender = ctx.Process(target=_sender, args=(pairs_by_receiver, seconds, load_cpus))
    receiver.start()
    time.sleep(0.2)
    sender.start()
    sender.join(seconds + 30)
    result = parent.recv() if parent.poll(seconds + 30) else {"count": [0] * len(socks), "jitter_ms": [0.0]}
    receiver.join(5)
    sent = int(seconds / PTIME_S)
    counts, jitters = result["count"], sorted(result["jitter_ms"])
    expected = sent * len(socks)
    return {"streams": len(socks), "sent_per_stream": sent, "received": sum(counts), "expected": expected,
            "loss_pct": round(100 * max(0, expected - sum(counts)) / expected, 4),
            "jitter_ms_median": round(jitters[len(jitters) // 2], 3),
            "jitter_ms_p99": round(jitters[min(len(jitters) - 1, int(len(jitters) * 0.99))], 3)}


def step(calls: int, seconds: float, relay_cpus: str | None, load_cpus: set[int] | None) -> dict:
    callers, callees = _sockets("127.0.0.2", calls), _sockets("127.0.0.3", calls)
    try:
        # baseline: the same streams directly between the parties
        direct = run_load([(a, b.getsockname()) for a, b in zip(callers, callees)]
                          + [(b, a.getsockname()) for a, b in zip(callers, callees)], seconds / 2, load_cpus)
        control = lib.free_port()
        proc = lib.subprocess.Popen(lib.pinned(relay_cpus, lib.media_argv(control)), stdin=lib.subprocess.DEVNULL,
                                    stdout=lib.subprocess.DEVNULL, stderr=lib.subprocess.DEVNULL,
                                    start_new_session=True)
        try:
            ng = NgClient("127.0.0.1", control, timeout=2.0)
            deadline = time.monotonic() + 10
            while not asyncio.run(ng.ping()):
                if time.monotonic() > deadline:
                    raise RuntimeError("rtpengine did not start")
                time.sleep(0.1)
            from_caller, from_callee, call_ids = asyncio.run(_open_calls(ng, callers, callees))
            cpu0 = lib.cpu_seconds([proc.pid])
            t0 = time.monotonic()
            relayed = run_load(list(zip(callers, from_caller)) + list(zip(callees, from_callee)), seconds, load_cpus)
            cpu = lib.cpu_seconds([proc.pid]) - cpu0
            elapsed = time.monotonic() - t0
        finally:
            lib.stop_process(proc)
    finally:
        for s in callers + callees:
            s.close()
    streams = 2 * calls
    return {"calls": calls, "direct": direct, "relayed": relayed,
            "added_jitter_ms_median": round(relayed["jitter_ms_median"] - direct["jitter_ms_median"], 3),
            "added_jitter_ms_p99": round(relayed["jitter_ms_p99"] - direct["jitter_ms_p99"], 3),
            "rtpengine_cpu_pct": round(100 * cpu / elapsed, 1),
            "rtpengine_us_per_stream_second": round(cpu / elapsed / streams * 1e6, 1),
            "ok": relayed["loss_pct"] < 0.1 and relayed["jitter_ms_p99"] - direct["jitter_ms_p99"] < 5.0}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.media_capacity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", default="50,100,200,300,400,600,800", help="ladder of concurrent calls")
    p.add_argument("--seconds", type=float, default=10.0, help="load per step (the baseline runs half)")
    p.add_argument("--relay-cpus", default="1", help="taskset CPU list for rtpengine")
    p.add_argument("--load-cpus", default="0", help="CPUs of the sender and receiver processes")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    load = {int(c) for c in args.load_cpus.split(",")} if args.load_cpus else None
    steps = []
    for calls in [int(c) for c in args.calls.split(",")]:
        res = step(calls, args.seconds, args.relay_cpus or None, load)
        steps.append(res)
        r = res["relayed"]
        print(f"{calls:5} calls ({2 * calls * 50} pkt/s): loss {r['loss_pct']:.3f}% "
              f"jitter median/p99 {r['jitter_ms_median']:.2f}/{r['jitter_ms_p99']:.2f} ms "
              f"(direct {res['direct']['jitter_ms_median']:.2f}/{res['direct']['jitter_ms_p99']:.2f}; "
              f"direct loss {res['direct']['loss_pct']:.3f}%), rtpengine {res['rtpengine_cpu_pct']}% of a core, "
              f"{res['rtpengine_us_per_stream_second']} us CPU per stream-second {'ok' if res['ok'] else 'KNEE'}",
              flush=True)
        if not res["ok"]:
            break
    knee = next((s["calls"] for s in steps if not s["ok"]), None)
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": steps,
              "max_ok_calls": max((s["calls"] for s in steps if s["ok"]), default=0), "first_failing_calls": knee}
    out = lib.results_path("media-capacity", args.out)
    lib.write_results(result, out)
    print(f"max calls with < 0.1% loss and < 5 ms added jitter: {result['max_ok_calls']}"
          f"{'' if knee else ' (no step failed: a lower bound)'}; results: {out}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
