"""Instructions per call and per REGISTER, counted by valgrind's callgrind (issue 4).

    .venv/bin/python -m bench.instructions [--flows call,register] [--ops 600] [--targets b_tlsf,c]

CPU seconds on a shared VM move by +-15% between rounds; instruction counts do not: callgrind
counts the instructions each Kamailio process executes, whatever else the machine does. Both
the TLSF reference (b_tlsf) and trunkproxy's generated endpoint config (c, run directly:
no control plane) run under callgrind with the same workers and memory as in bench.run,
counting inside message handling and the per-transaction timers only (COUNTED). Each target
is started twice, each time with the same warm-up (every trunk registers once, or a few
calls go through: what is measured is the steady state of refreshes and a trunk's next
call): once followed by `--ops` calls or REGISTERs at a low rate, once by as long a pause.
Instructions per op = the difference / ops, by process role and by function (self cost).

Instructions are not cycles (cache misses, branch mispredictions), so this complements the
CPU rounds of bench.run rather than replacing them; but it is repeatable to a fraction of a
percent, and it says which function spends the difference.
Needs valgrind (Debian's package). Results: a table on stdout and JSON in bench/results/.
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import lib

VALGRIND = shutil.which("valgrind")
CALLGRIND_ANNOTATE = shutil.which("callgrind_annotate")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# Callgrind counts only inside these (and what they call): the handling of every received
# message (request and reply routes, tm, sending), tm's timers (retransmissions, freeing a
# transaction after its wait time) and rtimer's jobs (trunkproxy's event queue drain). Not
# counted: startup, RPCs, and timers whose work grows with time rather than with traffic.
COUNTED = ("receive_msg", "wait_handler", "retr_buf_handler", "stm_timer_exec")


def make_target(key: str, workers: int, out_dir: Path) -> lib.KamailioTarget:
    prefix = (VALGRIND, "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.%p", "--dump-line=no",
              "--collect-atstart=no", *(f"--toggle-collect={fn}" for fn in COUNTED))
    if key == "b_tlsf":
        target: lib.KamailioTarget = lib.Reference("b_tlsf", "native Kamailio, -x tlsf -X tlsf", workers, None, tlsf=True)
    elif key == "c":
        target = lib.GeneratedEndpoint("c", "trunkproxy's generated endpoint config", workers, None)
    else:
        raise SystemExit(f"unknown target {key!r}: choose from b_tlsf, c")
    target.prefix, target.start_timeout_s, target.stop_timeout_s = prefix, 180.0, 60.0
    # no OPTIONS probes: under valgrind a varying number of them queue up while Kamailio
    # starts, and each costs trunkproxy a Python decision (uncounted work must be equal)
    target.ready_probe = lambda: _all_started(target)
    return target


def _all_started(target: lib.Target) -> bool:
    """Every Kamailio process is up: RPC lists them."""
    listing = lib.rpc(target.rpc_socket(), "core.psx", timeout=5)
    return isinstance(listing, list) and len(listing) >= 4 * target.workers


def _total(path: Path) -> int:
    """Instructions counted in one process's dump: its `totals:` line (else `summary:`)."""
    text = path.read_text(errors="replace")
    m = re.search(r"^totals: (\d+)", text, re.M) or re.search(r"^summary: (\d+)", text, re.M)
    return int(m.group(1)) if m else 0


_ANNOTATED = re.compile(r"^\s*([\d,]+)\s+(?:\([\s\d.]+%\)\s+)?(\S.*?)\s*$")


def self_cost(path: Path) -> dict[str, int]:
    """Instructions per function (self cost) of one callgrind dump."""
    out = subprocess.run([CALLGRIND_ANNOTATE, "--inclusive=no", "--threshold=100", str(path)],
                         capture_output=True, text=True, timeout=300).stdout
    costs: dict[str, int] = {}
    body = out.split("file:function", 1)[-1]
    for line in body.splitlines():
        m = _ANNOTATED.match(line)
        if m:
            name = re.sub(r"^\?\?\?:|^.*/", "", m.group(2))
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def process_roles(target: lib.Target) -> dict[int, str]:
    listing = lib.rpc(target.rpc_socket(), "core.psx", timeout=10) or []
    roles = {}
    for proc in listing if isinstance(listing, list) else []:
        desc = str(proc.get("DSC", ""))
        role = ("workers" if desc.startswith(("udp receiver", "tcp receiver")) else
                "rtimer" if "rtimer" in desc.lower() else
                "timers" if "timer" in desc.lower() else "other")
        roles[int(proc.get("PID", 0))] = role
    return roles


def counted_run(key: str, flow: str, ops: int, args, workdir: Path) -> dict:
    """One start of the target under callgrind: warm-up, then `ops` counted calls or
    REGISTERs (or, with ops=0, as long a pause), then tm's wait time. Returns the counts of
    each process role and each function, cumulated since start."""
    d = workdir / f"{key}-{flow}-{ops}"
    out_dir = d / "callgrind"
    out_dir.mkdir(parents=True)
    target = make_target(key, args.workers, out_dir)
    uac_scn, uas_scn = lib.FLOWS[flow]
    warm = args.trunks if flow == "register" else args.warm_calls
    uas_port, uac_port = lib.free_port(), lib.free_port()
    uas = lib.Sipp(d, "uas", uas_scn, port=uas_port, calls=warm + ops,
                   timeout_s=(warm + args.ops) / args.rate * 3 + 300, cpus=None)
    successful = 0
    try:
        uas.start(wait_bound=True)
        target.start(d, uas_port)
        time.sleep(5)  # the workers' child_init (trunkproxy: Python) runs after the fork
        entry = target.entry_port
        keys = {"route": f"sip:{lib.IP}:{entry};lr", "domain": lib.PROVIDER_HOST}

        def uac(name: str, calls: int) -> lib.SippStats:
            run_dir = d / name
            run_dir.mkdir()
            sipp = lib.Sipp(run_dir, "uac", uac_scn, port=uac_port, calls=calls, timeout_s=calls / args.rate * 3 + 60,
                            cpus=None, target=f"{lib.IP}:{entry}", rate=args.rate, keys=keys,
                            inf=lib.users_file(run_dir, args.trunks) if flow == "register" else None,
                            pause_ms=lib.CALL_HOLD_MS if flow == "call" else None)
            return sipp.start().wait()

        ws = uac("warm", warm)
        if ws.successful != warm:
            raise RuntimeError(f"{key} warm-up: {ws.successful} of {warm} succeeded; logs in {d}")
        roles = process_roles(target)
        if ops:
            st = uac("counted", ops)
            if st.successful != ops:
                raise RuntimeError(f"{key}: {st.successful} of {ops} succeeded; logs in {d}")
            successful = st.successful
        else:
            time.sleep(args.ops / args.rate)  # the same number of timer ticks as the counted run
        time.sleep(lib.TM_WAIT_S)
    finally:
        if uas.proc:
            lib.stop_process(uas.proc, 2)
        target.stop()
    if ops and flow == "register" and isinstance(target, lib.GeneratedEndpoint) and not target.events_received:
        # what is measured includes sending the events: it must have happened
        raise RuntimeError(f"{key}: no REGISTER event reached the event socket; logs in {d}")
    by_role: dict[str, int] = {}
    functions: dict[str, int] = {}  # "role: function"
    for path in out_dir.glob("cg.*"):
        pid = int(path.name.split(".")[1])
        role = roles.get(pid, "main and others")
        by_role[role] = by_role.get(role, 0) + _total(path)
        if role != "main and others":
            for name, count in self_cost(path).items():
                key = f"{role}: {name}"
                functions[key] = functions.get(key, 0) + count
    return {"successful": successful, "by_role": by_role, "functions": functions, "dir": str(d)}


def per_op(base: dict, full: dict, ops: int, top: int) -> dict:
    """What `ops` more calls or REGISTERs cost: (full run - base run) / ops, by process role
    and by function (the `top` costliest)."""

    def difference(a: dict, b: dict) -> dict[str, int]:
        return {k: round((b.get(k, 0) - a.get(k, 0)) / ops) for k in set(a) | set(b)}

    by_role = difference(base["by_role"], full["by_role"])
    functions = difference(base["functions"], full["functions"])
    return {
        "successful": full["successful"], "ops": ops,
        "instructions_per_op": sum(by_role.values()),
        "by_role": dict(sorted(by_role.items(), key=lambda kv: -kv[1])),
        "functions": dict(sorted(functions.items(), key=lambda kv: -kv[1])[:top]),
    }


def measure(key: str, flow: str, args, workdir: Path) -> dict:
    """Startup, warm-up and timer ticks are in both runs and cancel out."""
    base = counted_run(key, flow, 0, args, workdir)
    full = counted_run(key, flow, args.ops, args, workdir)
    return per_op(base, full, args.ops, args.top)


def render(result: dict) -> str:
    lines = []
    for flow, per_target in result["flows"].items():
        op = "call" if flow == "call" else "REGISTER"
        ref, tp = per_target.get("b_tlsf"), per_target.get("c")
        lines.append(f"\n{flow}: instructions per {op} (callgrind, all Kamailio processes, less a run without them)")
        for key, res in per_target.items():
            roles = ", ".join(f"{k} {v:,}" for k, v in res["by_role"].items())
            lines.append(f"  {key:7} {res['instructions_per_op']:>12,}   ({res['successful']} ok; {roles})")
        if ref and tp and tp["instructions_per_op"]:
            lines.append(f"  ratio (b_tlsf)/(c): {ref['instructions_per_op'] / tp['instructions_per_op']:.3f}")
            diff = {name: tp["functions"].get(name, 0) - ref["functions"].get(name, 0)
                    for name in set(tp["functions"]) | set(ref["functions"])}
            lines.append("  where (c) executes more than (b_tlsf), per op (self cost):")
            for name, extra in sorted(diff.items(), key=lambda kv: -kv[1])[:15]:
                lines.append(f"    {extra:>+9,}  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flows", default="call,register")
    p.add_argument("--targets", default="b_tlsf,c")
    p.add_argument("--ops", type=int, default=600, help="calls or REGISTERs counted per target and flow")
    p.add_argument("--rate", type=float, default=30, help="per second; valgrind runs Kamailio ~50x slower")
    p.add_argument("--trunks", type=int, default=200, help="REGISTER flow: distinct trunks, each registered "
                   "once before counting")
    p.add_argument("--warm-calls", type=int, default=30)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--top", type=int, default=60, help="functions kept per target in the JSON")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    missing = [name for name, path in (("valgrind", VALGRIND), ("callgrind_annotate", CALLGRIND_ANNOTATE))
               if not path] + ([lib.tools_missing()] if lib.tools_missing() else [])
    if missing:
        raise SystemExit(f"bench.instructions needs: {', '.join(missing)}")
    workdir = Path(tempfile.mkdtemp(prefix="trunkproxy-instr-"))
    log(f"instructions: logs and callgrind dumps in {workdir}")
    result: dict = {"date": dt.datetime.now().isoformat(timespec="seconds"), "args": vars(args), "flows": {}}
    for flow in [f for f in args.flows.split(",") if f]:
        for key in [t for t in args.targets.split(",") if t]:
            res = measure(key, flow, args, workdir)
            result["flows"].setdefault(flow, {})[key] = res
            log(f"  {flow} {key}: {res['instructions_per_op']:,} instructions per op ({res['successful']} ok)")
    out = lib.results_path("instructions", args.out)
    lib.write_results(result, out)
    print(render(result))
    print(f"\nresults: {out}")
    return result


if __name__ == "__main__":
    main()
