"""bench.instructions' arithmetic and its reading of callgrind's output (the valgrind runs
themselves are a benchmark, not part of the test run)."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.instructions import _total, per_op  # noqa: E402


def test_per_op_is_the_difference_of_the_two_runs_divided_by_the_ops():
    base = {"successful": 0, "by_role": {"workers": 1_000_000, "timers": 50_000},
            "functions": {"workers: parse_msg": 300_000, "workers: warm_only": 10_000}}
    full = {"successful": 400, "by_role": {"workers": 41_000_000, "timers": 450_000, "rtimer": 800_000},
            "functions": {"workers: parse_msg": 4_300_000, "workers: warm_only": 10_000, "rtimer: drain": 800_000}}
    res = per_op(base, full, 400, top=2)
    assert res["by_role"] == {"workers": 100_000, "rtimer": 2_000, "timers": 1_000}
    assert res["instructions_per_op"] == 103_000
    assert res["functions"] == {"workers: parse_msg": 10_000, "rtimer: drain": 2_000}  # the top 2
    assert res["successful"] == 400


def test_total_reads_the_dump_of_a_finished_process(tmp_path):
    dump = tmp_path / "cg.1234"
    dump.write_text("# callgrind format\nversion: 1\npid: 1234\nevents: Ir\nsummary: 1304006\n\n"
                    "fn=(1) main\n0 11\n\ntotals: 1304077\n")
    assert _total(dump) == 1304077
    empty = tmp_path / "cg.1235"
    empty.write_text("# callgrind format\nevents: Ir\n")
    assert _total(empty) == 0  # a process that never ran counted code
