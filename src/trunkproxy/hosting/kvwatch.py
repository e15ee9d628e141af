"""Watch the host's outbound proxy rules in Consul KV with blocking queries; keep the last good ones.

A valid new value -> `on_rules(rules)`; an invalid one -> one error log naming key and line, the
previous rules stay; Consul unreachable -> one warning, exponential backoff, the previous rules stay.
The last good raw value is cached in a file so that `trunkproxy apply` can use it while Consul is down.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from trunkproxy.atomic import write_atomically
from trunkproxy.hosting.consul import Backoff, ConsulClient, ConsulError, ConsulUnavailable
from trunkproxy.hosting.sipproxy_json import ProxyRule, SipProxyJsonError, parse_sipproxy_json

__all__ = ["CACHE_NAME", "KvWatcher", "ConsulHealth", "kv_source", "read_cache", "write_cache"]

log = logging.getLogger("trunkproxy.hosting.consul")
CACHE_NAME = "consul-outboundproxy.json"
"""File in state_dir holding the last good KV value (read by apply while Consul is down)."""
_UNSEEN: Any = object()
RulesCallback = Callable[[dict[str, ProxyRule]], "Awaitable[None] | None"]


def kv_source(key: str) -> str:
    """How messages name a KV value: `consul:config/csphost01/system/outboundproxy`."""
    return f"consul:{key}"


class ConsulHealth:
    """Shared 'is Consul reachable' state so that an outage is warned about once, not per loop.

    An agent that flaps (down, up, down within `quiet` seconds, e.g. while shutting down) counts as
    one outage: the second 'down' is logged at debug level.
    """

    def __init__(self, address: str, quiet: float = 60.0) -> None:
        self.address = address
        self.quiet = quiet
        self.reachable: bool | None = None
        self._warned_at: float | None = None

    def down(self, exc: Exception, what: str) -> None:
        now = time.monotonic()
        if self.reachable is not False and (self._warned_at is None or now - self._warned_at >= self.quiet):
            self._warned_at = now
            log.warning("%s (%s); the last good outbound proxy configuration stays in force, "
                        "retrying with backoff", exc, what)
        else:
            log.debug("still unreachable: %s", exc)
        self.reachable = False

    def up(self) -> None:
        if self.reachable is False:
            log.info("Consul at %s reachable again", self.address)
        self.reachable = True


class KvWatcher:
    """Blocking-query loop over one KV key; `rules` is the last good configuration ({} = no rules)."""

    def __init__(self, client: ConsulClient, key: str, on_rules: RulesCallback | None = None, *,
                 wait: float = 30.0, backoff: Backoff | None = None, cache_path: Path | None = None,
                 health: ConsulHealth | None = None) -> None:
        self.client = client
        self.key = key
        self.on_rules = on_rules
        self.wait = wait
        self.backoff = backoff or Backoff()
        self.cache_path = cache_path
        self.health = health or ConsulHealth(client.address)
        self.rules: dict[str, ProxyRule] | None = None
        """None until the first successful read."""
        self.last_error: str | None = None
        self.ready = asyncio.Event()
        """Set after the first answer from Consul (valid or not)."""
        self._last_raw: bytes | None | object = _UNSEEN

    async def run(self) -> None:
        """Until cancelled."""
        index = 0
        while True:
            try:
                kv = await self.client.kv_get(self.key, index=index or None, wait=self.wait)
            except ConsulUnavailable as exc:
                self.health.down(exc, f"watching {self.key}")
                index = 0  # the agent may come back restarted with lower indexes: first read must not block
                await asyncio.sleep(self.backoff.next())
                continue
            except ConsulError as exc:
                if self.last_error != str(exc):
                    log.error("%s; keeping the last good outbound proxy configuration", exc)
                self.last_error = str(exc)
                index = 0
                await asyncio.sleep(self.backoff.next())
                continue
            self.health.up()
            self.backoff.reset()
            if kv.index < index or kv.index <= 0:
                index = 0  # Consul's index went backwards (agent restarted): start over
                await asyncio.sleep(0.1)
            else:
                index = kv.index
            await self.consider(kv.value)
            self.ready.set()

    async def consider(self, raw: bytes | None) -> None:
        """One value read from Consul: parse, and pass it on when valid and different."""
        if raw == self._last_raw:
            return
        self._last_raw = raw
        try:
            rules = parse_kv_value(raw, self.key)
        except SipProxyJsonError as exc:
            self.last_error = str(exc)
            log.error("%s; the previous good configuration stays in force", exc)
            return
        self.last_error = None
        if self.cache_path is not None:
            try:
                write_cache(self.cache_path, self.key, raw)
            except OSError as exc:
                log.warning("cannot write %s: %s; apply will not be able to use it while Consul is down",
                            self.cache_path, exc)
        if rules == self.rules:
            return
        self.rules = rules
        log.info("outbound proxy rules from %s: %s", kv_source(self.key), _describe(rules))
        if self.on_rules is not None:
            try:
                result = self.on_rules(rules)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # the callback's bug must not stop the watch
                log.exception("on_rules callback failed for %s", kv_source(self.key))


def parse_kv_value(raw: bytes | None, key: str) -> dict[str, ProxyRule]:
    if raw is None:
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipProxyJsonError(kv_source(key), f"is not UTF-8 text (byte {exc.start})",
                                fix=f"store the JSON as text: consul kv put {key} @sipproxy.json") from exc
    return parse_sipproxy_json(text, kv_source(key))


def write_cache(path: Path, key: str, raw: bytes | None) -> None:
    """Remember the last good raw value of `key` (None = key absent)."""
    text = json.dumps({"key": key, "value": None if raw is None else raw.decode("utf-8")})
    write_atomically(path.parent, {path.name: text + "\n"}, mode=0o644)


def read_cache(path: Path, key: str) -> tuple[bool, bytes | None]:
    """(found, raw) for `key` from the cache file; found False if there is no usable cache."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False, None
    if not isinstance(data, dict) or data.get("key") != key:
        return False, None
    value = data.get("value")
    return True, (value.encode("utf-8") if isinstance(value, str) else None)


def _describe(rules: dict[str, ProxyRule]) -> str:
    if not rules:
        return "none"
    return "; ".join(f"{host} via {rule.proxy}" + (f" ({', '.join(rule.option_lines)})" if rule.option_lines else "")
                     for host, rule in sorted(rules.items()))

