"""`trunkproxy run` supervision: a dead Kamailio is restarted and logged; SIGTERM leaves nothing."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from .procs import sip_ping, wait_until

pytestmark = pytest.mark.e2e


def _kamailio_main(endpoint) -> psutil.Process:
    children = psutil.Process(endpoint.proc.pid).children()
    mains = [c for c in children if c.name() == "kamailio"]
    assert len(mains) == 1, children
    return mains[0]


def test_dead_kamailio_is_restarted_and_logged(endpoint):
    first = _kamailio_main(endpoint)
    os.kill(first.pid, signal.SIGKILL)
    wait_until(lambda: "exited with code -9" in endpoint.log(), timeout=5, message="the exit logged")
    wait_until(lambda: sip_ping(endpoint.internal_ip, endpoint.internal_port) == 200, timeout=15,
               message="the endpoint serving again")
    second = _kamailio_main(endpoint)
    assert second.pid != first.pid
    assert "restart 1" in endpoint.log()


def test_sigterm_stops_everything(endpoint):
    workers = [psutil.Process(pid) for pid in endpoint.kamailio_pids()]
    assert len(workers) > 3
    assert endpoint.stop() == 0
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert alive == []
    assert sip_ping(endpoint.internal_ip, endpoint.internal_port) is None
    # a normal stop does not look like a fault (Kamailio logged an ALERT per child)
    assert "ALERT" not in endpoint.log() and "CRITICAL" not in endpoint.log(), endpoint.log_tail()


def test_a_second_run_on_the_same_state_says_so_in_one_line(endpoint):
    # the same configuration again while it runs: refused with one clear line, no traceback
    second = endpoint.cli("run", timeout=30)
    assert second.returncode == 1
    assert "already running" in second.stderr and "Traceback" not in second.stderr, second.stderr
    assert endpoint.proc.poll() is None  # the first one keeps running


def test_a_crashed_worker_leaves_no_core_file_by_default(endpoint):
    """[proxy] core_dumps is off: Kamailio would raise the core limit itself and write all of its
    shared memory (512 MB by default) into its working directory."""
    def cores() -> set[str]:
        places = [endpoint.state_dir / "run" / "iflo", Path.cwd(), Path("/")]
        return {str(p) for place in places if place.exists() for p in place.glob("core*") if p.is_file()}

    before = cores()
    worker = [p for p in _kamailio_main(endpoint).children() if p.name() == "kamailio"][0]
    assert worker.rlimit(psutil.RLIMIT_CORE)[0] == 0
    os.kill(worker.pid, signal.SIGSEGV)
    wait_until(lambda: "restart 1" in endpoint.log(), timeout=10, message="the crash noticed and restarted")
    wait_until(lambda: sip_ping(endpoint.internal_ip, endpoint.internal_port) == 200, timeout=15,
               message="the endpoint serving again")
    assert cores() == before


def test_a_sip_port_in_use_is_one_clear_line_not_a_restart_loop(tmp_path):
    """Issue 15: Kamailio would log a bind error, exit, be restarted, for 15 s, then a vague
    'did not come up'. The port is checked first: one line naming endpoint, key and port."""
    import socket
    import subprocess
    import sys

    from .endpoint import TrunkproxyRun

    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    try:
        run = TrunkproxyRun(tmp_path / "busy", internal_port=holder.getsockname()[1])
        run.config_path.write_text(run.toml())
        result = subprocess.run([sys.executable, "-m", "trunkproxy.cli", "-c", str(run.config_path), "run"],
                                capture_output=True, text=True, timeout=30)
    finally:
        holder.close()
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert errors == [f"{errors[0][:23]} ERROR trunkproxy.supervisor: endpoint iflo: internal_port = "
                      f"{run.internal_port}: cannot bind udp 127.0.0.1:{run.internal_port}: another program uses "
                      "it (stop it, or choose another port)"], result.stderr
    assert "Traceback" not in result.stderr and "kamailio started" not in result.stderr
