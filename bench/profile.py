"""Where trunkproxy's time per message goes (issue 4, "profile before optimising").

    .venv/bin/python -m bench.profile [--calls 3000 --rate 300] [--no-perf]

1. An instrumented copy of the generated endpoint config (bench/profile_entry.py instead of
   kemi_entry.py) counts python_exec entries and KSR.* calls per call and per REGISTER
   (mode "count"), and measures the time spent inside Python per entry (mode "time", no KSR
   proxy).
2. `perf record` (if installed) on the Kamailio processes of the real `trunkproxy run` and of
   the TLSF reference during a fixed-rate run: CPU share per shared object (libpython, the
   app_python3 module, tm, core, allocator in the core binary, kernel) and the top symbols.
Results: a table on stdout and JSON (bench/results/profile-DATE.json).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import lib

PERF = shutil.which("perf")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class InstrumentedEndpoint(lib.GeneratedEndpoint):
    """trunkproxy's generated Kamailio config and settings, with bench/profile_entry.py loaded."""

    def __init__(self, mode: str, workers: int, cpus: str | None):
        super().__init__(f"c_{mode}", f"trunkproxy, instrumented ({mode})", workers, cpus)
        self.mode = mode
        self.entry = lib.BENCH_DIR / "profile_entry.py"
        self.start_timeout_s = 20.0

    def start(self, workdir: Path, provider_port: int) -> None:
        self.out_dir = workdir / f"profile-{self.mode}"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.env = {"BENCH_PROFILE_MODE": self.mode, "BENCH_PROFILE_OUT": str(self.out_dir)}
        super().start(workdir, provider_port)

    def flush(self) -> None:
        """Every worker writes its counters on its next entry once a second has passed."""
        time.sleep(1.1)
        for _ in range(12):  # both sides: replies are handled by the external socket's workers
            lib.sip_ping(self.internal_port)
            lib.sip_ping(self.external_port)
            time.sleep(0.05)
        time.sleep(0.3)


def _merge(out_dir: Path) -> tuple[dict, dict]:
    entries: dict = {}
    ksr: dict = {}
    for f in out_dir.glob("*.json"):
        data = json.loads(f.read_text())
        for key, (n, wall, cpu) in data["entries"].items():
            rec = entries.setdefault(key, [0, 0, 0])
            rec[0] += n
            rec[1] += wall
            rec[2] += cpu
        for key, calls in data["ksr"].items():
            per = ksr.setdefault(key, {})
            for fn, (n, ns) in calls.items():
                rec = per.setdefault(fn, [0, 0])
                rec[0] += n
                rec[1] += ns
    # the flush pings are OPTIONS: not part of the flows
    entries = {k: v for k, v in entries.items() if " OPTIONS" not in k}
    ksr = {k: v for k, v in ksr.items() if " OPTIONS" not in k}
    return entries, ksr


def instrumented(flow: str, mode: str, args, workdir: Path) -> dict:
    target = InstrumentedEndpoint(mode, args.workers, args.proxy_cpus)
    uac_scn, uas_scn = lib.FLOWS[flow]
    d = workdir / f"{flow}-{mode}"
    d.mkdir(parents=True, exist_ok=True)
    uas_port, uac_port = lib.free_port(), lib.free_port()
    timeout = args.calls / args.rate * 2 + 15
    uas = lib.Sipp(d, "uas", uas_scn, port=uas_port, calls=args.calls, timeout_s=timeout + 5, cpus=args.sipp_cpus)
    try:
        uas.start(wait_bound=True)
        target.start(d, uas_port)
        kpids = target.kamailio_pids()
        cpu0 = lib.cpu_seconds(kpids)
        uac = lib.Sipp(d, "uac", uac_scn, port=uac_port, calls=args.calls, timeout_s=timeout, cpus=args.sipp_cpus,
                       target=f"{lib.IP}:{target.entry_port}", rate=args.rate,
                       keys={"route": f"sip:{lib.IP}:{target.entry_port};lr", "domain": lib.PROVIDER_HOST},
                       inf=lib.users_file(d) if flow == "register" else None,
                       pause_ms=lib.CALL_HOLD_MS if flow == "call" else None)
        uac.start()
        st = uac.wait()
        cpu = lib.cpu_seconds(kpids) - cpu0
        uas.wait(timeout=3)
        target.flush()
        entries, ksr = _merge(target.out_dir)
    finally:
        if uas.proc:
            lib.stop_process(uas.proc, 2)
        target.stop()
    n = max(st.successful, 1)
    per_op = {
        "successful": st.successful, "failed": st.failed,
        "kamailio_cpu_us_per_op_instrumented": round(cpu / n * 1e6, 1),
        "python_entries_per_op": round(sum(v[0] for v in entries.values()) / n, 2),
        "entries": {k: {"per_op": round(v[0] / n, 3), "wall_us": round(v[1] / max(v[0], 1) / 1e3, 1),
                        "cpu_us": round(v[2] / max(v[0], 1) / 1e3, 1)} for k, v in sorted(entries.items())},
    }
    if mode == "time":
        per_op["python_cpu_us_per_op"] = round(sum(v[2] for v in entries.values()) / n / 1e3, 1)
        per_op["python_wall_us_per_op"] = round(sum(v[1] for v in entries.values()) / n / 1e3, 1)
    if mode == "count":
        per_op["ksr_calls_per_op"] = round(sum(c[0] for v in ksr.values() for c in v.values()) / n, 2)
        per_op["ksr_cpu_us_per_op"] = round(sum(c[1] for v in ksr.values() for c in v.values()) / n / 1e3, 1)
        # per entry: KSR function -> [calls per op, CPU us per call]
        per_op["ksr_calls"] = {k: {fn: [round(c[0] / n, 2), round(c[1] / max(c[0], 1) / 1e3, 1)]
                                   for fn, c in sorted(v.items(), key=lambda x: -x[1][1])}
                               for k, v in sorted(ksr.items())}
    return per_op


def perf_profile(target: lib.Target, flow: str, args, workdir: Path) -> dict:
    """perf record on the target's Kamailio processes during a fixed-rate run."""
    uac_scn, uas_scn = lib.FLOWS[flow]
    d = workdir / f"perf-{target.key}-{flow}"
    d.mkdir(parents=True, exist_ok=True)
    calls = int(args.perf_rate * args.perf_seconds)
    timeout = args.perf_seconds * 2 + 15
    uas_port, uac_port = lib.free_port(), lib.free_port()
    uas = lib.Sipp(d, "uas", uas_scn, port=uas_port, calls=calls, timeout_s=timeout + 5, cpus=args.sipp_cpus)
    data = d / "perf.data"
    perf = None
    try:
        uas.start(wait_bound=True)
        target.start(d, uas_port)
        pids = target.kamailio_pids()
        uac = lib.Sipp(d, "uac", uac_scn, port=uac_port, calls=calls, timeout_s=timeout, cpus=args.sipp_cpus,
                       target=f"{lib.IP}:{target.entry_port}", rate=args.perf_rate,
                       keys={"route": f"sip:{lib.IP}:{target.entry_port};lr", "domain": lib.PROVIDER_HOST},
                       inf=lib.users_file(d) if flow == "register" else None,
                       pause_ms=lib.CALL_HOLD_MS if flow == "call" else None)
        # on core 0 with SIPp: perf's own work must not land on the proxy's core
        perf = subprocess.Popen(lib.pinned(args.sipp_cpus, [PERF, "record", "-F", "2999", "-o", str(data),
                                                              "-p", ",".join(map(str, pids))]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(0.5)
        uac.start()
        st = uac.wait()
        perf.send_signal(2)
        perf.wait(timeout=30)
        uas.wait(timeout=3)
    finally:
        if perf and perf.poll() is None:
            lib.stop_process(perf)
        if uas.proc:
            lib.stop_process(uas.proc, 2)
        target.stop()

    def report(sort: str, limit: float) -> list[tuple[float, str]]:
        out = subprocess.run([PERF, "report", "-i", str(data), "--sort", sort, "--stdio", "--percent-limit",
                              str(limit)], capture_output=True, text=True, timeout=120).stdout
        rows = []
        for line in out.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(.*\S)", line)
            if m and not line.lstrip().startswith("#"):
                rows.append((float(m.group(1)), re.sub(r"\s+", " ", m.group(2))))
        return rows

    return {"successful": st.successful, "failed": st.failed,
            "by_dso": report("dso", 0.5), "top_symbols": report("dso,sym", 0.8)[:30]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--rate", type=float, default=300)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--proxy-cpus", default="1")
    p.add_argument("--sipp-cpus", default="0")
    p.add_argument("--flows", default="call,register")
    p.add_argument("--no-perf", action="store_true")
    p.add_argument("--perf-rate", type=float, default=500)
    p.add_argument("--perf-seconds", type=float, default=8)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.proxy_cpus, args.sipp_cpus = args.proxy_cpus or None, args.sipp_cpus or None
    workdir = Path(tempfile.mkdtemp(prefix="trunkproxy-profile-"))
    log(f"profile: logs in {workdir}")
    flows = [f for f in args.flows.split(",") if f]
    result: dict = {"date": dt.datetime.now().isoformat(timespec="seconds"), "instrumented": {}, "perf": {}}
    for flow in flows:
        result["instrumented"][flow] = {mode: instrumented(flow, mode, args, workdir) for mode in ("count", "time")}
        log(f"  instrumented {flow}: done")
    if PERF and not args.no_perf:
        for flow in flows:
            for target in lib.make_targets(["b_tlsf", "c"], args.workers, args.proxy_cpus):
                result["perf"].setdefault(flow, {})[target.key] = perf_profile(target, flow, args, workdir)
                log(f"  perf {flow} {target.key}: done")
    out = lib.results_path("profile", args.out)
    lib.write_results(result, out)
    print(render(result))
    print(f"\nresults: {out}")
    return result


def render(result: dict) -> str:
    lines = []
    for flow, modes in result["instrumented"].items():
        cnt, tim = modes["count"], modes["time"]
        op = "call" if flow == "call" else "REGISTER"
        lines.append(f"\n{flow}: per {op}: {cnt['python_entries_per_op']} python_exec entries, "
                     f"{cnt['ksr_calls_per_op']} KSR calls, Python CPU {tim['python_cpu_us_per_op']} us "
                     f"(Kamailio CPU with the timing wrapper: {tim['kamailio_cpu_us_per_op_instrumented']} us)")
        lines.append(f"  KSR calls took {cnt['ksr_cpu_us_per_op']} us of CPU per {op} (in count mode)")
        lines.append(f"  {'entry (method / reply)':34} {'per op':>7} {'CPU us':>8} {'KSR calls':>10} {'in KSR us':>10}  "
                     "costliest KSR calls (calls, us each)")
        for key, e in tim["entries"].items():
            calls = cnt["ksr_calls"].get(key, {})
            n_calls = sum(c[0] for c in calls.values()) / max(e["per_op"], 1e-9)
            in_ksr = sum(c[0] * c[1] for c in calls.values()) / max(e["per_op"], 1e-9)
            top = ", ".join(f"{fn} {c[0]:g}x{c[1]:g}" for fn, c in list(calls.items())[:4])
            lines.append(f"  {key:34} {e['per_op']:7.2f} {e['cpu_us']:8.1f} {n_calls:10.1f} {in_ksr:10.1f}  {top}")
    for flow, per_target in result.get("perf", {}).items():
        for key, prof in per_target.items():
            lines.append(f"\nperf {flow} {key}: CPU share by object: "
                         + ", ".join(f"{name} {pct:.1f}%" for pct, name in prof["by_dso"][:8]))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
