"""A tiny JSON-RPC client over Kamailio's jsonrpcs unix datagram socket (tests only; the
production client lives with the supervisor)."""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
from pathlib import Path
from typing import Any

_ids = itertools.count(1)


class _Reply(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self.future.done():
            self.future.set_result(data)


async def rpc(server: Path, method: str, *params: Any, timeout: float = 2.0) -> Any:
    """Call `method` on Kamailio's jsonrpcs datagram socket and return its `result`."""
    client = server.parent / f"rpc-client-{os.getpid()}-{next(_ids)}.sock"
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _Reply, local_addr=str(client), remote_addr=str(server), family=socket.AF_UNIX)
    try:
        request = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}
        transport.sendto(json.dumps(request).encode())
        answer = json.loads(await asyncio.wait_for(proto.future, timeout))
    finally:
        transport.close()
        client.unlink(missing_ok=True)
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]
