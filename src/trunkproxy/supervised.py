"""Start, watch, restart and stop one daemon's process group: each endpoint's Kamailio and the
host's rtpengine are kept running by this one mechanism."""
from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("trunkproxy.supervised")

_BACKOFF_MAX_S = 30.0
_HEALTHY_AFTER_S = 60.0
_STOP_GRACE_S = 5.0

_SHUTDOWN_NOISE = re.compile(rb"child process \d+ exited normally|receive_fd\(\): EOF on|Thank you for flying")
"""What a daemon logs while it stops as asked (Kamailio: its children's normal exits as ALERT,
a TCP reader's EOF as CRITICAL): dropped while stopping, so that a normal stop does not look
like a fault in the operator's log. The same lines at any other time are passed on."""


@dataclass
class ProcessStatus:
    state: str = "stopped"  # starting | running | restarting | stopped
    pid: int | None = None
    started_at: float | None = None
    restarts: int = 0
    last_exit: int | None = None

    def uptime(self) -> float | None:
        return time.monotonic() - self.started_at if self.started_at and self.state == "running" else None


@dataclass
class SupervisedProcess:
    """One daemon's process group, kept running until stop() is called. `name` says whose it
    is (an endpoint, or "media"), `program` what it runs (kamailio, rtpengine)."""

    name: str
    program: str
    argv: list[str]
    env: dict[str, str]
    status: ProcessStatus = field(default_factory=ProcessStatus)
    _proc: asyncio.subprocess.Process | None = None
    _task: asyncio.Task | None = None
    _stopping: bool = False
    _log_tasks: list = field(default_factory=list)

    async def start(self) -> None:
        await self._spawn()
        self._task = asyncio.create_task(self._watch(), name=f"watch-{self.name}")

    async def _spawn(self) -> None:
        self.status.state = "starting"
        # its log through a pipe of our own (asyncio's would make wait() wait for every child
        # that inherited it): lines name their endpoint (Kamailio's log_prefix) or daemon
        read_end, write_end = os.pipe()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=write_end,
                start_new_session=True,  # own process group: stop() reaches every child
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self._log_tasks.append(asyncio.create_task(self._pass_log(read_end), name=f"log-{self.name}"))
        self.status.pid = self._proc.pid
        self.status.started_at = time.monotonic()
        self.status.state = "running"
        log.info("%s: %s started (pid %d)", self.name, self.program, self._proc.pid)

    async def _pass_log(self, read_end: int) -> None:
        """Copies the daemon's log lines to ours, but for its shutdown noise while stopping."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(read_end, "rb", buffering=0))
        out = sys.stderr.buffer
        try:
            while line := await reader.readline():
                if self._stopping and _SHUTDOWN_NOISE.search(line):
                    continue
                try:
                    out.write(line)
                    out.flush()
                except (OSError, ValueError):
                    pass  # our stderr is gone: keep draining, a full pipe would block the daemon's logging
        finally:
            transport.close()

    async def _watch(self) -> None:
        backoff = 1.0
        while True:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            self.status.last_exit = code
            if self._stopping:
                return
            ran_for = time.monotonic() - (self.status.started_at or 0)
            if ran_for > _HEALTHY_AFTER_S:
                backoff = 1.0
            self.status.state = "restarting"
            self.status.restarts += 1
            log.error("%s: %s (pid %s) exited with code %s after %.1fs; restart %d in %.0fs",
                      self.name, self.program, proc.pid, code, ran_for, self.status.restarts, backoff)
            _kill_group(proc.pid, signal.SIGKILL)  # orphaned children would hold the ports
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)
            if self._stopping:
                return
            try:
                await self._spawn()
            except OSError as exc:
                log.error("%s: cannot start %s: %s", self.name, self.program, exc)

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            # the main process only: it stops its children itself, quietly (signalled one by one
            # they exit first and it logs an ALERT for each)
            _kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), _STOP_GRACE_S)
            except asyncio.TimeoutError:
                log.warning("%s: %s did not stop in %.0fs; killing", self.name, self.program, _STOP_GRACE_S)
        if proc is not None:
            _kill_group(proc.pid, signal.SIGKILL)
            if proc.returncode is None:
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        # the last lines, until every process that held the pipe is gone
        _done, pending = await asyncio.wait(self._log_tasks, timeout=1.0) if self._log_tasks else ((), ())
        for task in pending:
            task.cancel()
        self.status.state = "stopped"
        self.status.pid = None
        log.info("%s: %s stopped", self.name, self.program)


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass



def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
