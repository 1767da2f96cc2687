"""asyncio listeners for the lookup daemon: they own sockets and connections, nothing else.

One :class:`MapConnection` per client connection (asyncio Protocol, no streams: the per-request path
is a decoder call, a routing call, a cache lookup and one ``write``). Requests are answered in the
order they arrived, also when pipelined; requests that need DNS are handed to one worker task per
connection, the others (cache hits included) are answered at once when nothing is pending ahead of them.

Lifecycle (:class:`MapServer`): ``start()`` binds every listener and returns once all accept;
``stop()`` stops accepting, lets pending lookups finish within a drain timeout, then closes every
connection and reports how many lookups were cut off.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from onion_gateway.address import ListenAddress
from onion_gateway.errors import FramingError
from onion_gateway.lookup import codec
from onion_gateway.lookup.cache import RouteCache
from onion_gateway.lookup.metrics import Stats
from onion_gateway.lookup.result import LookupResult, Outcome
from onion_gateway.lookup.routing import Router

log = logging.getLogger(__name__)

MAX_PIPELINED_REQUESTS = 128       # requests queued on one connection before we stop reading from it
FINAL_LINGER_SECONDS = 1.0         # after a framing error: time between our EOF and the close


class MapProtocol(enum.Enum):
    """The two Postfix lookup protocols the daemon speaks."""

    TCP_TABLE = "tcp_table"
    SOCKETMAP = "socketmap"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits.

    :param max_connections: connections served at once, over all listeners; past it new ones are closed.
    :param idle_timeout_seconds: a connection with nothing pending and no bytes for this long is closed.
    :param tcp_max_request_bytes: the longest tcp_table request line (bytes).
    :param socketmap_max_request_bytes: the largest socketmap netstring payload (bytes).
    :param socketmap_names: accepted socketmap NAMEs; empty accepts any.
    :param request_deadline_seconds: a request whose first byte arrived this long ago and is still
        incomplete (a slow or stuck sender) gets a protocol error and its connection is closed.
    """

    max_connections: int = 1000
    idle_timeout_seconds: float = 300.0
    request_deadline_seconds: float = 10.0
    tcp_max_request_bytes: int = 4096
    socketmap_max_request_bytes: int = 10_000
    socketmap_names: frozenset[str] = frozenset()


class MapConnection(asyncio.Protocol):
    """One client connection speaking tcp_table(5) or socketmap_table(5).

    :param server: the owning :class:`MapServer` (router, limits, connection registry).
    :param kind: which :class:`MapProtocol` this listener speaks.
    """

    def __init__(self, server: "MapServer", kind: MapProtocol) -> None:
        self._server = server
        self._router = server.router
        self._cache = server.cache
        self._kind = kind
        self._counts = server.stats.lookups[kind.value]   # [found, not_found, temp, error]
        limits = server.limits
        if kind is MapProtocol.TCP_TABLE:
            self._decoder = codec.TcpTableDecoder(limits.tcp_max_request_bytes)
            self._encode = codec.encode_tcp_reply
            self._encode_framing = codec.encode_tcp_framing_error
            self._names: frozenset[str] = frozenset()
        else:
            self._decoder = codec.SocketmapDecoder(limits.socketmap_max_request_bytes)
            self._encode = codec.encode_socketmap_reply
            self._encode_framing = codec.encode_socketmap_framing_error
            self._names = limits.socketmap_names
        self._transport: asyncio.Transport | None = None
        # pending work, in arrival order: a finished LookupResult waiting its turn, or a domain for DNS
        self._queue: collections.deque[LookupResult | str] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        self._final_reply: bytes | None = None
        self._paused = False
        self.last_activity = 0.0
        self.partial_since: float | None = None     # loop time when an incomplete request began

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the connection, or close it at once past ``max_connections``."""
        self._transport = transport  # type: ignore[assignment]
        self.last_activity = self._server.loop.time()
        if not self._server.register(self):
            log.warning("refusing %s connection: %d connections open (max_connections)",
                        self._kind.value, self._server.limits.max_connections)
            transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection and cancel its pending lookups (nobody is left to answer)."""
        self._server.unregister(self)
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        """Decode every complete request in *data* (any split) and answer or queue each, in order."""
        now = self.last_activity = self._server.loop.time()
        if self._final_reply is not None:
            return                      # framing is lost; everything after it is ignored
        decoder = self._decoder
        decoder.feed(data)
        while True:
            try:
                item = decoder.next_request()
            except FramingError as exc:
                self.fail_framing(str(exc))
                return
            if item is None:
                break
            self._accept(item)
        if not decoder.buffered_bytes:
            self.partial_since = None
        elif self.partial_since is None:
            self.partial_since = now

    def fail_framing(self, reason: str) -> None:
        """Answer *reason* as a protocol error after the pending replies, then close the connection."""
        if self._final_reply is not None:
            return
        log.warning("%s protocol error, closing connection: %s", self._kind.value, reason)
        self._final_reply = self._encode_framing(reason)
        self.partial_since = None
        if not self._queue:
            self._finish()

    # -- request handling ------------------------------------------------------------------------
    def _accept(self, item: codec.Request | codec.Malformed) -> None:
        if isinstance(item, codec.Malformed):
            log.warning("%s malformed request: %s", self._kind.value, item.reason)
            result: LookupResult | str = LookupResult.error(item.reason)
        elif self._names and item.map_name not in self._names:
            log.warning("socketmap request for unknown map name %r", item.map_name)
            result = LookupResult.error(f"unknown map name {item.map_name}")
        else:
            result = self._router.route_without_dns(item.key)
            if result.__class__ is str and self._cache is not None:
                result = self._cache.get(result) or result      # a hit is answered without a task
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s get %r -> %s", self._kind.value, item.key,
                          result if isinstance(result, str) else result.outcome.value)
        if self._queue or isinstance(result, str):
            self._queue.append(result)
            if self._worker is None or self._worker.done():
                self._worker = self._server.loop.create_task(self._drain())
            if len(self._queue) >= MAX_PIPELINED_REQUESTS and not self._paused and self._transport:
                self._paused = True
                self._transport.pause_reading()
        else:
            self._write(result)

    async def _drain(self) -> None:
        queue = self._queue
        lookup_domain = self._router.lookup_domain if self._cache is None else self._cache.lookup
        while queue:
            head = queue[0]
            if isinstance(head, str):
                try:
                    result = await lookup_domain(head)
                except asyncio.CancelledError:
                    raise
                except Exception:   # a bug must not take the connection's other requests down
                    log.exception("lookup of %s failed unexpectedly", head)
                    result = LookupResult.temp_fail("internal error")
            else:
                result = head
            queue.popleft()
            if self._transport is None:
                return
            self._write(result)
            if self._paused and len(queue) < MAX_PIPELINED_REQUESTS // 2:
                self._paused = False
                self._transport.resume_reading()
        if self._final_reply is not None:
            self._finish()

    def _write(self, result: LookupResult) -> None:
        outcome = result.outcome
        counts = self._counts
        if outcome is Outcome.FOUND:
            counts[0] += 1
        elif outcome is Outcome.NOT_FOUND:
            counts[1] += 1
        else:
            counts[2 if outcome is Outcome.TEMP_FAIL else 3] += 1
        if self._transport is not None:
            self._transport.write(self._encode(result))

    def _finish(self) -> None:
        """Send the framing-error reply, half-close, and close a moment later.

        Closing at once while the peer's bytes sit unread makes the kernel send RST, which can destroy
        replies still in flight to the peer; so shut down our side (EOF after the last reply), keep
        discarding input, and close after FINAL_LINGER_SECONDS.
        """
        transport = self._transport
        if transport is None:
            return
        if self._final_reply:
            transport.write(self._final_reply)
        if transport.can_write_eof():
            transport.write_eof()
            self._server.loop.call_later(FINAL_LINGER_SECONDS, transport.close)
        else:
            transport.close()

    # -- used by the server ----------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while lookups on this connection are pending."""
        return bool(self._queue)

    def close(self) -> None:
        """Close the connection (pending lookups are dropped)."""
        if self._transport is not None:
            self._transport.close()


class MapServer:
    """All listeners of the daemon.

    :param router: the :class:`Router` answering lookups.
    :param tcp_table: addresses for tcp_table(5) listeners.
    :param socketmap: addresses for socketmap_table(5) listeners.
    :param limits: per-connection :class:`Limits`.
    :param unix_socket_mode: permission bits for unix listeners (Postfix must be able to connect).
    :param unix_socket_gid: group id given to unix listeners, or ``None`` to keep the creator's.
    :param cache: the :class:`RouteCache` answering DNS-backed domains; ``None`` asks DNS every time.
    :param stats: the counters to update (the cache's, or a fresh :class:`Stats`).
    """

    def __init__(self, router: Router, tcp_table: Iterable[ListenAddress], socketmap: Iterable[ListenAddress],
                 limits: Limits = Limits(), unix_socket_mode: int = 0o660, unix_socket_gid: int | None = None,
                 cache: RouteCache | None = None, stats: Stats | None = None) -> None:
        self.router = router
        self.limits = limits
        self.cache = cache
        self.stats = stats if stats is not None else (cache.stats if cache is not None else Stats())
        self._wanted = [(MapProtocol.TCP_TABLE, a) for a in tcp_table] + \
                       [(MapProtocol.SOCKETMAP, a) for a in socketmap]
        self._unix_socket_mode = unix_socket_mode
        self._unix_socket_gid = unix_socket_gid
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[MapConnection] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.bound: list[tuple[MapProtocol, str]] = []
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # bound in start()

    async def start(self) -> list[tuple[MapProtocol, str]]:
        """Bind every listener.

        :returns: ``[(protocol, "host:port" or "unix:path"), ...]`` as actually bound (port 0 resolved).
        :raises OSError: if any address cannot be bound; listeners already bound are closed again.
        """
        self.loop = asyncio.get_running_loop()
        try:
            for kind, address in self._wanted:
                factory: Callable[[], MapConnection] = lambda kind=kind: MapConnection(self, kind)
                if address.is_unix:
                    assert address.path is not None
                    _remove_stale_socket(address.path)
                    server = await self.loop.create_unix_server(factory, address.path)
                    if self._unix_socket_gid is not None:
                        os.chown(address.path, -1, self._unix_socket_gid)
                    os.chmod(address.path, self._unix_socket_mode)
                    self.bound.append((kind, f"unix:{address.path}"))
                else:
                    server = await self.loop.create_server(factory, address.host, address.port,
                                                           reuse_address=True)
                    sockname = server.sockets[0].getsockname()
                    host = sockname[0]
                    self.bound.append((kind, f"[{host}]:{sockname[1]}" if ":" in host else f"{host}:{sockname[1]}"))
                self._servers.append(server)
        except BaseException:
            await self._close_listeners()
            raise
        self._sweeper = self.loop.create_task(self._sweep_idle())
        return list(self.bound)

    def register(self, connection: MapConnection) -> bool:
        """Count a new connection in; ``False`` if ``max_connections`` is reached (caller closes it)."""
        if len(self._connections) >= self.limits.max_connections:
            return False
        self._connections.add(connection)
        return True

    def unregister(self, connection: MapConnection) -> None:
        """Forget a closed connection."""
        self._connections.discard(connection)

    @property
    def connection_count(self) -> int:
        """Connections open now."""
        return len(self._connections)

    async def _sweep_idle(self) -> None:
        """Close idle connections and fail requests that take too long to arrive (one timer for all)."""
        idle = self.limits.idle_timeout_seconds
        deadline_seconds = self.limits.request_deadline_seconds
        interval = max(0.05, min(idle / 4, deadline_seconds / 4, 5.0))
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for connection in list(self._connections):
                if connection.partial_since is not None and connection.partial_since < now - deadline_seconds:
                    connection.fail_framing(f"request not complete within {deadline_seconds:g} s")
                elif not connection.busy and connection.last_activity < now - idle:
                    log.debug("closing idle connection")
                    connection.close()

    async def _close_listeners(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        for kind, address in self._wanted:
            if address.is_unix and address.path:
                with contextlib.suppress(OSError):
                    os.unlink(address.path)
        self._servers.clear()

    async def stop(self, drain_timeout_seconds: float = 5.0) -> int:
        """Stop accepting, let pending lookups finish, close every connection.

        :param drain_timeout_seconds: how long pending lookups may take to finish (seconds).
        :returns: the number of connections that still had lookups pending when the time ran out.
        """
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        deadline = self.loop.time() + drain_timeout_seconds
        while any(c.busy for c in self._connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        cut = sum(1 for c in self._connections if c.busy)
        for connection in list(self._connections):
            connection.close()
        await self._close_listeners()
        return cut


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a previous run; refuse to touch anything that is not a socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    os.unlink(path)
