"""Wiring for ``serve`` and ``lookup``: settings -> router -> listeners, plus signals.

- :func:`load_routing_table` reads the exclusion file and static map (again on SIGHUP).
- :func:`build_router` makes the :class:`~onion_gateway.lookup.routing.Router` for a settings object.
- :func:`run_daemon` binds the listeners, logs one ``ready`` line, and serves until SIGTERM/SIGINT
  (graceful: stop accepting, drain pending lookups, exit) -- a second SIGTERM cuts the drain short.
  SIGHUP reloads the exclusion list and static map; a broken file keeps the old table and logs why.
  With a cache file, the cache is loaded right after the listeners bind (in chunks, answering
  meanwhile), saved every ``cache_save_interval_seconds`` when it changed, and once more at shutdown.
  With a metrics address, ``/metrics`` and ``/healthz`` are served (see :mod:`.metrics`).
- :func:`run` is the blocking entry point for the CLI: it runs :func:`run_daemon` on uvloop when
  uvloop is installed (the ``fast`` extra), else on the standard asyncio loop.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import signal
from collections.abc import Callable

from onion_gateway.config import ServeSettings, read_domain_list, read_static_map
from onion_gateway.errors import ConfigError, PostfixError
from onion_gateway.lookup.cache import CachePolicy, RouteCache
from onion_gateway.lookup.dns import SrvResolver
from onion_gateway.lookup.metrics import MetricsServer, Sources
from onion_gateway.lookup.pins import PinStore
from onion_gateway.lookup.routing import Router, RoutingTable, build_routing_table
from onion_gateway.lookup.server import Limits, MapProtocol, MapServer

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_SECONDS = 10.0
RESTORE_CHUNK_ROWS = 5000       # cache-file rows restored between two turns of the event loop


def postfix_own_domains(settings: ServeSettings) -> frozenset[str]:
    """The domains Postfix serves itself (see :func:`onion_gateway.postfix.own_domains`).

    :returns: the domains; empty (with a warning) when Postfix cannot be asked, or when
        ``exclude_postfix_domains`` is off.
    """
    if not settings.exclude_postfix_domains:
        return frozenset()
    from onion_gateway.postfix import own_domains

    try:
        domains, unlisted = own_domains(settings.postfix_config_dir)
    except PostfixError as exc:
        log.warning("cannot read Postfix's own domains, only configured exclusions apply: %s", exc)
        return frozenset()
    for table in unlisted:
        log.warning("cannot list the domains in %s: add them to exclude_domains", table)
    return frozenset(d for d in domains if d and not d.startswith("$"))


def load_routing_table(settings: ServeSettings) -> RoutingTable:
    """Read the exclusion list, Postfix's own domains and the static map named in *settings*.

    Own onion addresses (``own_onions``) are excluded too: routing to ourselves would loop the mail.

    :returns: a fresh :class:`RoutingTable`.
    :raises ConfigError: if a file cannot be read or holds an invalid domain or route.
    """
    file_domains = read_domain_list(settings.exclude_domains_file) if settings.exclude_domains_file else frozenset()
    routes = dict(read_static_map(settings.static_map)) if settings.static_map else {}
    routes.update(settings.static_routes)
    excluded = settings.exclude_domains | settings.own_onions | postfix_own_domains(settings)
    try:
        return build_routing_table(excluded, file_domains, settings.exclude_subdomains, routes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def build_router(settings: ServeSettings) -> Router:
    """Make the router for *settings* (resolver, routing table, transport).

    :raises ConfigError: if the routing files are bad or no resolver can be configured.
    """
    try:
        resolver = SrvResolver(settings.dns_servers, settings.dns_timeout_seconds)
    except Exception as exc:  # dnspython: NoResolverConfiguration and friends
        raise ConfigError(f"serve.dns_servers: no usable resolver ({exc}); give --dns-server") from exc
    pins = None
    if settings.pinning != "off":
        pins = PinStore(settings.pins_file, strict=settings.pinning == "strict",
                        strict_domains=settings.strict_pinning_domains)
    return Router(resolver, load_routing_table(settings), service=settings.service,
                  transport=settings.transport, max_nexthops=settings.max_nexthops,
                  require_dnssec=settings.require_dnssec, pins=pins)


def _group_id(name: str, where: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"{where}: no such group {name!r}") from None


def drop_privileges(user: str, group: str | None) -> tuple[int, int]:
    """Switch the process to *user* (and *group*, default the user's primary group) for good.

    Called after the listeners are bound, so a root start can bind and then run unprivileged.

    :returns: the ``(uid, gid)`` now in force.
    :raises ConfigError: if the user or group does not exist.
    :raises PermissionError: if the process may not switch (not root).
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"serve.user: no such user {user!r}") from None
    gid = _group_id(group, "serve.group") if group else entry.pw_gid
    os.setgroups([])
    os.setgid(gid)
    os.setuid(entry.pw_uid)
    return entry.pw_uid, gid


def build_cache(settings: ServeSettings, router: Router) -> RouteCache:
    """Make the (empty) :class:`RouteCache` for *settings* in front of *router*."""
    return RouteCache(router, CachePolicy(
        max_entries=settings.cache_max_entries,
        min_ttl_seconds=settings.cache_min_ttl_seconds,
        max_ttl_seconds=settings.cache_max_ttl_seconds,
        negative_max_ttl_seconds=settings.cache_negative_max_ttl_seconds,
        temp_fail_ttl_seconds=settings.cache_temp_fail_ttl_seconds,
        prefetch=settings.cache_prefetch,
        serve_stale_seconds=settings.cache_serve_stale_seconds))


def cache_fingerprint(settings: ServeSettings) -> str:
    """The settings a cached answer depends on; a cache file saved under others is not loaded."""
    return f"service={settings.service} transport={settings.transport} max_nexthops={settings.max_nexthops}"


def build_server(settings: ServeSettings, router: Router, cache: RouteCache | None = None) -> MapServer:
    """Make the (unstarted) :class:`MapServer` with the listeners and limits of *settings*.

    :param cache: the route cache to answer from; ``None`` asks DNS for every request.
    :raises ConfigError: if ``unix_socket_group`` names no group.
    """
    limits = Limits(max_connections=settings.max_connections,
                    idle_timeout_seconds=settings.idle_timeout_seconds,
                    request_deadline_seconds=settings.request_deadline_seconds,
                    tcp_max_request_bytes=settings.tcp_max_request_bytes,
                    socketmap_max_request_bytes=settings.socketmap_max_request_bytes,
                    socketmap_names=settings.socketmap_names)
    gid = _group_id(settings.unix_socket_group, "serve.unix_socket_group") if settings.unix_socket_group else None
    return MapServer(router, settings.tcp_table, settings.socketmap, limits,
                     unix_socket_mode=settings.unix_socket_mode, unix_socket_gid=gid, cache=cache)


def run(settings: ServeSettings) -> int:
    """Run :func:`run_daemon` to completion on uvloop if it is installed, else on asyncio's loop.

    :returns: what :func:`run_daemon` returns.
    :raises ConfigError: on bad routing files, resolver or metrics setup.
    :raises OSError: if a listener cannot be bound.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_daemon(settings))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_daemon(settings))


async def _save_cache(cache: RouteCache, settings: ServeSettings) -> None:
    from onion_gateway.lookup.persist import save_rows

    assert settings.cache_file is not None
    rows = cache.export()          # snapshot on the loop thread; the sqlite work runs in a thread
    cache.changed = False
    try:
        await asyncio.to_thread(save_rows, rows, settings.cache_file, cache_fingerprint(settings))
    except Exception as exc:       # OSError, sqlite3.Error: the daemon keeps serving
        cache.changed = True
        log.warning("cannot save the cache to %s: %s", settings.cache_file, exc)
        return
    log.debug("saved %d cache entries to %s", len(rows), settings.cache_file)


async def _load_then_save(cache: RouteCache, settings: ServeSettings) -> None:
    """Load the cache file (after the listeners are up: start-up is not delayed by a big file), then
    save the cache every ``cache_save_interval_seconds`` when it changed."""
    from onion_gateway.lookup.persist import read_chunks, restore_rows

    assert settings.cache_file is not None
    chunks = read_chunks(settings.cache_file, cache_fingerprint(settings), RESTORE_CHUNK_ROWS)
    loaded = 0
    while True:   # sqlite reads in a worker thread, restores on the loop; requests are answered between
        rows = await asyncio.to_thread(next, chunks, None)
        if rows is None:
            break
        loaded += restore_rows(cache, rows, settings.cache_file)
    log.info("loaded %d cache entries from %s", loaded, settings.cache_file)
    while True:
        await asyncio.sleep(settings.cache_save_interval_seconds)
        if cache.changed:
            await _save_cache(cache, settings)


async def run_daemon(settings: ServeSettings,
                     on_ready: Callable[[list[tuple[MapProtocol, str]]], None] | None = None) -> int:
    """Serve lookups until SIGTERM or SIGINT.

    :param settings: validated :class:`ServeSettings`.
    :param on_ready: called once with the bound listeners when every listener accepts.
    :returns: the number of connections whose lookups were cut off at shutdown (0 after a clean drain).
    :raises ConfigError: on bad routing files or resolver setup.
    :raises OSError: if a listener cannot be bound.
    """
    router = build_router(settings)
    cache = build_cache(settings, router)
    server = build_server(settings, router, cache)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    forced = asyncio.Event()

    def on_term() -> None:
        if stopping.is_set():
            log.warning("second termination signal: not waiting for pending lookups")
            forced.set()
        stopping.set()

    def on_hup() -> None:
        try:
            router.reload(load_routing_table(settings))
        except ConfigError as exc:
            log.error("reload failed, keeping the previous exclusions and static map: %s", exc)
            return
        log.info("reloaded: %d excluded domains, %d static routes",
                 len(router.table.exclude_domains), len(router.table.static_routes))

    metrics: MetricsServer | None = None
    if settings.metrics_address is not None:
        address = settings.metrics_address
        metrics = MetricsServer(address.host or "127.0.0.1", address.port or 0, server.stats, Sources(
            connections_open=lambda: server.connection_count, cache_entries=lambda: len(cache),
            refusals=lambda: dict(router.refusals), healthy=lambda: not stopping.is_set(),
            pin_changes=lambda: router.pins.changes if router.pins is not None else 0))
        await metrics.start()
        from onion_gateway.health.metrics import register_health_metrics   # issue 16: onion delivery health
        register_health_metrics(metrics.registry, settings)
    try:
        bound = await server.start()
    except BaseException:
        if metrics is not None:
            await metrics.stop()
        raise
    saver = loop.create_task(_load_then_save(cache, settings)) if settings.cache_file is not None else None
    if settings.user:
        try:
            uid, gid = drop_privileges(settings.user, settings.group)
        except BaseException:
            await server.stop(0)
            if metrics is not None:
                await metrics.stop()
            raise
        log.info("running as uid %d gid %d", uid, gid)
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for signum in handled:
        loop.add_signal_handler(signum, on_hup if signum == signal.SIGHUP else on_term)
    try:
        extra = f", metrics on http://{metrics.bound}/metrics" if metrics is not None else ""
        log.info("ready: %s%s", ", ".join(f"{kind.value} on {addr}" for kind, addr in bound), extra)
        if on_ready is not None:
            on_ready(bound)
        await stopping.wait()
        log.info("stopping: no new connections; draining pending lookups (up to %g s)", DRAIN_TIMEOUT_SECONDS)
        stop = asyncio.ensure_future(server.stop(DRAIN_TIMEOUT_SECONDS))
        forced_wait = asyncio.ensure_future(forced.wait())
        await asyncio.wait({stop, forced_wait}, return_when=asyncio.FIRST_COMPLETED)
        if stop.done():
            forced_wait.cancel()
            cut = stop.result()
        else:
            stop.cancel()
            cut = server.connection_count
        log.info("stopped: %d connections had lookups cut off", cut)
        return cut
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
        if saver is not None:
            saver.cancel()
            await _save_cache(cache, settings)
        if metrics is not None:
            await metrics.stop()
