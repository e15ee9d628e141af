"""`trunkproxy run`: one Kamailio per interface endpoint, supervised, plus the control plane."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket

from trunkproxy.config.model import Config
from trunkproxy.kamailio.process import kamailio_argv
from trunkproxy.kamailio.render import (
    InterfaceError,
    ResolvedEndpoint,
    kamailio_cfg,
    port_problems,
    resolve_endpoint,
    rtpengine_installed,
    settings_json,
)
from trunkproxy.media.daemon import MediaRelay, MediaRelayError, media_argv
from trunkproxy.supervised import SupervisedProcess
from trunkproxy.atomic import write_atomically
from trunkproxy.kamailio.rpc import RpcError, rpc_call
from trunkproxy.registrations import paths as registration_paths
from trunkproxy.registrations.receiver import ReceiverError
from trunkproxy.secret import load_or_create_secret

log = logging.getLogger("trunkproxy.supervisor")


class StartupError(Exception):
    pass


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.hostname = config.proxy.hostname or socket.gethostname().split(".")[0]
        self.endpoints: list[ResolvedEndpoint] = []
        self.processes: dict[str, SupervisedProcess] = {}
        self.media: MediaRelay | None = None
        self.secret = b""
        self.provider_overrides: dict[str, dict] = {}
        self.events_socket = str(registration_paths.socket_path(config.state_path))

    def consul_name(self, endpoint_name: str) -> str:
        c = self.config.consul
        return f"{self.hostname}-{endpoint_name}.{c.service}.service.{c.domain}"

    def prepare(self) -> None:
        if shutil.which(self.config.proxy.kamailio_binary) is None:
            raise StartupError(f"{self.config.proxy.kamailio_binary!r} not found: install Debian's kamailio and "
                               "kamailio-python3-modules (scripts/install-system-deps does)")
        self.secret = load_or_create_secret(self.config.state_path)
        self.endpoints, configs = self._render(self.config)
        for resolved in self.endpoints:
            self.write_settings(resolved)
            write_atomically(resolved.run_dir, {resolved.config_path.name: configs[resolved.name]}, mode=0o644)

    def _render(self, config: Config) -> tuple[list[ResolvedEndpoint], dict[str, str]]:
        """Resolve every endpoint's interface and render its Kamailio config (writes nothing)."""
        if not config.endpoints:
            raise StartupError("no [[endpoints]] configured: add at least one (see docs/configuration.md)")
        if not rtpengine_installed(config):
            wanted = [e.endpoint_name for e in config.endpoints if e.relay_setting(config.media) is True]
            if wanted:
                raise StartupError(f"endpoint {wanted[0]}: media relay is on but {config.media.binary!r} is not "
                                   "installed: install Debian's rtpengine-daemon (scripts/install-system-deps "
                                   "does), or set [media] relay = \"auto\" or false")
            if config.media.relay == "auto":
                log.warning("media is not relayed (RTP goes directly between PBX and provider): %r is not "
                            "installed; install Debian's rtpengine-daemon", config.media.binary)
        endpoints, configs = [], {}
        for endpoint in config.endpoints:
            try:
                resolved = resolve_endpoint(config, endpoint)
            except InterfaceError as exc:
                raise StartupError(f"endpoint {endpoint.endpoint_name}: {exc}") from exc
            resolved.run_dir.mkdir(parents=True, exist_ok=True)
            endpoints.append(resolved)
            configs[resolved.name] = kamailio_cfg(config, resolved, [self.consul_name(resolved.name)])
        return endpoints, configs

    async def reload(self, new: Config) -> None:
        """Apply a changed configuration while running (SIGHUP). Provider settings change live;
        an endpoint whose Kamailio config changed is restarted; the rest keeps running."""
        old = self.config
        for section in ("api", "consul"):
            if getattr(new, section) != getattr(old, section):
                log.warning("reload: [%s] changed; it takes effect when trunkproxy is restarted", section)
        if new.proxy.state_dir != old.proxy.state_dir:
            log.warning("reload: proxy.state_dir changed; it takes effect when trunkproxy is restarted")
            new = new.model_copy(update={"proxy": new.proxy.model_copy(update={"state_dir": old.proxy.state_dir})})
        try:
            endpoints, configs = self._render(new)
        except StartupError as exc:
            log.error("reload refused, the running configuration stays in force: %s", exc)
            return
        self.config = new
        await self._restart_media_if_changed(endpoints)
        names = {r.name for r in endpoints}
        for name in [n for n in self.processes if n not in names]:
            log.info("reload: endpoint %s removed", name)
            await self.processes.pop(name).stop()
        self.endpoints = endpoints
        for resolved in endpoints:
            self.write_settings(resolved)
            current = resolved.config_path.read_text() if resolved.config_path.exists() else None
            if resolved.name in self.processes and current == configs[resolved.name]:
                continue
            write_atomically(resolved.run_dir, {resolved.config_path.name: configs[resolved.name]}, mode=0o644)
            if resolved.name in self.processes:
                log.info("reload: endpoint %s changed; restarting its kamailio", resolved.name)
                await self.processes.pop(resolved.name).stop()
            else:
                log.info("reload: endpoint %s added", resolved.name)
            await self._start_endpoint(resolved)
            try:
                await self._wait_ready(resolved)
            except StartupError as exc:
                log.error("reload: %s", exc)  # its supervisor keeps restarting it
        log.info("reload done: %d endpoint(s), providers: %s", len(endpoints),
                 ", ".join(sorted(new.providers)) or "none")

    def write_settings(self, resolved: ResolvedEndpoint) -> None:
        text = settings_json(self.config, resolved, self.secret, self.events_socket, self.provider_overrides,
                             [self.consul_name(resolved.name)])
        write_atomically(resolved.run_dir, {resolved.settings_path.name: text}, mode=0o600)

    def apply_proxy_rules(self, rules: dict) -> None:
        """Consul KV's sipproxy.json rules reach the running endpoints: forced transport per registrar."""
        overrides = {}
        for host, rule in rules.items():
            transport = rule.forced().transport
            if transport:
                overrides[host.split(":")[0].lower()] = {"transport": transport}
        if overrides != self.provider_overrides:
            self.set_provider_overrides(overrides)

    def set_provider_overrides(self, overrides: dict[str, dict]) -> None:
        """Live change of forced provider settings (e.g. transport=tcp from Consul KV)."""
        self.provider_overrides = overrides
        for resolved in self.endpoints:
            self.write_settings(resolved)
        log.info("provider settings updated on %d endpoint(s): %s", len(self.endpoints),
                 ", ".join(sorted(overrides)) or "none")

    def _media_argv(self, endpoints: list[ResolvedEndpoint]) -> list[str] | None:
        interfaces = [i for r in endpoints if r.relays_media for i in r.media_interfaces]
        return media_argv(self.config, interfaces) if interfaces else None

    async def _start_media(self, argv: list[str] | None) -> None:
        """The host's rtpengine, before the Kamailios that use it."""
        if argv is None:
            return
        self.media = MediaRelay(argv, self.config.media.control_port)
        try:
            await self.media.start()
        except MediaRelayError as exc:
            raise StartupError(f"media relay: {exc}") from exc

    async def _restart_media_if_changed(self, endpoints: list[ResolvedEndpoint]) -> None:
        argv = self._media_argv(endpoints)
        if (self.media.argv if self.media else None) == argv:
            return
        if self.media is not None:
            log.warning("reload: the media relay's interfaces or ports changed; restarting rtpengine "
                        "(calls in progress lose their media)")
            await self.media.stop()
            self.media = None
        try:
            await self._start_media(argv)
        except StartupError as exc:
            log.error("reload: %s", exc)

    async def start(self) -> None:
        # after the control plane started: a second trunkproxy on this state is told as such
        busy = port_problems(self.endpoints)
        if busy:
            raise StartupError("; ".join(busy))
        await self._start_media(self._media_argv(self.endpoints))
        for resolved in self.endpoints:
            await self._start_endpoint(resolved)
        for resolved in self.endpoints:
            await self._wait_ready(resolved)

    async def _start_endpoint(self, resolved: ResolvedEndpoint) -> None:
        proxy = self.config.proxy
        env = dict(os.environ, TRUNKPROXY_ENDPOINT_SETTINGS=str(resolved.settings_path))
        argv = kamailio_argv(proxy.kamailio_binary, resolved.config_path, resolved.run_dir, proxy.shm_mb, proxy.pkg_mb)
        process = SupervisedProcess(f"endpoint {resolved.name}", "kamailio", argv, env)
        self.processes[resolved.name] = process
        await process.start()

    async def _wait_ready(self, resolved: ResolvedEndpoint, timeout: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.processes[resolved.name].status.state != "running":
                await asyncio.sleep(0.2)
                continue
            try:
                await rpc_call(resolved.rpc_socket, "core.version", timeout=0.5)
                ep = resolved.endpoint
                log.info("endpoint %s ready: internal %s:%d, external %s:%d (%s)", resolved.name,
                         ep.internal_address, ep.internal_port, resolved.external_address, ep.external_port,
                         ",".join(ep.transports))
                return
            except RpcError:
                await asyncio.sleep(0.2)
        raise StartupError(f"endpoint {resolved.name}: kamailio did not come up within {timeout:.0f}s "
                           "(see its log lines above)")

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.processes.values()), return_exceptions=True)
        if self.media is not None:
            await self.media.stop()

    def endpoint_status(self) -> list[dict]:
        out = []
        for resolved in self.endpoints:
            ep = resolved.endpoint
            process = self.processes.get(resolved.name)
            status = process.status if process else None
            out.append({
                "name": resolved.name,
                "interface": ep.interface,
                "internal": f"{ep.internal_address}:{ep.internal_port}",
                "external": f"{resolved.external_address}:{ep.external_port}",
                "transports": list(ep.transports),
                "media": "relayed" if resolved.relays_media else "direct",
                "consul_name": self.consul_name(resolved.name),
                "pid": status.pid if status else None,
                "state": status.state if status else "stopped",
                "uptime_s": status.uptime() if status else None,
                "restarts": status.restarts if status else 0,
            })
        return out

    async def kamailio_stats(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for resolved in self.endpoints:
            try:
                stats = await rpc_call(resolved.rpc_socket, "stats.get_statistics", "all")
                tables = await rpc_call(resolved.rpc_socket, "htable.stats")
            except RpcError as exc:
                log.debug("stats of %s unavailable: %s", resolved.name, exc)
                continue
            out[resolved.name] = list(stats or []) + dialog_statistics(tables)
        return out


def dialog_statistics(tables: object) -> list[str]:
    """The endpoint's active dialogs (items of its tp_dlg htable: confirmed by the ACK to a
    2xx, removed by the BYE) as a statistics line, from RPC `htable.stats`."""
    for table in tables if isinstance(tables, list) else []:
        if isinstance(table, dict) and table.get("name") == "tp_dlg" and isinstance(table.get("all"), int):
            return [f"trunkproxy:active_dialogs = {table['all']}"]
    return []


class ControlPlane:
    """Everything `trunkproxy run` runs beside the Kamailios: monitor, API, keepalives."""

    def __init__(self, supervisor: Supervisor) -> None:
        from trunkproxy.keepalive import KeepaliveTargets
        from trunkproxy.registrations.monitor import RegistrationMonitor

        self.supervisor = supervisor
        config = supervisor.config
        self.keepalive_targets = KeepaliveTargets()
        self.monitor = RegistrationMonitor(config.state_path, socket_path=supervisor.events_socket,
                                           attribute_trunk=RegistrationMonitor.trunk_store_lookup(config.state_path),
                                           listeners=[self.keepalive_targets.observe])
        self.api = None
        self.hosting = None
        self.media_monitor = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        import time

        from trunkproxy.api.app import create_api_app
        from trunkproxy.api.server import ApiServer
        from trunkproxy.keepalive import run_keepalives

        config = self.supervisor.config
        await self.monitor.start()
        relaying = [r.name for r in self.supervisor.endpoints if r.relays_media]
        if relaying:
            from trunkproxy.media.monitor import MediaMonitor
            from trunkproxy.media.ng import NgClient
            from trunkproxy.media.plan import CONTROL_HOST

            self.media_monitor = MediaMonitor(NgClient(CONTROL_HOST, config.media.control_port), relaying,
                                              config.media.poll_interval_s, config.media.one_way_alarm_s)
            self._tasks.append(asyncio.create_task(self.media_monitor.run(), name="media-monitor"))
        if config.api.enabled:
            media = (lambda: self.media_monitor.snapshot.as_dict()) if self.media_monitor else None
            app = create_api_app(self.monitor, self.supervisor.endpoint_status, self.supervisor.kamailio_stats,
                                 media_provider=media)
            self.api = ApiServer(app, config.api.listen, config.api.port)
            await self.api.start()
            log.info("HTTP API on %s (/api/registrations, /api/endpoints, /api/media, /metrics)", self.api.url)
        for resolved in self.supervisor.endpoints:
            interval = resolved.endpoint.keepalive_interval
            if interval > 0:
                self._tasks.append(asyncio.create_task(run_keepalives(
                    resolved.name, resolved.rpc_socket, interval, self.keepalive_targets, time.time)))

    async def start_hosting(self) -> None:
        """Consul: register the running endpoints, watch the host's KV rules (if enabled)."""
        if not self.supervisor.config.consul.enabled:
            return
        from trunkproxy.hosting.live import HostingLive

        endpoints = [(r.name, r.endpoint.internal_address, r.endpoint.internal_port) for r in self.supervisor.endpoints]
        check = "tcp" if all("tcp" in r.endpoint.transports for r in self.supervisor.endpoints) else "ttl"
        self.hosting = HostingLive(self.supervisor.config, endpoints, self.supervisor.apply_proxy_rules,
                                   hostname=self.supervisor.hostname, check=check)
        await self.hosting.start()

    async def stop(self) -> None:
        if self.hosting is not None:
            await self.hosting.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.api is not None:
            await self.api.stop()
        await self.monitor.stop()


async def _reload(supervisor: Supervisor, load_config) -> None:
    from trunkproxy.config.load import ConfigError

    try:
        new = load_config()
    except ConfigError as exc:
        log.error("reload refused, the running configuration stays in force:\n%s", exc)
        return
    await supervisor.reload(new)


def _limit_core_files(config: Config) -> None:
    """Core files off unless [proxy] core_dumps: every daemon inherits the limit."""
    import resource

    if not config.proxy.core_dumps:
        _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))


async def _main(config: Config, load_config=None) -> int:
    _limit_core_files(config)
    supervisor = Supervisor(config)
    try:
        supervisor.prepare()
    except (StartupError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_event.set)
    reloads: list[asyncio.Task] = []
    if load_config is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: reloads.append(
            asyncio.create_task(_reload(supervisor, load_config))))
    control = ControlPlane(supervisor)
    try:
        await control.start()
        await supervisor.start()
        await control.start_hosting()
        log.info("trunkproxy running with %d endpoint(s); SIGHUP reloads the configuration, SIGTERM or "
                 "Ctrl-C stops it", len(supervisor.endpoints))
        await stop_event.wait()
        log.info("stopping")
        return 0
    except (StartupError, ReceiverError, OSError) as exc:
        log.error("%s", exc)  # expected failures (already running, port in use): one line, no traceback
        return 1
    finally:
        for task in reloads:
            task.cancel()
        await supervisor.stop()
        await control.stop()


def run_forever(config: Config, load_config=None) -> int:
    """Run until SIGTERM/SIGINT; `load_config()` re-reads the configuration on SIGHUP."""
    return asyncio.run(_main(config, load_config))
