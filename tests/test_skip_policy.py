"""tests/conftest.py: where every test must run (CI, ./test.sh), a skip fails the run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _run(tmp_path: Path, strict: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\ndef test_runs():\n    assert True\n\n"
        "@pytest.mark.skip(reason='dependency missing')\ndef test_skipped():\n    assert False\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TRUNKPROXY_NO_SKIPS")}
    env["PYTHONPATH"] = str(TESTS)
    if strict:
        env["TRUNKPROXY_NO_SKIPS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-c", os.devnull,
                           "--rootdir", str(tmp_path), "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_a_skip_fails_the_run_where_every_test_must_run(tmp_path):
    result = _run(tmp_path, strict=True)
    assert result.returncode == 1, result.stdout
    assert "1 test(s) skipped where every test must run" in result.stdout
    assert "test_sample.py::test_skipped" in result.stdout


def test_a_skip_is_a_skip_elsewhere(tmp_path):
    result = _run(tmp_path, strict=False)
    assert result.returncode == 0, result.stdout
