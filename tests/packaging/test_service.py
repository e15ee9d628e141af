"""The systemd unit scripts/install-service installs (docs/service.md): systemd accepts it,
and the commands it runs work from this checkout."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _unit(tmp_path: Path) -> Path:
    text = (ROOT / "packaging" / "trunkproxy.service.in").read_text().replace("@@ROOT@@", str(ROOT))
    unit = tmp_path / "trunkproxy.service"
    unit.write_text(text)
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_unit(tmp_path):
    result = subprocess.run(["systemd-analyze", "verify", str(_unit(tmp_path))], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "trunkproxy.service" not in result.stderr, result.stderr


def test_the_units_commands_run_from_the_checkout(tmp_path):
    lines = _unit(tmp_path).read_text().splitlines()
    start = next(line for line in lines if line.startswith("ExecStart=")).removeprefix("ExecStart=").split()
    check = next(line for line in lines if line.startswith("ExecStartPre=")).removeprefix("ExecStartPre=").split()
    assert Path(start[0]).exists() and start[-1] == "run" and check[-1] == "check-config"
    config = tmp_path / "trunkproxy.toml"
    example = subprocess.run([start[0], "example-config"], capture_output=True, text=True, timeout=30)
    config.write_text(example.stdout.replace('interface = "ens5"', 'interface = "lo"')
                      .replace('internal_address = "10.0.3.1"', 'internal_address = "127.0.0.1"')
                      .replace("external_port = 5060", "external_port = 5080"))
    checked = subprocess.run([check[0], "--config", str(config), "check-config"], capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stderr
