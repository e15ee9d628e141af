"""Hosting mode while the proxy runs: register endpoints in Consul, watch the host's KV rules.

    live = HostingLive(config, [("ifens5", "10.0.3.1", 5060)], on_rules=supervisor.force_rules)
    await live.start()      # returns at once; Consul may be down, it retries
    ...
    await live.stop()       # deregisters the endpoints

Each endpoint becomes Consul service `cs-proxy` (config.consul.service) with ID
`cs-proxy-csphost01-ifens5`, tag `csphost01-ifens5`, its address and port and one health
check, so that `csphost01-ifens5.cs-proxy.service.pascom` resolves through Consul's DNS.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal

from trunkproxy.config.model import Config
from trunkproxy.hosting.consul import Backoff, ConsulClient, ConsulError, ConsulUnavailable
from trunkproxy.hosting.kvwatch import CACHE_NAME, ConsulHealth, KvWatcher, RulesCallback
from trunkproxy.hosting.resolve import default_kv_key, host_name
from trunkproxy.hosting.sipproxy_json import ProxyRule

__all__ = ["HostingLive", "ServiceEndpoint", "CACHE_NAME", "service_definition"]

log = logging.getLogger("trunkproxy.hosting.consul")


@dataclass(frozen=True)
class ServiceEndpoint:
    """A running interface endpoint as Consul should know it: where PBX instances send to."""

    name: str
    """Endpoint name, `ifens5`."""
    address: str
    port: int


def service_definition(endpoint: ServiceEndpoint, hostname: str, service: str, check: str,
                       check_interval: float, ttl: float) -> dict:
    """The body of PUT /v1/agent/service/register for one endpoint (pure; tests read it)."""
    tag = f"{hostname}-{endpoint.name}"
    service_id = f"{service}-{tag}"
    definition = {"ID": service_id, "Name": service, "Tags": [tag], "Address": endpoint.address,
                  "Port": endpoint.port, "Meta": {"endpoint": endpoint.name, "host": hostname}}
    hostport = f"[{endpoint.address}]:{endpoint.port}" if ":" in endpoint.address else f"{endpoint.address}:{endpoint.port}"
    if check == "tcp":
        # Registered as passing: only running endpoints are registered, and DNS should answer at once.
        body = {"CheckID": f"{service_id}-sip", "Name": f"SIP TCP {hostport}", "TCP": hostport,
                "Interval": f"{check_interval:g}s", "Timeout": "2s", "Status": "passing",
                "DeregisterCriticalServiceAfter": "10m"}
    else:
        body = {"CheckID": f"{service_id}-sip", "Name": f"endpoint {endpoint.name} alive", "TTL": f"{ttl:g}s",
                "Status": "passing", "DeregisterCriticalServiceAfter": "10m"}
    definition["Check"] = body
    return definition


class HostingLive:
    """Consul side of hosting mode for the running proxy. No-op when `config.consul.enabled` is false."""

    def __init__(self, config: Config, endpoints: Iterable[tuple[str, str, int]],
                 on_rules: RulesCallback | None = None, *, hostname: str | None = None,
                 check: Literal["tcp", "ttl"] = "tcp", check_interval: float = 10.0, ttl: float = 30.0,
                 healthy: Callable[[str], bool] | None = None, wait: float = 30.0, resync_interval: float = 15.0,
                 cache_path: Path | None = None, backoff: Backoff | None = None) -> None:
        self.config = config
        self.hostname = (hostname or host_name(config)).lower()
        self.endpoints = [ServiceEndpoint(*e) for e in endpoints]
        self.key = default_kv_key(config)
        self.check, self.check_interval, self.ttl = check, check_interval, ttl
        self.healthy = healthy
        self.resync_interval = resync_interval
        self.client = ConsulClient(config.consul.address, config.consul.token)
        self.health = ConsulHealth(self.client.address)
        cache = cache_path if cache_path is not None else config.state_path / CACHE_NAME
        self.watcher = KvWatcher(self.client, self.key, on_rules, wait=wait, backoff=backoff,
                                 cache_path=cache, health=self.health)
        self._registered: set[str] = set()
        self._tasks: list[asyncio.Task] = []

    @property
    def rules(self) -> dict[str, ProxyRule]:
        """The last good rules from KV ({} before the first read or when the key is absent)."""
        return dict(self.watcher.rules or {})

    @property
    def consul_reachable(self) -> bool | None:
        return self.health.reachable

    async def start(self) -> None:
        if not self.config.consul.enabled:
            log.info("consul.enabled is false: no service registration, no KV watch")
            return
        log.info("watching %s at %s; registering %d endpoint(s) as %s", self.key, self.client.address,
                 len(self.endpoints), self.config.consul.service)
        self._tasks = [asyncio.create_task(self.watcher.run(), name="consul-kv-watch"),
                       asyncio.create_task(self._keep_registered(), name="consul-registration")]

    async def wait_ready(self, timeout: float) -> bool:
        """True once the KV key has been read once (within `timeout` seconds)."""
        try:
            await asyncio.wait_for(self.watcher.ready.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def set_endpoints(self, endpoints: Iterable[tuple[str, str, int]]) -> None:
        """Endpoints started or stopped while running: register the new ones, deregister the gone ones."""
        new = [ServiceEndpoint(*e) for e in endpoints]
        gone = {self._service_id(e) for e in self.endpoints} - {self._service_id(e) for e in new}
        self.endpoints = new
        if not self.config.consul.enabled:
            return
        for service_id in gone:
            await self._deregister(service_id)
        await self._register_missing()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        for service_id in sorted(self._registered):
            await self._deregister(service_id)
        await self.client.close()

    # ------------------------------------------------------------------------------------
    def _service_id(self, endpoint: ServiceEndpoint) -> str:
        return f"{self.config.consul.service}-{self.hostname}-{endpoint.name}"

    async def _deregister(self, service_id: str) -> None:
        try:
            await self.client.deregister_service(service_id)
            log.info("deregistered %s from Consul", service_id)
        except ConsulError as exc:
            log.warning("could not deregister %s: %s (Consul removes it after its check stays critical)",
                        service_id, exc)
        self._registered.discard(service_id)

    async def _register_missing(self) -> None:
        for endpoint in self.endpoints:
            service_id = self._service_id(endpoint)
            if service_id in self._registered and await self.client.service_registered(service_id):
                continue
            definition = service_definition(endpoint, self.hostname, self.config.consul.service, self.check,
                                             self.check_interval, self.ttl)
            await self.client.register_service(definition)
            self._registered.add(service_id)
            log.info("registered %s in Consul as %s.%s.service.%s (%s:%d)", service_id, definition["Tags"][0],
                     self.config.consul.service, self.config.consul.domain, endpoint.address, endpoint.port)

    async def _report_ttl(self) -> None:
        for endpoint in self.endpoints:
            ok = self.healthy(endpoint.name) if self.healthy else True
            await self.client.update_check(f"{self._service_id(endpoint)}-sip", ok,
                                           "endpoint running" if ok else "endpoint not healthy")

    async def _keep_registered(self) -> None:
        """Register, then re-check every resync_interval (a restarted agent forgets services)."""
        backoff = Backoff()
        interval = min(self.resync_interval, self.ttl / 3) if self.check == "ttl" else self.resync_interval
        while True:
            try:
                await self._register_missing()
                if self.check == "ttl":
                    await self._report_ttl()
            except ConsulUnavailable as exc:
                self.health.down(exc, "registering endpoints")
                await asyncio.sleep(backoff.next())
                continue
            except ConsulError as exc:
                log.error("Consul refused the service registration: %s", exc)
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            self.health.up()
            await asyncio.sleep(interval)
