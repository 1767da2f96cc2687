"""A load generator that talks to a Postfix lookup-table server the way Postfix does.

N persistent connections; on each, one request, wait for its reply, then the next (Postfix's tcp:
and socketmap: clients never pipeline). Requests speak tcp_table(5) (``get KEY\\n`` -> one line) or
socketmap_table(5) (``LEN:NAME KEY,`` -> one netstring). Every run is bounded twice: it stops after
``max_requests`` replies or ``max_seconds``, whichever comes first, and never retries. Loopback only:
the target host must be a 127.0.0.0/8 or ::1 address.

Library use (the benchmark driver)::

    result = run_sync(run_load("tcp_table", "127.0.0.1", 6013, keys, concurrency=8,
                                  max_requests=10_000, max_seconds=3.0))

Command line (one run, prints a JSON line)::

    python benchmarks/loadgen.py --protocol socketmap --port 6014 --concurrency 8 \\
        --requests 10000 --seconds 3 --key alice@example.org
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import itertools
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field


@dataclass
class LoadResult:
    """What one bounded run measured (client side).

    :param requests: replies received.
    :param seconds: wall time from the first request to the last reply.
    :param latencies_ns: per-request latency, send to complete reply (nanoseconds), sorted.
    :param replies: count of replies by their first word (``200``, ``500``, ``OK``, ``NOTFOUND``, ...).
    :param errors: connections that failed or closed early.
    """

    requests: int = 0
    seconds: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    replies: dict[str, int] = field(default_factory=dict)
    errors: int = 0

    @property
    def rate(self) -> float:
        """Replies per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile_us(self, p: float) -> float:
        """The *p*-th percentile latency in microseconds (nearest rank)."""
        if not self.latencies_ns:
            return float("nan")
        index = min(len(self.latencies_ns) - 1, max(0, int(round(p / 100 * len(self.latencies_ns))) - 1))
        return self.latencies_ns[index] / 1000


class _Run:
    """Shared state of one run: the key source, the bounds, the results."""

    def __init__(self, keys: Iterator[str], max_requests: int, protocol: str, map_name: str) -> None:
        self.keys = keys
        self.left = max_requests
        self.stopped = False
        self.protocol = protocol
        self.map_name = map_name.encode()
        self.latencies: list[int] = []
        self.replies: collections.Counter[str] = collections.Counter()
        self.errors = 0
        self.active = 0
        self.done: asyncio.Future[None] | None = None

    def next_request(self) -> bytes | None:
        if self.stopped or self.left <= 0:
            return None
        key = next(self.keys, None)
        if key is None:
            return None
        self.left -= 1
        if self.protocol == "tcp_table":
            return b"get " + key.encode() + b"\n"
        payload = self.map_name + b" " + key.encode()
        return b"%d:%s," % (len(payload), payload)

    def finished_one(self) -> None:
        self.active -= 1
        if self.active == 0 and self.done is not None and not self.done.done():
            self.done.set_result(None)


class _Client(asyncio.Protocol):
    """One persistent connection: request, reply, next request."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buffer = b""
        self.sent_at = 0
        self.transport: asyncio.Transport | None = None
        self.finished = False

    def connection_made(self, transport) -> None:
        self.transport = transport          # the driver starts sending once every connection is open

    def send_next(self) -> None:
        request = self.run.next_request()
        if request is None:
            self.finish()
            return
        self.sent_at = time.perf_counter_ns()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if self.run.protocol == "tcp_table":
            end = buffer.find(b"\n")
            if end < 0:
                self.buffer = buffer
                return
            reply, self.buffer = buffer[:end], buffer[end + 1:]
        else:
            colon = buffer.find(b":")
            if colon < 0:
                self.buffer = buffer
                return
            length = int(buffer[:colon])
            if len(buffer) < colon + 2 + length:
                self.buffer = buffer
                return
            reply, self.buffer = buffer[colon + 1:colon + 1 + length], buffer[colon + 2 + length:]
        now = time.perf_counter_ns()
        run = self.run
        run.latencies.append(now - self.sent_at)
        run.replies[reply.split(b" ", 1)[0].decode(errors="replace")] += 1
        self.send_next()

    def connection_lost(self, exc) -> None:
        if not self.finished:
            self.run.errors += 1
            self.finished = True
            self.run.finished_one()

    def finish(self) -> None:
        # the connection stays open until the driver has sampled the server (a forking server's
        # per-connection child would exit and take its CPU counters with it)
        if not self.finished:
            self.finished = True
            self.run.finished_one()


def _require_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the load generator talks to loopback only, not {host}")


async def run_load(protocol: str, host: str, port: int, keys: Sequence[str], *, concurrency: int,
                   max_requests: int, max_seconds: float, cycle: bool = True,
                   map_name: str = "onion", on_connected=None, on_finished=None) -> LoadResult:
    """Run one bounded load against ``host:port``.

    :param protocol: ``"tcp_table"`` or ``"socketmap"``.
    :param host: a loopback IP address.
    :param port: the server's TCP port.
    :param keys: lookup keys, handed out in order over all connections.
    :param concurrency: persistent connections, each strictly request -> reply -> request.
    :param max_requests: stop after this many requests have been sent.
    :param max_seconds: stop sending after this long (seconds); replies in flight are awaited.
    :param cycle: repeat *keys* (hot sets); ``False`` sends each key once (cold sets).
    :param map_name: the socketmap NAME.
    :param on_connected: called with no arguments once every connection is open, before the first request.
    :param on_finished: called with no arguments after the last reply, before the connections close.
    :returns: a :class:`LoadResult`.
    :raises ValueError: if *host* is not a loopback address.
    """
    _require_loopback(host)
    loop = asyncio.get_running_loop()
    run = _Run(itertools.cycle(keys) if cycle else iter(keys), max_requests, protocol, map_name)
    run.done = loop.create_future()
    connected = []
    for _ in range(concurrency):
        try:
            transport, client = await asyncio.wait_for(
                loop.create_connection(lambda: _Client(run), host, port), 5.0)
        except (OSError, asyncio.TimeoutError):
            run.errors += 1
            continue
        connected.append((transport, client))
    if not connected:
        return LoadResult(errors=run.errors)
    # all connections are open: start them together so the rate covers the full concurrency
    run.active = len(connected)
    if on_connected is not None:
        on_connected()
    start = time.perf_counter()
    stopper = loop.call_later(max_seconds, setattr, run, "stopped", True)
    for _, client in connected:
        client.send_next()
    try:
        await asyncio.wait_for(run.done, max_seconds + 30.0)
    except asyncio.TimeoutError:
        run.errors += run.active
        for transport, _ in connected:
            transport.abort()
    elapsed = time.perf_counter() - start
    stopper.cancel()
    if on_finished is not None:
        on_finished()
    for transport, _ in connected:
        transport.close()
    run.latencies.sort()
    return LoadResult(len(run.latencies), elapsed, run.latencies, dict(run.replies), run.errors)


def run_sync(coroutine):
    """Run *coroutine* to completion on uvloop when installed (a faster client), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=["tcp_table", "socketmap"], default="tcp_table")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--key", action="append", required=True, help="lookup key (repeatable, cycled)")
    args = parser.parse_args()
    result = run_sync(run_load(args.protocol, args.host, args.port, args.key, concurrency=args.concurrency,
                                  max_requests=args.requests, max_seconds=args.seconds))
    summary = asdict(result)
    del summary["latencies_ns"]
    summary.update(rate=round(result.rate), p50_us=result.percentile_us(50), p99_us=result.percentile_us(99))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
