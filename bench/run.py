"""trunkproxy benchmark: SIPp direct (a), native Kamailio reference (b, b_tlsf), trunkproxy (c).

    .venv/bin/python -m bench.run                  # full: 3 runs, rate search + CPU rounds
    .venv/bin/python -m bench.run --quick          # CI smoke: a few hundred calls, b_tlsf and c

See docs/benchmark.md for what is measured and how to read the output.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import lib

ALL_TARGETS = ["a", "b", "b_tlsf", "c"]
CPU_TARGETS = ["b", "b_tlsf", "c"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- rate search

def search_max_rate(target: lib.Target, flow: str, args, workdir: Path) -> dict:
    """Ladder from --start-rate in --rate-step steps until a step fails, then bisect --refine
    times between the last passing and the first failing rate. Every step runs on freshly
    started processes."""
    steps: list[dict] = []

    def attempt(rate: float) -> bool:
        calls = max(int(rate * args.step_seconds), 1)
        res = lib.run_step(target, flow, rate, calls, workdir, args.sipp_cpus)
        steps.append(res.as_dict())
        log(f"  {flow:8} {target.key:6} {rate:7.0f}/s x {calls:6}: "
            f"{'pass' if res.passed else 'FAIL'} achieved {res.achieved_rate:7.1f}/s "
            f"failed={res.failed + res.uas_failed} retrans={res.retransmissions + res.uas_retransmissions}"
            f"{' rcvbuf_err=' + str(res.rcvbuf_errors) if res.rcvbuf_errors else ''}"
            f"{' (' + res.why + ')' if res.why else ''}")
        return res.passed

    best, worst = 0.0, None
    rate = float(args.start_rate)
    while rate <= args.max_rate:
        if attempt(rate):
            best = rate
            rate += args.rate_step
        else:
            worst = rate
            break
    if worst is not None:
        lo, hi = best, worst
        for _ in range(args.refine):
            mid = round((lo + hi) / 2 / 25) * 25
            if mid <= lo or mid >= hi:
                break
            if attempt(mid):
                lo = mid
            else:
                hi = mid
        best = lo
    return {"max_rate": best, "first_failing_rate": worst, "capped_at_max": worst is None, "steps": steps}


# --------------------------------------------------------------------------- CPU per call

def cpu_rounds(targets: list[lib.Target], flow: str, args, workdir: Path) -> dict:
    """CPU time of the proxy's Kamailio processes per call/REGISTER at a fixed rate, several
    rounds with the targets in rotated order (a,b,c / b,c,a / c,a,b)."""
    out: dict[str, list[dict]] = {t.key: [] for t in targets}
    calls = int(args.cpu_rate * args.cpu_seconds)
    for rnd in range(args.cpu_rounds):
        order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
        for target in order:
            res = lib.run_step(target, flow, args.cpu_rate, calls, workdir, args.sipp_cpus,
                               measure_idle_s=args.idle_seconds)
            entry = res.as_dict()
            if res.cpu_s is not None and res.successful:
                idle = (res.idle_cpu_s or 0.0) / args.idle_seconds * res.elapsed_s if args.idle_seconds else 0.0
                entry["us_per_op"] = round((res.cpu_s - idle) / res.successful * 1e6, 1)
                if res.other_cpu_s is not None:
                    entry["control_plane_us_per_op"] = round(res.other_cpu_s / res.successful * 1e6, 1)
                if res.media_cpu_s is not None:
                    entry["rtpengine_us_per_op"] = round(res.media_cpu_s / res.successful * 1e6, 1)
            out[target.key].append(entry)
            log(f"  cpu {flow:8} round {rnd + 1} {target.key:6}: {entry.get('us_per_op', '-')} us/op"
                f"{' + control plane ' + str(entry['control_plane_us_per_op']) if 'control_plane_us_per_op' in entry else ''}"
                f"{' (rtpengine ' + str(entry['rtpengine_us_per_op']) + ')' if 'rtpengine_us_per_op' in entry else ''}"
                f" ({'pass' if res.passed else 'FAIL: ' + res.why})")
    return out


# --------------------------------------------------------------------------- summary

def _med(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 1) if values else None


def _spread(values: list[float]) -> list[float] | None:
    values = [v for v in values if v is not None]
    return [round(min(values), 1), round(max(values), 1)] if values else None


def _ratio(num: float | None, den: float | None) -> float | None:
    return round(num / den, 3) if num and den else None


def summarise(runs: list[dict], flows: list[str]) -> dict:
    summary: dict = {"rates": {}, "cpu_us_per_op": {}, "control_plane_us_per_op": {}, "ratios": {}}
    for flow in flows:
        summary["rates"][flow] = {}
        summary["cpu_us_per_op"][flow] = {}
        for key in ALL_TARGETS:
            found = [r["rates"][flow][key] for r in runs if key in r.get("rates", {}).get(flow, {})]
            rates = [f["max_rate"] for f in found]
            if rates:
                summary["rates"][flow][key] = {"median": _med(rates), "spread": _spread(rates), "runs": rates,
                                               # no step failed up to --max-rate: a lower bound
                                               "capped": any(f.get("capped_at_max") for f in found)}
            per_run = []
            cp_per_run = []
            for r in runs:
                rounds = r.get("cpu", {}).get(flow, {}).get(key)
                if rounds:
                    vals = [e["us_per_op"] for e in rounds if e.get("passed") and "us_per_op" in e]
                    per_run.append(_med(vals))
                    cps = [e["control_plane_us_per_op"] for e in rounds if e.get("passed") and "control_plane_us_per_op" in e]
                    if cps:
                        cp_per_run.append(_med(cps))
            if per_run:
                summary["cpu_us_per_op"][flow][key] = {"median": _med(per_run), "spread": _spread(per_run),
                                                       "runs": per_run}
            shm = [(e["shm_peak"] - e["shm_idle"]) / e["rate"] for r in runs
                   for e in r.get("cpu", {}).get(flow, {}).get(key, [])
                   if e.get("passed") and e.get("shm_peak") and e.get("shm_idle") is not None]
            if shm:
                # shared memory held per op/s of sustained rate: tm keeps each transaction for
                # its wait timer (5 s) after the final reply; neither proxy keeps dialog state
                summary.setdefault("shm_kb_per_op_per_s", {}).setdefault(flow, {})[key] = round(
                    statistics.median(shm) / 1024, 1)
            per_reg = [(e["shm_warm"][1] - e["shm_warm"][0]) / lib.TRUNKS for r in runs
                       for e in r.get("cpu", {}).get(flow, {}).get(key, []) if e.get("shm_warm")]
            if per_reg:
                # what the proxy keeps in shared memory per registration once its REGISTER
                # transactions are gone (trunkproxy: the decision and reply caches)
                summary.setdefault("shm_bytes_per_registration", {}).setdefault(flow, {})[key] = round(
                    statistics.median(per_reg))
            rss = [(e["other_rss_kb"][1] - e["other_rss_kb"][0]) for r in runs
                   for e in r.get("cpu", {}).get(flow, {}).get(key, []) if e.get("other_rss_kb")]
            if rss:
                summary.setdefault("control_plane_rss_growth_kb", {}).setdefault(flow, {})[key] = max(rss)
            if cp_per_run:
                summary["control_plane_us_per_op"].setdefault(flow, {})[key] = {
                    "median": _med(cp_per_run), "spread": _spread(cp_per_run), "runs": cp_per_run}
        rates = summary["rates"][flow]
        cpu = summary["cpu_us_per_op"][flow]
        rate_of = lambda k: (rates.get(k) or {}).get("median")  # noqa: E731
        cpu_of = lambda k: (cpu.get(k) or {}).get("median")  # noqa: E731
        cp = (summary["control_plane_us_per_op"].get(flow, {}).get("c") or {}).get("median") or 0.0
        summary["ratios"][flow] = {
            "rate_c_over_b_tlsf": _ratio(rate_of("c"), rate_of("b_tlsf")),
            "rate_c_over_b": _ratio(rate_of("c"), rate_of("b")),
            # efficiency: reference CPU / trunkproxy CPU per operation (>= 0.9 is the target)
            "cpu_b_tlsf_over_c": _ratio(cpu_of("b_tlsf"), cpu_of("c")),
            "cpu_b_over_c": _ratio(cpu_of("b"), cpu_of("c")),
            "cpu_b_tlsf_over_c_with_control_plane": _ratio(cpu_of("b_tlsf"), (cpu_of("c") or 0) + cp or None),
            "cpu_b_tlsf_over_b": _ratio(cpu_of("b_tlsf"), cpu_of("b")),
        }
    return summary


def _fmt(entry: dict | None, unit: str = "") -> str:
    if not entry or entry.get("median") is None:
        return "-"
    lo, hi = entry["spread"]
    prefix = ">=" if entry.get("capped") else ""
    if len(entry["runs"]) > 1:
        return f"{prefix}{entry['median']:g}{unit} [{lo:g}-{hi:g}]"
    return f"{prefix}{entry['median']:g}{unit}"


LABELS = {"a": "(a) SIPp UAC -> UAS direct", "b": "(b) native Kamailio, default allocator",
          "b_tlsf": "(b) native Kamailio, -x tlsf -X tlsf", "c": "(c) trunkproxy run (tlsf)"}


def table(summary: dict, flows: list[str]) -> str:
    lines = []
    unit = {"call": "calls/s", "register": "REGISTER/s"}
    for flow in flows:
        lines.append(f"\n{flow}: max rate with 0 failed [min-max over runs]; proxy CPU per "
                     f"{'call' if flow == 'call' else 'REGISTER'} at a fixed rate")
        lines.append(f"  {'target':40} {'max ' + unit[flow]:>22} {'Kamailio CPU us/op':>22} {'control plane us/op':>22}")
        for key in ALL_TARGETS:
            r = summary["rates"][flow].get(key)
            c = summary["cpu_us_per_op"][flow].get(key)
            cp = summary["control_plane_us_per_op"].get(flow, {}).get(key)
            if r or c:
                lines.append(f"  {LABELS[key]:40} {_fmt(r):>22} {_fmt(c):>22} {_fmt(cp):>22}")
        shm = summary.get("shm_kb_per_op_per_s", {}).get(flow, {})
        if shm:
            lines.append("  shared memory held per op/s sustained (KB): "
                         + ", ".join(f"{k} {v:g}" for k, v in shm.items()))
        per_reg = summary.get("shm_bytes_per_registration", {}).get(flow, {})
        if per_reg:
            lines.append("  shared memory kept per registration (bytes): "
                         + ", ".join(f"{k} {v:g}" for k, v in per_reg.items()))
        rss = summary.get("control_plane_rss_growth_kb", {}).get(flow, {})
        if rss:
            lines.append("  trunkproxy control plane RSS growth during a fixed-rate run (KB): "
                         + ", ".join(f"{k} {v:g}" for k, v in rss.items()))
        ra = summary["ratios"][flow]
        lines.append(f"  ratios: rate c/b_tlsf={ra['rate_c_over_b_tlsf']}  c/b={ra['rate_c_over_b']}   "
                     f"CPU efficiency b_tlsf/c={ra['cpu_b_tlsf_over_c']}  b/c={ra['cpu_b_over_c']}  "
                     f"b_tlsf/(c+control plane)={ra['cpu_b_tlsf_over_c_with_control_plane']}  "
                     f"(tlsf gain on the reference: b_tlsf/b={ra['cpu_b_tlsf_over_b']})")
    return "\n".join(lines)


def machine() -> dict:
    def cmd(*c: str) -> str:
        try:
            return subprocess.run(c, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    code = {"commit": cmd("git", "-C", str(lib.REPO), "rev-parse", "HEAD"),
            "src_modified": bool(cmd("git", "-C", str(lib.REPO), "status", "--porcelain", "src"))}
    return {"code": code, "host": platform.node(), "cpu": model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "kamailio": cmd(lib.KAMAILIO, "-v").splitlines()[0] if cmd(lib.KAMAILIO, "-v") else "",
            "sipp": (cmd(lib.SIPP, "-v").splitlines() or [""])[0].strip()[:80],
            "python_in_kamailio": cmd("/usr/bin/python3", "--version")}


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CI smoke: one run, targets b_tlsf,c, one step of --quick-calls at --quick-rate, no search")
    p.add_argument("--quick-calls", type=int, default=300)
    p.add_argument("--quick-rate", type=float, default=100)
    p.add_argument("--runs", type=int, default=3, help="full repetitions; the summary is their median (default 3)")
    p.add_argument("--targets", default=",".join(ALL_TARGETS), help="a,b,b_tlsf,c")
    p.add_argument("--flows", default="call,register")
    p.add_argument("--media", action="store_true",
                   help="anchor the calls' media: trunkproxy relays ([media] relay = true), the reference drives an "
                        "rtpengine with the same command line and flags (otherwise both carry signalling only)")
    p.add_argument("--workers", type=int, default=2, help="Kamailio children (UDP and TCP) for b and c")
    p.add_argument("--shm-mb", type=int, default=lib.SHM_MB,
                   help="Kamailio shared memory for b and c (trunkproxy: [proxy] shm_mb); ~150 KB per call/s")
    p.add_argument("--proxy-cpus", default="1", help="taskset CPU list for the proxies ('' = no pinning)")
    p.add_argument("--sipp-cpus", default="0", help="taskset CPU list for SIPp ('' = no pinning)")
    p.add_argument("--control-plane-cpus", default=None,
                   help="move trunkproxy's control plane to these CPUs once its Kamailio runs (default: it "
                        "shares the proxy's)")
    p.add_argument("--no-search", action="store_true", help="skip the max-rate search")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU-per-call rounds")
    p.add_argument("--start-rate", type=float, default=1000)
    p.add_argument("--rate-step", type=float, default=500)
    p.add_argument("--max-rate", type=float, default=6000)
    p.add_argument("--refine", type=int, default=2, help="bisection steps after the ladder")
    p.add_argument("--step-seconds", type=float, default=4, help="calls per step = rate x this")
    p.add_argument("--cpu-rate", type=float, default=500)
    p.add_argument("--cpu-seconds", type=float, default=8)
    p.add_argument("--cpu-rounds", type=int, default=3)
    p.add_argument("--idle-seconds", type=float, default=1.0,
                   help="idle CPU measured before each CPU round and subtracted")
    p.add_argument("--render", metavar="JSON", help="print the table of an earlier results file and exit")
    p.add_argument("--out", default=None, help="JSON results (default bench/results/bench-DATE.json)")
    p.add_argument("--workdir", default=None, help="logs and SIPp files (default: a temp dir, kept)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        flows = [f for f in ("call", "register") if f in saved["summary"]["rates"]]
        saved["summary"] = summarise(saved["runs"], flows)  # recomputed with this version's summary
        print(table(saved["summary"], flows))
        return saved
    missing = lib.tools_missing()
    if missing:
        raise SystemExit(f"bench: {missing} (apt-get install kamailio kamailio-python3-modules sip-tester util-linux)")
    if args.quick:
        args.targets = args.targets if args.targets != ",".join(ALL_TARGETS) else "b_tlsf,c"
        args.runs, args.no_search, args.cpu_rounds = 1, True, 1
        args.cpu_rate, args.cpu_seconds, args.idle_seconds = args.quick_rate, args.quick_calls / args.quick_rate, 0
    if os.cpu_count() and os.cpu_count() < 2:
        args.proxy_cpus = args.sipp_cpus = ""
    args.proxy_cpus = args.proxy_cpus or None
    args.sipp_cpus = args.sipp_cpus or None
    keys = [k for k in args.targets.split(",") if k]
    flows = [f for f in args.flows.split(",") if f]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="trunkproxy-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out = lib.results_path("bench", args.out)
    log(f"bench: targets {keys}, flows {flows}, {args.workers} workers, proxy on CPU {args.proxy_cpus}, "
        f"SIPp on CPU {args.sipp_cpus}; logs in {workdir}")

    started = time.time()
    code_at_start = machine()["code"]  # src may change while a long run goes on
    runs = []
    for run_no in range(args.runs):
        log(f"run {run_no + 1}/{args.runs}")
        targets = lib.make_targets(keys, args.workers, args.proxy_cpus, args.shm_mb, args.control_plane_cpus,
                                   media=args.media)
        run: dict = {"rates": {}, "cpu": {}}
        for flow in flows:
            if not args.no_search:
                run["rates"][flow] = {t.key: search_max_rate(t, flow, args, workdir) for t in targets}
            if not args.no_cpu:
                proxies = [t for t in targets if t.is_proxy]
                if proxies:
                    run["cpu"][flow] = cpu_rounds(proxies, flow, args, workdir)
        runs.append(run)

    summary = summarise(runs, flows)
    cpu_entries = [e for r in runs for f in r["cpu"].values() for lst in f.values() for e in lst]
    result = {
        "cpu_rounds_all_passed": all(e["passed"] for e in cpu_entries),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "machine": machine(),
        "code_at_start": code_at_start,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")},
        "summary": summary,
        "runs": runs,
        "workdir": str(workdir),
    }
    lib.write_results(result, out)
    print(table(summary, flows))
    print(f"\nresults: {out} ({result['duration_s']:.0f} s)")
    if not result["cpu_rounds_all_passed"]:
        failed = [f"{e['target']} {e['flow']}: {e['why']}" for e in cpu_entries if not e["passed"]]
        print("fixed-rate runs FAILED: " + "; ".join(failed))
    return result


if __name__ == "__main__":
    sys.exit(0 if main().get("cpu_rounds_all_passed", True) else 1)
