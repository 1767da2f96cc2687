"""Flow control and fairness on real sockets: a client that never reads, a continuous pipeline.

The server runs in-process on port 0; the keys used (``*``) need no DNS.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time

import pytest

from onion_gateway.config import ListenAddress
from onion_gateway.lookup.dns import SrvResolver
from onion_gateway.lookup.routing import Router, build_routing_table
from onion_gateway.lookup.server import Limits, MapServer

pytestmark = pytest.mark.integration


def serve_while(limits: Limits, scenario):
    """Run an in-process MapServer and ``scenario(port)`` in a thread; sample the server's unsent reply
    bytes and open connections every 10 ms. Returns (scenario result, max unsent bytes, samples)."""
    async def main():
        router = Router(SrvResolver([("127.0.0.1", 9)], 0.5), build_routing_table(frozenset(), frozenset(), False, {}))
        server = MapServer(router, [ListenAddress("127.0.0.1", 0)], [], limits)
        bound = await server.start()
        port = int(bound[0][1].rsplit(":", 1)[1])
        samples: list[tuple[float, int, int]] = []

        async def sample():
            while True:
                samples.append((time.monotonic(), server.unsent_reply_bytes, server.connection_count))
                await asyncio.sleep(0.01)
        sampler = asyncio.get_running_loop().create_task(sample())
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, scenario, port)
        finally:
            sampler.cancel()
            await server.stop(1)
        return result, max(s[1] for s in samples), samples
    return asyncio.run(main())


def never_reading_sender(port: int, seconds: float, stop: threading.Event) -> None:
    """Pipeline ``get *`` as fast as the daemon takes it, never reading a reply."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    burst = b"get *\n" * 10_000
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end and not stop.is_set():
            try:
                sock.send(burst)
            except BlockingIOError:
                time.sleep(0.005)
            except OSError:
                return          # closed by the daemon
    finally:
        sock.close()


def test_a_client_that_never_reads_is_not_read_from_and_others_keep_their_latency():
    stop = threading.Event()

    def scenario(port):
        hog = threading.Thread(target=never_reading_sender, args=(port, 3.0, stop))
        hog.start()
        time.sleep(0.3)
        other = socket.create_connection(("127.0.0.1", port), timeout=10)
        latencies = []
        try:
            for _ in range(150):
                start = time.monotonic()
                other.sendall(b"get *\n")
                reply = b""
                while not reply.endswith(b"\n"):
                    reply += other.recv(4096)
                latencies.append(time.monotonic() - start)
                assert reply.startswith(b"500 ")
                time.sleep(0.01)
        finally:
            other.close()
            stop.set()
            hog.join()
        return latencies

    latencies, max_unsent, _ = serve_while(Limits(idle_timeout_seconds=60), scenario)
    latencies.sort()
    # without backpressure the daemon read everything the hog sent and queued megabytes of replies
    assert max_unsent < 256 * 1024, f"{max_unsent} bytes of replies held for a client that does not read"
    assert latencies[int(len(latencies) * 0.99) - 1] < 0.25, f"p99 {latencies[-2]:.3f} s, median {statistics.median(latencies):.4f} s"


def test_a_client_that_does_not_read_for_the_idle_timeout_is_closed():
    stop = threading.Event()

    def scenario(port):
        hog = threading.Thread(target=never_reading_sender, args=(port, 8.0, stop))
        started = time.monotonic()
        hog.start()
        hog.join()              # returns early once the daemon closed the connection
        time.sleep(0.3)
        return started

    started, _, samples = serve_while(Limits(idle_timeout_seconds=1.0), scenario)
    closed_at = [t for t, _, count in samples if t > started + 0.2 and count == 0]
    assert closed_at, "the non-reading connection stayed open"
    # the kernel's socket buffers fill first (about 1-2 s here), then 1 s without reading
    assert closed_at[0] - started < 6.0


def test_continuous_pipelining_never_trips_the_request_deadline():
    # every write ends in the middle of a request, for longer than the deadline: the partial request
    # at the end is always new, so the deadline (0.3 s) must never fire
    def scenario(port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        replies = bytearray()
        done = threading.Event()

        def read():
            while not done.is_set():
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                replies.extend(chunk)
        reader = threading.Thread(target=read)
        reader.start()
        unit = b"get *\n"
        stream = unit * 1000
        sent = 0
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            offset = sent % len(unit)
            piece = stream[offset: offset + 997]          # 997 bytes: never a whole number of requests
            sock.sendall(piece)
            sent += len(piece)
            time.sleep(0.002)
        if sent % len(unit):
            rest = unit[sent % len(unit):]
            sock.sendall(rest)
            sent += len(rest)
        deadline = time.monotonic() + 15
        while replies.count(b"\n") < sent // len(unit) and time.monotonic() < deadline and reader.is_alive():
            time.sleep(0.05)
        done.set()
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        reader.join()
        sent //= len(unit)
        return sent, bytes(replies)

    (requests, replies), _, _ = serve_while(Limits(request_deadline_seconds=0.3, idle_timeout_seconds=60), scenario)
    lines = replies.split(b"\n")[:-1]
    assert not [line for line in lines if not line.startswith(b"500 ")], "a protocol error was sent"
    assert len(lines) == requests
