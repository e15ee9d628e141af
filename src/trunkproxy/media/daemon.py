"""The host's rtpengine, kept running by the same supervision as the endpoints' Kamailios."""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from trunkproxy.config.model import Config
from trunkproxy.media.ng import NgClient
from trunkproxy.media.plan import CONTROL_HOST, MediaInterface, rtpengine_argv
from trunkproxy.supervised import SupervisedProcess

log = logging.getLogger("trunkproxy.media")

KERNEL_MODULE_PROC = Path("/proc/rtpengine")
"""Present when the xt_RTPENGINE kernel module is loaded: forwarding then happens in the kernel."""


class MediaRelayError(Exception):
    pass


def media_argv(config: Config, interfaces: list[MediaInterface]) -> list[str]:
    table = 0 if KERNEL_MODULE_PROC.exists() else -1
    return rtpengine_argv(config.media.binary, config.media, interfaces, table,
                          verbose=config.proxy.log_level == "debug")


class MediaRelay:
    def __init__(self, argv: list[str], control_port: int) -> None:
        self.argv = argv
        self.control = NgClient(CONTROL_HOST, control_port)
        self.process = SupervisedProcess("media", "rtpengine", argv, dict(os.environ))

    async def start(self, timeout: float = 10.0) -> None:
        if await self.control.ping():
            raise MediaRelayError(f"something already answers rtpengine's control port {CONTROL_HOST}:"
                                  f"{self.control.address[1]} (another trunkproxy or a system rtpengine?): "
                                  "stop it or set [media] control_port")
        await self.process.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.process.status.state == "running" and await self.control.ping():
                log.info("media relay ready: rtpengine on %s:%d (%s)", CONTROL_HOST, self.control.address[1],
                         " ".join(a.removeprefix("--interface=") for a in self.argv if a.startswith("--interface=")))
                return
            await asyncio.sleep(0.2)
        raise MediaRelayError(f"rtpengine did not answer on {CONTROL_HOST}:{self.control.address[1]} within "
                              f"{timeout:.0f}s (see its log lines above; is a port of [media] in use?)")

    async def stop(self) -> None:
        await self.process.stop()
