"""Serving the API app on a TCP address (loopback by default) inside `trunkproxy run`'s loop."""
from __future__ import annotations

from aiohttp import web


class ApiServer:
    """`await start()` binds `host:port` (port 0 picks a free one, see `port`); `await stop()` closes."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        # No access log: a Prometheus scrape every few seconds would drown the state-change lines.
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        for address in self._runner.addresses:
            if isinstance(address, tuple):
                self.port = address[1]
                break

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"
