"""app_python3 entry script for `python -m bench.profile`: trunkproxy's Router, instrumented.

Loaded by an instrumented copy of the generated endpoint config instead of
src/trunkproxy/kamailio/kemi_entry.py. Per python_exec entry (and per SIP method, or reply
status) it counts calls and the time spent in Python; with BENCH_PROFILE_MODE=count it also
counts every KSR.* call made from the routing code and the CPU time spent inside it (a counting
proxy stands in for the KSR module: entry timings include its overhead in that mode). Counters are written as JSON to
$BENCH_PROFILE_OUT/<pid>.json at most once a second, on the next entry.
"""
import json
import os
import sys
import time
import types

_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if _SRC not in sys.path:
    sys.path.append(_SRC)

import KSR as _KSR  # noqa: E402

_MODE = os.environ.get("BENCH_PROFILE_MODE", "time")
_OUT = os.environ["BENCH_PROFILE_OUT"]
_entries: dict = {}  # "entry method" -> [calls, wall ns, thread cpu ns]
_ksr: dict = {}  # "entry method" -> {"KSR.pv.get($ru)": [calls, thread cpu ns]}
_current = ["-"]
_next_flush = [0.0]


class _Counting:
    """Stands in for KSR (and its submodules) and counts each function call."""

    def __init__(self, target, prefix):
        self._target, self._prefix = target, prefix

    def __getattr__(self, name):
        attr = getattr(self._target, name)
        qual = self._prefix + name
        if isinstance(attr, types.ModuleType):
            return _Counting(attr, qual + ".")
        if callable(attr):
            by_arg = qual.startswith("KSR.pv.")

            def call(*args, **kwargs):
                per = _ksr.setdefault(_current[0], {})
                fn = f"{qual}({args[0]})" if by_arg and args else qual
                c0 = time.thread_time_ns()
                try:
                    return attr(*args, **kwargs)
                finally:
                    rec = per.get(fn)
                    if rec is None:
                        rec = per[fn] = [0, 0]
                    rec[0] += 1
                    rec[1] += time.thread_time_ns() - c0
            return call
        return attr


if _MODE == "count":
    sys.modules["KSR"] = _Counting(_KSR, "KSR.")

from trunkproxy.kamailio.kemi import Router  # noqa: E402

_ENTRIES = ("initial_from_pbx", "initial_from_provider", "in_dialog_from_provider", "reply_from_pbx",
            "register_reply", "register_failure", "relay_failure", "contact_from_pbx")
_REPLY_ENTRIES = {"reply_from_pbx", "register_reply"}


def _flush():
    path = os.path.join(_OUT, f"{os.getpid()}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"mode": _MODE, "entries": _entries, "ksr": _ksr}, fh)
    os.replace(tmp, path)


def _instrument(name, method):
    is_reply = name in _REPLY_ENTRIES

    def entry(msg):
        what = _KSR.pv.get("$rm") or "?"
        if is_reply:
            what = f"{what} {_KSR.pv.get('$rs')}"
        key = f"{name} {what}"
        _current[0] = key
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        try:
            return method(msg)
        finally:
            t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
            rec = _entries.get(key)
            if rec is None:
                rec = _entries[key] = [0, 0, 0]
            rec[0] += 1
            rec[1] += t1 - t0
            rec[2] += c1 - c0
            now = time.monotonic()
            if now >= _next_flush[0]:
                _next_flush[0] = now + 1.0
                _flush()
    return entry


def mod_init():
    router = Router(os.environ["TRUNKPROXY_ENDPOINT_SETTINGS"])
    for name in _ENTRIES:
        setattr(router, name, _instrument(name, getattr(router, name)))
    return router
