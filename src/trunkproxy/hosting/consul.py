"""A thin async client for the parts of Consul's HTTP API we use (KV, agent services, checks).

Errors come in two kinds: `ConsulUnavailable` (connection refused, timeout, 5xx: retry later,
keep what you have) and `ConsulError` (the agent answered no, e.g. 403 for a bad token).
"""
from __future__ import annotations

import asyncio
import base64
import json as jsonlib
import random
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

__all__ = ["ConsulClient", "ConsulError", "ConsulUnavailable", "KvValue", "Backoff"]


class ConsulError(Exception):
    """The agent refused a request (4xx other than 404 where 404 means 'absent')."""


class ConsulUnavailable(ConsulError):
    """The agent could not be reached or failed (refused, timeout, 5xx)."""


@dataclass(frozen=True)
class KvValue:
    value: bytes | None
    """None: the key does not exist."""
    index: int
    """X-Consul-Index to pass to the next blocking query."""


class Backoff:
    """Exponential backoff with jitter: initial, x factor each failure, capped; reset() on success."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0, factor: float = 2.0, jitter: float = 0.1) -> None:
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self._current = initial

    def next(self) -> float:
        delay = self._current
        self._current = min(self._current * self.factor, self.maximum)
        return delay * (1 + random.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self._current = self.initial


class ConsulClient:
    """One aiohttp session against one agent; use `async with` or call close()."""

    def __init__(self, address: str = "http://127.0.0.1:8500", token: str | None = None,
                 timeout: float = 5.0) -> None:
        self.address = (address if "://" in address else f"http://{address}").rstrip("/")
        self.token = token
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "ConsulClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                       json: Any = None, data: bytes | None = None, timeout: float | None = None,
                       absent_ok: bool = False) -> tuple[int, bytes, dict[str, str]]:
        if self._session is None:
            headers = {"X-Consul-Token": self.token} if self.token else {}
            self._session = aiohttp.ClientSession(headers=headers)
        url = f"{self.address}{path}"
        try:
            async with self._session.request(method, url, params=params, json=json, data=data,
                                             timeout=aiohttp.ClientTimeout(total=timeout or self.timeout)) as resp:
                body = await resp.read()
                status, headers = resp.status, dict(resp.headers)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise ConsulUnavailable(f"Consul at {self.address} unreachable: {type(exc).__name__} {exc}".rstrip()) from exc
        if status == 404 and absent_ok:
            return status, body, headers
        if status >= 500:
            raise ConsulUnavailable(f"Consul at {self.address} answered {status} to {method} {path}: "
                                    f"{body[:200].decode('utf-8', 'replace')}")
        if status >= 400:
            hint = " (check consul.token)" if status == 403 else ""
            raise ConsulError(f"Consul at {self.address} refused {method} {path}: {status} "
                              f"{body[:200].decode('utf-8', 'replace').strip()}{hint}")
        return status, body, headers

    # KV ------------------------------------------------------------------------------------
    async def kv_get(self, key: str, *, index: int | None = None, wait: float | None = None) -> KvValue:
        """The raw value of `key` (None if absent). With `index`, a blocking query of up to `wait` seconds."""
        params: dict[str, str] = {}
        timeout = self.timeout
        if index:
            params["index"] = str(index)
            if wait is not None:
                params["wait"] = f"{max(1, int(wait))}s"
                timeout = max(1, int(wait)) * 17 / 16 + self.timeout  # Consul adds up to wait/16 of jitter
        status, body, headers = await self._request("GET", f"/v1/kv/{quote(key)}", params=params,
                                                    timeout=timeout, absent_ok=True)
        new_index = int(headers.get("X-Consul-Index", "0") or 0)
        if status == 404:
            return KvValue(None, new_index)
        entries = jsonlib.loads(body)
        raw = entries[0].get("Value") if entries else None
        return KvValue(base64.b64decode(raw) if raw is not None else b"", new_index)

    async def kv_put(self, key: str, value: bytes) -> None:
        await self._request("PUT", f"/v1/kv/{quote(key)}", data=value)

    async def kv_delete(self, key: str) -> None:
        await self._request("DELETE", f"/v1/kv/{quote(key)}")

    # Agent services and checks -----------------------------------------------------------
    async def register_service(self, definition: dict[str, Any]) -> None:
        await self._request("PUT", "/v1/agent/service/register", json=definition)

    async def deregister_service(self, service_id: str) -> None:
        await self._request("PUT", f"/v1/agent/service/deregister/{quote(service_id)}")

    async def service_registered(self, service_id: str) -> bool:
        status, _, _ = await self._request("GET", f"/v1/agent/service/{quote(service_id)}", absent_ok=True)
        return status != 404

    async def update_check(self, check_id: str, passing: bool, output: str = "") -> None:
        await self._request("PUT", f"/v1/agent/check/update/{quote(check_id)}",
                            json={"Status": "passing" if passing else "critical", "Output": output})

    async def leader(self) -> str:
        _, body, _ = await self._request("GET", "/v1/status/leader")
        return body.decode().strip().strip('"')
