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
import socket
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from onion_gateway.address import ListenAddress
from onion_gateway.config import ServeSettings
from onion_gateway.errors import FramingError
from onion_gateway.lookup import codec
from onion_gateway.lookup.answer import Answerer, NeedsDns
from onion_gateway.lookup.cache import RouteCache
from onion_gateway.lookup.metrics import Stats
from onion_gateway.lookup.result import LookupResult
from onion_gateway.lookup.routing import Router

log = logging.getLogger(__name__)

_DEFAULTS = ServeSettings()        # defaults live in one place: the settings
MAX_PIPELINED_REQUESTS = 128       # requests queued on one connection before we stop reading from it
MAX_REQUESTS_PER_TURN = 64         # requests answered from one read before other connections get a turn
WRITE_HIGH_WATER_BYTES = 64 * 1024 # unsent replies above which we stop reading from the client
WRITE_LOW_WATER_BYTES = 16 * 1024  # ... and below which we read again
FINAL_LINGER_SECONDS = 1.0         # after a framing error: time between our EOF and the close

# why a connection is not read from (MapConnection._pause_reasons bits)
_QUEUE_FULL, _WRITE_BLOCKED, _TURN_USED = 1, 2, 4


class MapProtocol(enum.Enum):
    """The two Postfix lookup protocols the daemon speaks."""

    TCP_TABLE = "tcp_table"
    SOCKETMAP = "socketmap"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits.

    :param max_connections: connections served at once, over all listeners; past it the connection idle
        longest is closed to make room for the new one.
    :param idle_timeout_seconds: a connection with nothing pending and no bytes for this long is closed,
        and so is one that has not read its replies for this long.
    :param tcp_max_request_bytes: the longest tcp_table request line (bytes).
    :param socketmap_max_request_bytes: the largest socketmap netstring payload (bytes).
    :param socketmap_names: accepted socketmap NAMEs; empty accepts any.
    :param request_deadline_seconds: a request whose first byte arrived this long ago and is still
        incomplete (a slow or stuck sender) gets a protocol error and its connection is closed.
    """

    max_connections: int = _DEFAULTS.max_connections
    idle_timeout_seconds: float = _DEFAULTS.idle_timeout_seconds
    request_deadline_seconds: float = _DEFAULTS.request_deadline_seconds
    tcp_max_request_bytes: int = _DEFAULTS.tcp_max_request_bytes
    socketmap_max_request_bytes: int = _DEFAULTS.socketmap_max_request_bytes
    socketmap_names: frozenset[str] = _DEFAULTS.socketmap_names

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> "Limits":
        """The connection limits of *settings* (defaults live in :class:`ServeSettings`)."""
        return cls(max_connections=settings.max_connections, idle_timeout_seconds=settings.idle_timeout_seconds,
                   request_deadline_seconds=settings.request_deadline_seconds,
                   tcp_max_request_bytes=settings.tcp_max_request_bytes,
                   socketmap_max_request_bytes=settings.socketmap_max_request_bytes,
                   socketmap_names=settings.socketmap_names)


class MapConnection(asyncio.Protocol):
    """One client connection speaking tcp_table(5) or socketmap_table(5).

    Flow control (docs/daemon.md "Flow control"): reading stops while any of these holds, and resumes
    when none does --

    - ``MAX_PIPELINED_REQUESTS`` lookups wait on DNS (resumes at half of it);
    - the replies not yet taken by the kernel exceed ``WRITE_HIGH_WATER_BYTES`` (the transport's
      ``pause_writing``; resumes at ``WRITE_LOW_WATER_BYTES``): a client that does not read its replies
      stops being read, and is closed once it has not read for the idle timeout;
    - ``MAX_REQUESTS_PER_TURN`` requests were answered from one read: the rest of the read waits for the
      next turn of the event loop, so one pipelining client cannot hold the loop for long.

    :param server: the owning :class:`MapServer` (answerer, limits, connection registry).
    :param kind: which :class:`MapProtocol` this listener speaks.
    """

    def __init__(self, server: "MapServer", kind: MapProtocol) -> None:
        self._server = server
        self._answer = server.answerer.answer
        self._resolve = server.answerer.resolve
        self._kind = kind
        self._count = server.stats.lookups[kind.value].count
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
        # pending work, in arrival order: a finished LookupResult waiting its turn, or a NeedsDns
        self._queue: collections.deque[LookupResult | NeedsDns] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        self._final_reply: bytes | None = None
        self._pause_reasons = 0        # bit set of _QUEUE_FULL, _WRITE_BLOCKED, _TURN_USED
        self._turn_scheduled = False
        self.last_activity = 0.0
        self.partial_since: float | None = None     # loop time when an incomplete request began
        self.write_blocked_since: float | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the connection (the server may close its longest-idle one to make room)."""
        self._transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(WRITE_HIGH_WATER_BYTES, WRITE_LOW_WATER_BYTES)  # type: ignore[attr-defined]
        self.last_activity = self._server.loop.time()
        if not self._server.register(self):
            log.warning("refusing %s connection: %d connections open (max_connections), none idle",
                        self._kind.value, self._server.limits.max_connections)
            transport.abort()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection and cancel its pending lookups (nobody is left to answer)."""
        self._server.unregister(self)
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        self._transport = None

    def pause_writing(self) -> None:
        """The transport's write buffer passed the high-water mark: stop reading from this client."""
        self.write_blocked_since = self._server.loop.time()
        self._pause(_WRITE_BLOCKED)

    def resume_writing(self) -> None:
        """The write buffer drained below the low-water mark: read and answer again."""
        self.write_blocked_since = None
        self._resume(_WRITE_BLOCKED)

    def data_received(self, data: bytes) -> None:
        """Take *data* (any split) and answer the complete requests in it, in order, within the turn cap."""
        self.last_activity = self._server.loop.time()
        if self._final_reply is not None:
            return                      # framing is lost; everything after it is ignored
        self._decoder.feed(data)
        self._process()

    # -- request handling ------------------------------------------------------------------------
    def _process(self) -> None:
        """Decode and answer buffered requests until the buffer holds no complete one, or a pause."""
        decoder = self._decoder
        answered = 0
        while not self._pause_reasons & (_QUEUE_FULL | _WRITE_BLOCKED):
            if answered >= MAX_REQUESTS_PER_TURN:
                self._pause(_TURN_USED)
                if not self._turn_scheduled:
                    self._turn_scheduled = True
                    self._server.loop.call_soon(self._next_turn)
                break
            try:
                item = decoder.next_request()
            except FramingError as exc:
                self.fail_framing(str(exc))
                return
            if item is None:
                # what is left is one incomplete request: it began in the latest read if a request was
                # completed since, else earlier (a continuous pipeline never looks like a slow sender)
                if not decoder.buffered_bytes:
                    self.partial_since = None
                elif answered or self.partial_since is None:
                    self.partial_since = self.last_activity
                return
            answered += 1
            self._accept(item)
        self.partial_since = None       # we stopped reading: the rest is waiting on us, not on the client

    def _next_turn(self) -> None:
        self._turn_scheduled = False
        if self._transport is None:
            return
        self._resume(_TURN_USED)

    def _pause(self, reason: int) -> None:
        if not self._pause_reasons and self._transport is not None:
            self._transport.pause_reading()
        self._pause_reasons |= reason

    def _resume(self, reason: int) -> None:
        if not self._pause_reasons & reason:
            return
        self._pause_reasons &= ~reason
        if self._pause_reasons or self._transport is None or self._final_reply is not None:
            return
        self._transport.resume_reading()
        # the bytes buffered meanwhile waited on us, not on the client: an incomplete request left after
        # this turn is timed (and the connection's idleness too) from now, not from the read before the pause
        self.last_activity = max(self.last_activity, self._server.loop.time())
        self._process()                 # requests already buffered are not waiting for new bytes

    def fail_framing(self, reason: str) -> None:
        """Answer *reason* as a protocol error after the pending replies, then close the connection."""
        if self._final_reply is not None:
            return
        log.warning("%s protocol error, closing connection: %s", self._kind.value, reason)
        self._final_reply = self._encode_framing(reason)
        self.partial_since = None
        if not self._queue:
            self._finish()

    def _accept(self, item: codec.Request | codec.Malformed) -> None:
        if item.__class__ is codec.Malformed:
            log.warning("%s malformed request: %s", self._kind.value, item.reason)
            result: LookupResult | NeedsDns = LookupResult.error(item.reason)
        elif self._names and item.map_name not in self._names:
            log.warning("socketmap request for unknown map name %r", item.map_name)
            result = LookupResult.error(f"unknown map name {item.map_name}")
        else:
            result = self._answer(item.key)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s get %r -> %s", self._kind.value, item.key,
                          f"DNS for {result.domain}" if isinstance(result, NeedsDns) else result.outcome.value)
        if self._queue or result.__class__ is NeedsDns:
            self._queue.append(result)
            if self._worker is None or self._worker.done():
                self._worker = self._server.loop.create_task(self._drain())
            if len(self._queue) >= MAX_PIPELINED_REQUESTS:
                self._pause(_QUEUE_FULL)
        else:
            self._write(result)  # type: ignore[arg-type]

    async def _drain(self) -> None:
        queue = self._queue
        while queue:
            head = queue[0]
            if head.__class__ is NeedsDns:
                try:
                    result = await self._resolve(head)  # type: ignore[arg-type]
                except asyncio.CancelledError:
                    raise
                except Exception:   # a bug must not take the connection's other requests down
                    log.exception("lookup of %s failed unexpectedly", head.domain)  # type: ignore[union-attr]
                    result = LookupResult.temp_fail("internal error")
            else:
                result = head  # type: ignore[assignment]
            queue.popleft()
            if self._transport is None:
                return
            self._write(result)
            if self._pause_reasons & _QUEUE_FULL and len(queue) < MAX_PIPELINED_REQUESTS // 2:
                self._resume(_QUEUE_FULL)
        if self._final_reply is not None:
            self._finish()

    def _write(self, result: LookupResult) -> None:
        self._count(result.outcome)
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
        if self._pause_reasons:
            self._pause_reasons = 0
            transport.resume_reading()  # keep discarding input until the close
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

    @property
    def unsent_bytes(self) -> int:
        """Bytes of replies the transport still holds (not yet taken by the kernel)."""
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    @property
    def reading_paused(self) -> bool:
        """True while the daemon does not read from this connection (flow control)."""
        return bool(self._pause_reasons)

    def close(self) -> None:
        """Close the connection (pending lookups are dropped)."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close the connection at once, dropping unsent replies (a client that does not read)."""
        if self._transport is not None:
            self._transport.abort()


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
        self.answerer = Answerer(router, cache)
        self.stats = stats if stats is not None else (cache.stats if cache is not None else Stats())
        self._wanted = [(MapProtocol.TCP_TABLE, a) for a in tcp_table] + \
                       [(MapProtocol.SOCKETMAP, a) for a in socketmap]
        self._unix_socket_mode = unix_socket_mode
        self._unix_socket_gid = unix_socket_gid
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[MapConnection] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._inherited: set[int] = set()
        self.bound: list[tuple[MapProtocol, str]] = []
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # bound in start()

    async def start(self, inherited: Mapping[int, socket.socket] | None = None) -> list[tuple[MapProtocol, str]]:
        """Bind every listener, or take the already-listening socket systemd passed for it.

        :param inherited: ``{index of the listener in tcp_table + socketmap order: listening socket}``
            (from :func:`onion_gateway.lookup.systemd.match_listeners`); those are used as they are
            (no bind, no chmod, not unlinked at stop: the socket unit owns them).
        :returns: ``[(protocol, "host:port" or "unix:path"), ...]`` as actually bound (port 0 resolved).
        :raises OSError: if any address cannot be bound; listeners already bound are closed again.
        """
        self.loop = asyncio.get_running_loop()
        inherited = dict(inherited or {})
        self._inherited = set(inherited)
        try:
            for index, (kind, address) in enumerate(self._wanted):
                factory: Callable[[], MapConnection] = lambda kind=kind: MapConnection(self, kind)
                sock = inherited.get(index)
                if sock is not None:
                    sock.setblocking(False)
                    if sock.family == socket.AF_UNIX:
                        server = await self.loop.create_unix_server(factory, sock=sock)
                    else:
                        server = await self.loop.create_server(factory, sock=sock)
                    self.bound.append((kind, _describe(sock)))
                elif address.is_unix:
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
                    self.bound.append((kind, _describe(server.sockets[0])))
                self._servers.append(server)
        except BaseException:
            await self._close_listeners()
            raise
        self._sweeper = self.loop.create_task(self._sweep_idle())
        return list(self.bound)

    def register(self, connection: MapConnection) -> bool:
        """Count a new connection in; at ``max_connections`` close the longest-idle connection (no
        lookup pending) to make room.

        :returns: ``False`` if every open connection has lookups pending (the caller closes the new one).
        """
        if len(self._connections) >= self.limits.max_connections:
            idle = [c for c in self._connections if not c.busy]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: c.last_activity)
            log.warning("%d connections open (max_connections): closing the one idle longest, for %.0f s",
                        len(self._connections), self.loop.time() - oldest.last_activity)
            self._connections.discard(oldest)
            oldest.close()
        self._connections.add(connection)
        return True

    def unregister(self, connection: MapConnection) -> None:
        """Forget a closed connection."""
        self._connections.discard(connection)

    @property
    def addresses(self) -> list[ListenAddress]:
        """The configured listener addresses, tcp_table first, then socketmap (the order of ``start``'s
        *inherited* indices)."""
        return [address for _kind, address in self._wanted]

    @property
    def connection_count(self) -> int:
        """Connections open now."""
        return len(self._connections)

    @property
    def unsent_reply_bytes(self) -> int:
        """Bytes of replies written but not yet taken by the kernel, over all connections."""
        return sum(c.unsent_bytes for c in self._connections)

    async def _sweep_idle(self) -> None:
        """Close idle connections and fail requests that take too long to arrive (one timer for all)."""
        idle = self.limits.idle_timeout_seconds
        deadline_seconds = self.limits.request_deadline_seconds
        interval = max(0.05, min(idle / 4, deadline_seconds / 4, 5.0))
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for connection in list(self._connections):
                blocked = connection.write_blocked_since
                if blocked is not None and blocked < now - idle:
                    log.warning("closing a connection that has not read its replies for %g s", idle)
                    connection.abort()
                elif connection.reading_paused:
                    continue                # waiting on us, not on the client
                elif connection.partial_since is not None and connection.partial_since < now - deadline_seconds:
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
        for index, (kind, address) in enumerate(self._wanted):
            if address.is_unix and address.path and index not in self._inherited:
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
        loop = self.loop or asyncio.get_running_loop()      # stop() after a start() that failed early
        deadline = loop.time() + drain_timeout_seconds
        while any(c.busy for c in self._connections) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        cut = sum(1 for c in self._connections if c.busy)
        for connection in list(self._connections):
            connection.close()
        await self._close_listeners()
        return cut


def _describe(sock: socket.socket) -> str:
    """``host:port``, ``[v6]:port`` or ``unix:path`` of a listening socket."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    host = name[0]
    return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a previous run; refuse to touch anything that is not a socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    os.unlink(path)
