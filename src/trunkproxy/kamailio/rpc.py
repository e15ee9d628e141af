"""JSON-RPC client for Kamailio's jsonrpcs module over its Unix datagram socket."""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any


class RpcError(Exception):
    pass


_ids = itertools.count(1)


def _call_blocking(socket_path: Path, method: str, params: list[Any], timeout: float) -> Any:
    request_id = next(_ids)
    payload = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": request_id}).encode()
    with tempfile.TemporaryDirectory(prefix="tprpc") as tmp:
        reply_path = os.path.join(tmp, "r.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(reply_path)
            sock.settimeout(timeout)
            try:
                sock.sendto(payload, str(socket_path))
                data = sock.recv(1 << 20)
            except (OSError, socket.timeout) as exc:
                raise RpcError(f"{method}: no answer from {socket_path}: {exc}") from exc
    reply = json.loads(data)
    if "error" in reply:
        raise RpcError(f"{method}: {reply['error']}")
    return reply.get("result")


async def rpc_call(socket_path: Path, method: str, *params: Any, timeout: float = 2.0) -> Any:
    """Call one Kamailio RPC method (e.g. `stats.get_statistics`, "all")."""
    return await asyncio.to_thread(_call_blocking, socket_path, method, list(params), timeout)
