"""Wiring for ``serve`` and ``lookup``: settings -> router -> listeners, plus signals.

- :func:`load_routing_table` reads the exclusion file and static map (again on SIGHUP).
- :func:`build_router` makes the :class:`~onion_gateway.lookup.routing.Router` for a settings object.
- :class:`Daemon` (as uvicorn's server): :meth:`~Daemon.start` binds the listeners (or takes the
  sockets systemd passed, see :mod:`.systemd`), logs one ``ready`` line and tells systemd ``READY=1``;
  :meth:`~Daemon.wait_for_signal` serves until SIGTERM/SIGINT (SIGHUP reloads the exclusion list and
  static map; a broken file keeps the old table and logs why); :meth:`~Daemon.stop` says
  ``STOPPING=1``, stops accepting, drains pending lookups (a second SIGTERM cuts the drain short) and
  cleans up everything in one place. With a cache file, the cache is loaded right after the listeners
  bind (in chunks, answering meanwhile), saved every ``cache_save_interval_seconds`` when it changed,
  and once more at shutdown; with a pins file the pins are loaded after it and written in batches.
- :func:`run_daemon` = start, wait for a signal, stop. :func:`run` is the blocking entry point for
  the CLI: it runs :func:`run_daemon` on uvloop when uvloop is installed (the ``fast`` extra), else on
  the standard asyncio loop.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import resource
import signal
from collections.abc import Callable

from onion_gateway.config import ServeSettings, read_domain_list, read_static_map
from onion_gateway.errors import ConfigError, PostfixError
from onion_gateway.lookup import systemd
from onion_gateway.lookup.cache import CachePolicy, RouteCache
from onion_gateway.lookup.dns import MAX_QUERIES_IN_FLIGHT, SrvResolver
from onion_gateway.lookup.metrics import MetricsServer, Sources
from onion_gateway.lookup.pins import PinStore
from onion_gateway.lookup.routing import Router, RoutingTable, build_routing_table
from onion_gateway.lookup.server import Limits, MapProtocol, MapServer

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_SECONDS = 10.0
RESTORE_CHUNK_ROWS = 5000       # cache-file rows restored between two turns of the event loop
SPARE_FILES = 64                # open files besides connections and DNS sockets (listeners, sqlite, logs)


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


def build_router(settings: ServeSettings, load_pins: bool = True) -> Router:
    """Make the router for *settings* (resolver, routing table, transport, pins).

    :param load_pins: read the pins file now (one-shot commands); the daemon loads it in the background.
    :raises ConfigError: if the routing files are bad, the pins file is unusable, or no resolver can
        be configured.
    """
    try:
        resolver = SrvResolver(settings.dns_servers, settings.dns_timeout_seconds)
    except Exception as exc:  # dnspython: NoResolverConfiguration and friends
        raise ConfigError(f"serve.dns_servers: no usable resolver ({exc}); give --dns-server") from exc
    pins = None
    if settings.pinning != "off":
        pins = PinStore(settings.pins_file, strict=settings.pinning == "strict",
                        strict_domains=settings.strict_pinning_domains, max_entries=settings.cache_max_entries,
                        create=not load_pins)
        if load_pins:
            pins.load_now()
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
    return RouteCache(router, CachePolicy.from_settings(settings))


def cache_fingerprint(settings: ServeSettings) -> str:
    """The settings a cached answer depends on; a cache file saved under others is not loaded."""
    return f"service={settings.service} transport={settings.transport} max_nexthops={settings.max_nexthops}"


def build_server(settings: ServeSettings, router: Router, cache: RouteCache | None = None) -> MapServer:
    """Make the (unstarted) :class:`MapServer` with the listeners and limits of *settings*.

    :param cache: the route cache to answer from; ``None`` asks DNS for every request.
    :raises ConfigError: if ``unix_socket_group`` names no group.
    """
    limits = Limits.from_settings(settings)
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


async def run_daemon(settings: ServeSettings,
                     on_ready: Callable[[list[tuple[MapProtocol, str]]], None] | None = None) -> int:
    """Serve lookups until SIGTERM or SIGINT: :meth:`Daemon.start`, :meth:`Daemon.wait_for_signal`,
    :meth:`Daemon.stop`.

    :param settings: validated :class:`ServeSettings`.
    :param on_ready: called once with the bound listeners when every listener accepts.
    :returns: the number of connections whose lookups were cut off at shutdown (0 after a clean drain).
    :raises ConfigError: on bad routing files, resolver setup or passed sockets.
    :raises OSError: if a listener cannot be bound.
    """
    daemon = Daemon(settings)
    bound = await daemon.start()
    try:
        if on_ready is not None:
            on_ready(bound)
        await daemon.wait_for_signal()
    finally:
        cut = await daemon.stop()
    return cut


def ensure_open_files(settings: ServeSettings) -> None:
    """Raise the soft open-files limit to what *settings* need, up to the hard limit, or warn.

    Needed: ``max_connections`` + :data:`~onion_gateway.lookup.dns.MAX_QUERIES_IN_FLIGHT` DNS sockets +
    :data:`SPARE_FILES` (the unit sets ``LimitNOFILE=8192``).
    """
    need = settings.max_connections + MAX_QUERIES_IN_FLIGHT + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < need:
        log.warning("open files limit %d is below the %d that max_connections = %d needs (raise LimitNOFILE "
                    "or lower max_connections)", soft, need, settings.max_connections)


class Daemon:
    """The lookup daemon: listeners, cache, pins, metrics, signals; start / wait_for_signal / stop.

    :param settings: validated :class:`ServeSettings`.
    :param passed_sockets: listening sockets passed by systemd (``None``: read them from the
        environment with :func:`~onion_gateway.lookup.systemd.listen_fds`).
    :raises ConfigError: (from the constructor) on bad routing files, resolver setup or pins file.
    """

    def __init__(self, settings: ServeSettings, passed_sockets=None) -> None:
        self.settings = settings
        self.router = build_router(settings, load_pins=False)
        self.cache = build_cache(settings, self.router)
        pins = self.router.pins
        if pins is not None and self.cache.enabled:
            pins.use_memory(self.cache)
            self.cache.on_evict = pins.evicted
        self.server = build_server(settings, self.router, self.cache)
        self._passed = passed_sockets
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._signals: list[int] = []
        self.metrics: MetricsServer | None = None
        self.bound: list[tuple[MapProtocol, str]] = []

    async def start(self) -> list[tuple[MapProtocol, str]]:
        """Start metrics and listeners, drop privileges, start the background tasks, tell systemd READY=1.

        :returns: the bound listeners ``[(protocol, address)]``.
        :raises ConfigError: if a passed socket matches no listener or metrics cannot start.
        :raises OSError: if a listener cannot be bound; everything started is stopped again.
        """
        settings = self.settings
        loop = asyncio.get_running_loop()
        ensure_open_files(settings)
        try:
            if settings.metrics_address is not None:
                address = settings.metrics_address
                router, cache, server = self.router, self.cache, self.server
                self.metrics = MetricsServer(address.host or "127.0.0.1", address.port or 0, server.stats, Sources(
                    connections_open=lambda: server.connection_count, cache_entries=lambda: len(cache),
                    refusals=lambda: dict(router.refusals), healthy=lambda: not self._stopping.is_set(),
                    pin_changes=lambda: router.pins.changes if router.pins is not None else 0))
                await self.metrics.start()
                from onion_gateway.health.metrics import register_health_metrics   # issue 16: delivery health
                register_health_metrics(self.metrics.registry, settings)
            passed = self._passed if self._passed is not None else systemd.listen_fds()
            inherited = systemd.match_listeners(self.server.addresses, passed)
            self.bound = await self.server.start(inherited)
            if settings.user:
                uid, gid = drop_privileges(settings.user, settings.group)
                log.info("running as uid %d gid %d", uid, gid)
        except BaseException:
            await self._cleanup(drain_timeout_seconds=0)
            raise
        if settings.cache_file is not None or self.router.pins is not None:
            self._tasks.append(loop.create_task(self._load_then_persist()))
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self._on_hup if signum == signal.SIGHUP else self._on_term)
            self._signals.append(signum)
        extra = f", metrics on http://{self.metrics.bound}/metrics" if self.metrics is not None else ""
        log.info("ready: %s%s", ", ".join(f"{kind.value} on {addr}" for kind, addr in self.bound), extra)
        systemd.notify("READY=1")
        return list(self.bound)

    async def wait_for_signal(self) -> None:
        """Return once SIGTERM or SIGINT arrived (or :meth:`request_stop` was called)."""
        await self._stopping.wait()

    def request_stop(self) -> None:
        """Begin shutdown, as SIGTERM does; a second call cuts the drain short."""
        self._on_term()

    async def stop(self) -> int:
        """Tell systemd STOPPING=1, stop accepting, drain pending lookups, save, clean up.

        :returns: the number of connections whose lookups were cut off (0 after a clean drain).
        """
        self._stopping.set()
        systemd.notify("STOPPING=1")
        log.info("stopping: no new connections; draining pending lookups (up to %g s)", DRAIN_TIMEOUT_SECONDS)
        cut = await self._cleanup(DRAIN_TIMEOUT_SECONDS)
        log.info("stopped: %d connections had lookups cut off", cut)
        return cut

    # -- internals -------------------------------------------------------------------------------
    def _on_term(self) -> None:
        if self._stopping.is_set():
            log.warning("second termination signal: not waiting for pending lookups")
            self._forced.set()
        self._stopping.set()

    def _on_hup(self) -> None:
        try:
            self.router.reload(load_routing_table(self.settings))
        except ConfigError as exc:
            log.error("reload failed, keeping the previous exclusions and static map: %s", exc)
            return
        log.info("reloaded: %d excluded domains, %d static routes",
                 len(self.router.table.exclude_domains), len(self.router.table.static_routes))

    async def _cleanup(self, drain_timeout_seconds: float) -> int:
        """Everything stop needs, in one place; safe after a partial start."""
        loop = asyncio.get_running_loop()
        stop = asyncio.ensure_future(self.server.stop(drain_timeout_seconds))
        forced = asyncio.ensure_future(self._forced.wait())
        await asyncio.wait({stop, forced}, return_when=asyncio.FIRST_COMPLETED)
        if stop.done():
            cut = stop.result()
        else:
            stop.cancel()
            cut = self.server.connection_count
        forced.cancel()
        for signum in self._signals:
            loop.remove_signal_handler(signum)
        self._signals.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        if self.settings.cache_file is not None:
            await _save_cache(self.cache, self.settings)
        if self.router.pins is not None:
            await asyncio.to_thread(self.router.pins.close)
        if self.metrics is not None:
            await self.metrics.stop()
            self.metrics = None
        return cut

    async def _load_then_persist(self) -> None:
        """Load the cache file, then the pins file (after the listeners are up: start-up is not delayed
        by big files), then save the cache every ``cache_save_interval_seconds`` when it changed and
        write pin changes every second."""
        settings, cache, pins = self.settings, self.cache, self.router.pins
        if settings.cache_file is not None:
            await _load_cache_file(cache, settings)
        if pins is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(pins.run()))
        if settings.cache_file is None:
            return
        while True:
            await asyncio.sleep(settings.cache_save_interval_seconds)
            if cache.changed:
                await _save_cache(cache, settings)


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


async def _load_cache_file(cache: RouteCache, settings: ServeSettings) -> None:
    """Restore the cache file in chunks: sqlite reads in a worker thread, restores on the loop."""
    from onion_gateway.lookup.persist import read_chunks, restore_rows

    assert settings.cache_file is not None
    chunks = read_chunks(settings.cache_file, cache_fingerprint(settings), RESTORE_CHUNK_ROWS)
    loaded = 0
    while True:   # requests are answered between chunks
        rows = await asyncio.to_thread(next, chunks, None)
        if rows is None:
            break
        loaded += restore_rows(cache, rows, settings.cache_file)
    log.info("loaded %d cache entries from %s", loaded, settings.cache_file)
