"""The command line of an endpoint's Kamailio."""
from __future__ import annotations

from pathlib import Path


def kamailio_argv(binary: str, cfg: Path, run_dir: Path, shm_mb: int, pkg_mb: int) -> list[str]:
    # TLSF allocator: Debian's default q_malloc was half of Kamailio's CPU (see TESTING.md)
    # -w: its working directory, where a core file lands (core_pattern "core"), never "/"
    return [binary, "-f", str(cfg), "-DD", "-E", "-Y", str(run_dir), "-w", str(run_dir), "-m", str(shm_mb),
            "-M", str(pkg_mb), "-x", "tlsf", "-X", "tlsf"]
