"""The HTTP API: registrations, endpoints, /metrics. Every error is JSON with its status code.

    GET /api/registrations[?endpoint=E&trunk=T&state=S]   {"registrations": [...], "now": ts}
    GET /api/endpoints                                     {"endpoints": [...]}
    GET /api/media                                         the media relay (trunkproxy.media.monitor)
    GET /metrics                                           Prometheus text format

`endpoints_provider()` returns the supervisor's view of the endpoints (a list of dicts, or an
awaitable of one); `stats_provider()` is awaited and returns {endpoint name: result of Kamailio's
RPC `stats.get_statistics all`} (None or a missing name: no statistics for that endpoint).
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from trunkproxy.api import metrics
from trunkproxy.api.kamailio_stats import parse_statistics, sip_counters
from trunkproxy.registrations.monitor import RegistrationMonitor
from trunkproxy.registrations.state import State

log = logging.getLogger("trunkproxy.api")

EndpointsProvider = Callable[[], "list[dict[str, Any]] | Awaitable[list[dict[str, Any]]]"]
StatsProvider = Callable[[], Awaitable[dict[str, Any]]]

MONITOR = web.AppKey("monitor", RegistrationMonitor)
ENDPOINTS = web.AppKey("endpoints_provider", object)
STATS = web.AppKey("stats_provider", object)
STATS_TIMEOUT = web.AppKey("stats_timeout", float)
MEDIA = web.AppKey("media_provider", object)

_REGISTRATION_FILTERS = ("endpoint", "trunk", "state")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
    """HTTP errors as JSON; an unexpected exception is logged and answered 500, never shown."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return _error(exc.status, message, headers)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - the API must answer, not crash or leak a traceback
        log.exception("API request %s %s failed", request.method, request.path)
        return _error(500, "internal error; see the trunkproxy log")


async def _endpoints(app: web.Application) -> list[dict[str, Any]]:
    provider = app[ENDPOINTS]
    if provider is None:
        return []
    result = provider()
    if inspect.isawaitable(result):
        result = await result
    return list(result or [])


async def _statistics(app: web.Application) -> dict[str, Any]:
    provider = app[STATS]
    if provider is None:
        return {}
    try:
        return dict(await asyncio.wait_for(provider(), app[STATS_TIMEOUT]) or {})
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - /metrics still shows registrations without Kamailio
        log.warning("cannot read Kamailio statistics: %s", exc or type(exc).__name__)
        return {}


async def get_registrations(request: web.Request) -> web.Response:
    unknown = sorted(set(request.query) - set(_REGISTRATION_FILTERS))
    if unknown:
        raise web.HTTPBadRequest(text=f"unknown filter {unknown[0]!r}; use {', '.join(_REGISTRATION_FILTERS)}")
    filters: dict[str, Any] = {k: request.query[k] for k in ("endpoint", "trunk") if k in request.query}
    if "state" in request.query:
        try:
            filters["state"] = State(request.query["state"])
        except ValueError:
            choices = ", ".join(s.value for s in State)
            raise web.HTTPBadRequest(text=f"unknown state {request.query['state']!r}; use one of {choices}") from None
    monitor = request.app[MONITOR]
    return web.json_response({"registrations": monitor.snapshot(**filters), "now": monitor.clock()})


async def get_endpoints(request: web.Request) -> web.Response:
    monitor = request.app[MONITOR]
    endpoints = []
    for ep in await _endpoints(request.app):
        counts = {s.value: len(monitor.registrations(endpoint=ep.get("name"), state=s)) for s in State}
        endpoints.append({**ep, "registrations": counts})
    return web.json_response({"endpoints": endpoints})


async def get_metrics(request: web.Request) -> web.Response:
    app = request.app
    monitor = app[MONITOR]
    endpoints, raw_stats = await asyncio.gather(_endpoints(app), _statistics(app))
    counters = {name: sip_counters(parse_statistics(result)) for name, result in raw_stats.items() if result is not None}
    receiver = monitor.receiver
    snapshot = metrics.Snapshot(
        now=monitor.clock(), registrations=monitor.registrations(), endpoints=endpoints, counters=counters,
        events={"received": receiver.received, "malformed": receiver.malformed, "errors": receiver.errors},
        media=_media(app),
    )
    return web.Response(body=metrics.render(snapshot), headers={"Content-Type": metrics.CONTENT_TYPE})


def _media(app: web.Application) -> dict[str, Any] | None:
    provider = app[MEDIA]
    return provider() if provider is not None else None


async def get_media(request: web.Request) -> web.Response:
    media = _media(request.app)
    if media is None:
        raise web.HTTPNotFound(text="no endpoint relays media (docs/media.md)")
    return web.json_response(media)


def create_api_app(monitor: RegistrationMonitor, endpoints_provider: EndpointsProvider | None = None,
                   stats_provider: StatsProvider | None = None, *, stats_timeout: float = 2.0,
                   media_provider: Callable[[], dict[str, Any] | None] | None = None) -> web.Application:
    """The aiohttp application; serve it with `trunkproxy.api.server.ApiServer`.
    `media_provider()`: the media monitor's snapshot as a dict (None: media not relayed)."""
    app = web.Application(middlewares=[json_errors])
    app[MEDIA] = media_provider
    app[MONITOR] = monitor
    app[ENDPOINTS] = endpoints_provider
    app[STATS] = stats_provider
    app[STATS_TIMEOUT] = stats_timeout
    app.router.add_get("/api/registrations", get_registrations)
    app.router.add_get("/api/endpoints", get_endpoints)
    app.router.add_get("/api/media", get_media)
    app.router.add_get("/metrics", get_metrics)
    return app
