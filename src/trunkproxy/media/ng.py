"""rtpengine's ng control protocol: "COOKIE bencoded-dictionary" datagrams on loopback."""
from __future__ import annotations

import asyncio
import itertools
import os

import bencode

_cookies = itertools.count(1)


class NgError(Exception):
    """rtpengine did not answer, or answered with an error."""


def _text(value):
    """bencode gives bytes for strings it cannot decode as UTF-8 and str otherwise; keys and
    values as text throughout."""
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class _Reply(asyncio.DatagramProtocol):
    def __init__(self, cookie: bytes) -> None:
        self.cookie = cookie
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr) -> None:
        cookie, _sep, body = data.partition(b" ")
        if cookie == self.cookie and not self.answer.done():
            self.answer.set_result(body)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


class NgClient:
    def __init__(self, host: str, port: int, timeout: float = 1.0) -> None:
        self.address = (host, port)
        self.timeout = timeout

    async def command(self, command: str, **params) -> dict:
        """One command (`ping`, `statistics`, `list`, `query`, `delete`...); its reply
        dictionary, or NgError when there is none or it says `error`."""
        cookie = f"{os.getpid()}_{next(_cookies)}".encode()
        loop = asyncio.get_running_loop()
        message = {"command": command, **{k.replace("_", "-"): v for k, v in params.items()}}
        try:
            transport, protocol = await loop.create_datagram_endpoint(lambda: _Reply(cookie),
                                                                      remote_addr=self.address)
        except OSError as exc:
            raise NgError(f"rtpengine at {self.address[0]}:{self.address[1]}: {exc}") from exc
        try:
            transport.sendto(cookie + b" " + bencode.bencode(message))
            body = await asyncio.wait_for(protocol.answer, self.timeout)
        except (asyncio.TimeoutError, OSError) as exc:
            raise NgError(f"rtpengine at {self.address[0]}:{self.address[1]} did not answer {command!r}") from exc
        finally:
            transport.close()
        try:
            reply = _text(bencode.bdecode(body))
        except Exception as exc:  # bencode raises its own and ValueError for malformed input
            raise NgError(f"rtpengine answered {command!r} with something that is not bencode") from exc
        if not isinstance(reply, dict) or reply.get("result") == "error":
            reason = reply.get("error-reason") if isinstance(reply, dict) else reply
            raise NgError(f"rtpengine refused {command!r}: {reason}")
        return reply

    async def ping(self) -> bool:
        try:
            return (await self.command("ping")).get("result") == "pong"
        except NgError:
            return False
