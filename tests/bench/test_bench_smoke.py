"""CI smoke version of the benchmark (docs/benchmark.md): a few hundred calls and REGISTERs at
a low rate through the native reference (b, TLSF) and trunkproxy (c), every one must succeed.

A benchmark, not a timed test: nothing here asserts a speed or a ratio.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import lib, run  # noqa: E402

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(lib.tools_missing() is not None, reason=str(lib.tools_missing())),
]


def test_bench_quick_has_zero_failed_calls(tmp_path):
    out = tmp_path / "bench.json"
    result = run.main(["--quick", "--quick-calls", "300", "--quick-rate", "100",
                       "--out", str(out), "--workdir", str(tmp_path / "work")])
    saved = json.loads(out.read_text())
    assert saved["summary"] == result["summary"]
    cpu = result["runs"][0]["cpu"]
    assert set(cpu) == {"call", "register"}
    for flow, per_target in cpu.items():
        assert set(per_target) == {"b_tlsf", "c"}
        for key, rounds in per_target.items():
            for entry in rounds:
                assert entry["passed"], f"{flow} via {key}: {entry['why']} {entry.get('diagnostics')}"
                assert entry["successful"] == 300 and entry["failed"] == 0 and entry["uas_failed"] == 0
                assert entry["cpu_s"] is not None
    assert result["cpu_rounds_all_passed"]


def test_bench_quick_media_anchors_every_call_in_both_targets(tmp_path):
    result = run.main(["--quick", "--media", "--flows", "call", "--quick-calls", "200", "--quick-rate", "100",
                       "--out", str(tmp_path / "bench.json"), "--workdir", str(tmp_path / "work")])
    for key, rounds in result["runs"][0]["cpu"]["call"].items():
        for entry in rounds:
            assert entry["passed"] and entry["successful"] == 200, f"{key}: {entry['why']}"
            # rtpengine did work for both: the calls were anchored, not passed through
            assert entry["media_cpu_s"] and entry["media_cpu_s"] > 0, key


def test_media_capacity_smoke_relays_every_packet_at_a_few_calls(tmp_path):
    from bench import media_capacity

    result = media_capacity.main(["--calls", "5", "--seconds", "2", "--out", str(tmp_path / "mc.json")])
    (step,) = result["steps"]
    assert step["relayed"]["expected"] == 2 * 5 * 100
    assert step["relayed"]["loss_pct"] < 1.0 and step["rtpengine_cpu_pct"] > 0
