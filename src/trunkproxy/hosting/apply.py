"""The apply job (the seed's Anwenden > Telefonie > Ausführen): trunks + rules -> PJSIP file.

Reads the instance's trunk store, its sipproxy.json, the host's Consul KV key, and the host's
endpoints; decides per trunk (resolve.py); checks every proxy name resolves; then writes one
PJSIP file atomically, or nothing at all. Per trunk it logs exactly
`Will route trunk [telekom] via proxy [csphost01-ifens5.cs-proxy.service.pascom]`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from trunkproxy.config.model import Config
from trunkproxy.hosting.consul import ConsulClient, ConsulError, ConsulUnavailable
from trunkproxy.hosting.dnscheck import check_names
from trunkproxy.hosting.kvwatch import CACHE_NAME, parse_kv_value, read_cache, write_cache
from trunkproxy.hosting.pjsip import OUTPUT_NAME, PjsipSettings, masked_diff, render_pjsip, write_atomically
from trunkproxy.hosting.resolve import EndpointMap, Route, default_kv_key, resolve_routes
from trunkproxy.hosting.sipproxy_json import ProxyRule, SipProxyJsonError, parse_sipproxy_json
from trunkproxy.hosting.trunks import TrunkStore

__all__ = ["ApplyResult", "run_apply", "DEFAULT_SIPPROXY_JSON", "DEFAULT_OUTPUT_DIR", "default_store_path"]

log = logging.getLogger("trunkproxy.apply")
DEFAULT_SIPPROXY_JSON = Path("/etc/pascom/sipproxy.json")
DEFAULT_OUTPUT_DIR = Path("/etc/asterisk")
_UNSET = object()


def default_store_path(config: Config) -> Path:
    return config.state_path / "trunks.sqlite"


@dataclass
class ApplyResult:
    ok: bool
    """True only when everything was written (or, with dry_run, could have been)."""
    routes: list[Route] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    """The per-trunk log lines, in trunk order."""
    changed: bool = False
    diff: str = ""
    """Unified diff of the output file (passwords masked)."""
    written: list[Path] = field(default_factory=list)
    output: Path | None = None


async def run_apply(config: Config, *, output_dir: Path = DEFAULT_OUTPUT_DIR, store: TrunkStore | None = None,
                    sipproxy_json: Path | None = DEFAULT_SIPPROXY_JSON,
                    kv_rules: dict[str, ProxyRule] | None | object = _UNSET, consul_address: str | None = None,
                    check_dns: bool = True, dns_server: str | None = None, dns_timeout: float = 3.0,
                    dry_run: bool = False, settings: PjsipSettings = PjsipSettings(),
                    hostname: str | None = None, cache_path: Path | None = None) -> ApplyResult:
    """Apply once. `kv_rules`: rules already known (e.g. HostingLive.rules) or None for 'no KV';
    left unset, KV is read from Consul when consul.enabled (or `consul_address` is given)."""
    result = ApplyResult(ok=False, output=output_dir / OUTPUT_NAME)
    store = store or TrunkStore(default_store_path(config))
    if not store.path.exists():  # a wrong path must not write a file without trunks
        result.errors.append(f"trunk store {store.path} does not exist; add trunks with `trunkproxy trunk add` "
                             "or give the instance's store with --db")
        return _fail(result)
    trunks = store.list()
    file_rules = _read_file(sipproxy_json, result.errors)
    if kv_rules is _UNSET:
        kv_rules = await _read_kv(config, consul_address, cache_path, result.errors)
    if result.errors:
        return _fail(result)
    routes, errors = resolve_routes(trunks, file_rules, kv_rules, EndpointMap.from_config(config, hostname))  # type: ignore[arg-type]
    result.routes, result.errors = routes, errors
    if check_dns and routes:
        await _check_proxies(routes, dns_server, dns_timeout, result.errors)
    if result.errors:
        return _fail(result)

    for route in routes:
        line = route.log_line()
        result.lines.append(line)
        log.info(line)
        log.debug("trunk %s: %s", route.trunk.name, route.reason())
        if route.trunk.fallback:
            log.info("Trunk [%s] falls back to trunk [%s]", route.trunk.name, route.trunk.fallback)
    new = render_pjsip(routes, settings)
    target = output_dir / OUTPUT_NAME
    try:
        old = target.read_text(encoding="utf-8") if target.exists() else ""
    except OSError as exc:
        result.errors.append(f"{target}: cannot read ({exc.strerror}); check the permissions of --output")
        return _fail(result)
    result.changed = old != new
    result.diff = masked_diff(old, new, str(target))
    if dry_run:
        log.info("dry run: %s", f"{target} would change" if result.changed else f"{target} is up to date")
        result.ok = True
        return result
    if result.changed:
        try:
            result.written = write_atomically(output_dir, {OUTPUT_NAME: new}, mode=0o600)
        except OSError as exc:
            result.errors.append(f"{target}: cannot write ({exc.strerror or exc}); check --output and its permissions")
            return _fail(result)
        log.info("wrote %s (%d trunk(s))", target, len(routes))
    else:
        log.info("%s is up to date (%d trunk(s))", target, len(routes))
    result.ok = True
    return result


def _fail(result: ApplyResult) -> ApplyResult:
    for error in result.errors:
        log.error("%s", error)
    log.error("apply failed: nothing written; the previous trunk configuration stays in force")
    result.ok = False
    return result


def _read_file(path: Path | None, errors: list[str]) -> dict[str, ProxyRule] | None:
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        log.debug("%s does not exist: no instance rules", path)
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 text ({exc.reason})"
        errors.append(f"{path}: cannot read ({reason}); fix the file or its permissions, or remove it")
        return None
    try:
        return parse_sipproxy_json(text, str(path))
    except SipProxyJsonError as exc:
        errors.append(str(exc))
        return None


async def _read_kv(config: Config, address: str | None, cache_path: Path | None,
                   errors: list[str]) -> dict[str, ProxyRule] | None:
    if not (config.consul.enabled or address):
        return None
    key = default_kv_key(config)
    cache = cache_path if cache_path is not None else config.state_path / CACHE_NAME
    client = ConsulClient(address or config.consul.address, config.consul.token)
    try:
        raw = (await client.kv_get(key)).value
    except ConsulUnavailable as exc:
        found, raw = read_cache(cache, key)
        if not found:
            errors.append(f"{exc}; no last good copy of {key} in {cache} either: start Consul, "
                          "or run apply with --no-consul to ignore the host-wide rules")
            return None
        log.warning("%s; using the last good copy of %s from %s", exc, key, cache)
    except ConsulError as exc:
        errors.append(f"{exc}; cannot read {key}")
        return None
    else:
        try:
            rules = parse_kv_value(raw, key)
        except SipProxyJsonError as exc:
            errors.append(str(exc))
            return None
        try:
            write_cache(cache, key, raw)
        except OSError as exc:
            log.debug("cannot cache %s in %s: %s", key, cache, exc)
        return rules
    finally:
        await client.close()
    try:
        return parse_kv_value(raw, key)
    except SipProxyJsonError as exc:  # a cache we wrote ourselves was valid; this is defensive
        errors.append(f"{exc} (from the cache {cache})")
        return None


async def _check_proxies(routes: list[Route], server: str | None, timeout: float, errors: list[str]) -> None:
    names = sorted({route.proxy for route in routes if route.proxy})
    failures = await check_names(names, server, timeout)
    via = f"DNS server {server}" if server else "the system resolver"
    for name, reason in failures.items():
        users = [r for r in routes if r.proxy == name]
        wheres = dict.fromkeys(r.rule.where() if r.rule else f"trunk {r.trunk.name}'s interface setting"
                               for r in users)
        trunks = ", ".join(r.trunk.name for r in users)
        errors.append(f"{' and '.join(wheres)}: proxy {name!r} (trunk {trunks}) does not resolve via {via}: {reason}; "
                      "check that the endpoint runs and is registered in Consul, fix the name, "
                      "or pass --dns-server CONSUL:8600")
