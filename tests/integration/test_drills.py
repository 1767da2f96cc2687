"""Fault drills with real processes on loopback: DNS dying or slow, slow clients, idle crowds, signals.

Each drill is bounded in count and time and stops by itself.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import socket
import statistics
import threading
import time

import pytest

from onion_gateway.address import ListenAddress
from onion_gateway.lookup.dns import SrvResolver
from onion_gateway.lookup.routing import Router, build_routing_table
from onion_gateway.lookup.server import Limits, MapServer
from tests.support.daemon import ServeProcess
from tests.support.dnsserver import Dnsmasq, SlowDns, SrvEntry
from tests.support.onions import ONION_A
from tests.support.procs import public_tempdir, wait_for

pytestmark = pytest.mark.integration


class TcpClient:
    """A blocking tcp_table client on one persistent connection, as Postfix uses it."""

    def __init__(self, port: int, timeout: float = 20.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def get(self, key: str) -> bytes:
        self.sock.sendall(f"get {key}\n".encode())
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("server closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def close(self) -> None:
        self.sock.close()


def test_dns_killed_under_load_turns_answers_temporary_then_recovers_without_restart():
    work = public_tempdir("og-drill-")
    dns = Dnsmasq(work, local_zones=["rx.test"], srv=[SrvEntry("rx.test", ONION_A)]).start()
    # no route cache: every lookup asks DNS, so the drill sees DNS itself go away (a cached route would
    # rightly keep answering until its TTL ends; tests/integration/test_cache.py covers that side)
    daemon = ServeProcess(["--dns-server", dns.address, "--dns-timeout", "1", "--cache-max-entries", "0"]).start()
    client = TcpClient(daemon.tcp_port)
    try:
        assert client.get("a@rx.test").startswith(b"200 ")
        dns.stop_server()
        killed = time.monotonic()
        replies = []
        while time.monotonic() - killed < 4:             # bounded load while DNS is gone
            replies.append((time.monotonic() - killed, client.get("a@rx.test")))
        assert all(r.startswith((b"200 ", b"400 ")) for _, r in replies)      # never 500 (never "not found")
        first_temp = next(t for t, r in replies if r.startswith(b"400 "))
        assert first_temp < 1 + 1.5                       # within the DNS deadline (1 s) plus slack
        dns.start()
        wait_for(lambda: client.get("a@rx.test").startswith(b"200 "), 10, "answers to recover")
        assert daemon.proc.poll() is None
    finally:
        client.close()
        daemon.stop()
        dns.stop()


def test_slow_dns_is_cut_off_at_the_deadline():
    slow = SlowDns(delay_seconds=6, target=ONION_A).start()
    daemon = ServeProcess(["--dns-server", slow.address, "--dns-timeout", "1.5"]).start()
    client = TcpClient(daemon.tcp_port)
    try:
        start = time.monotonic()
        reply = client.get("a@slow.example")
        elapsed = time.monotonic() - start
        assert reply.startswith(b"400 DNS%20timeout")
        assert 1.4 < elapsed < 1.5 + 1.0
    finally:
        client.close()
        daemon.stop()
        slow.stop()


def run_in_process(limits: Limits, scenario):
    """Run an in-process MapServer (no DNS needed by the keys used) and ``scenario(tcp_port)`` in a thread."""
    async def main():
        router = Router(SrvResolver([("127.0.0.1", 9)], 0.5), build_routing_table(frozenset(), frozenset(), False, {}))
        server = MapServer(router, [ListenAddress("127.0.0.1", 0)], [], limits)
        bound = await server.start()
        port = int(bound[0][1].rsplit(":", 1)[1])
        try:
            return await asyncio.get_running_loop().run_in_executor(None, scenario, port)
        finally:
            await server.stop(1)
    return asyncio.run(main())


def test_a_one_byte_per_second_sender_is_cut_off_while_others_are_served():
    def scenario(port):
        slow = socket.create_connection(("127.0.0.1", port), timeout=10)
        other = TcpClient(port)
        served = []
        try:
            for byte in b"get a@example.org":            # one byte per 0.25 s; deadline is 1 s
                try:
                    slow.sendall(bytes([byte]))
                except OSError:
                    break
                served.append(other.get("*"))
                time.sleep(0.25)
            slow.settimeout(3)
            reply = slow.recv(4096)
            return reply, served
        finally:
            slow.close()
            other.close()
    reply, served = run_in_process(Limits(request_deadline_seconds=1.0), scenario)
    assert reply.startswith(b"400 request%20not%20complete%20within%201%20s")
    assert served and all(r.startswith(b"500 ") for r in served)


def test_a_thousand_idle_connections_do_not_slow_down_an_active_client():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2300:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))

    def scenario(port):
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(1000)]
        try:
            time.sleep(0.2)
            active = TcpClient(port)
            latencies = []
            for _ in range(50):
                start = time.perf_counter()
                assert active.get(f"a@{ONION_A}").startswith(b"200 ")
                latencies.append(time.perf_counter() - start)
            active.close()
            return latencies
        finally:
            for s in idle:
                s.close()
    latencies = run_in_process(Limits(max_connections=1100), scenario)
    assert statistics.median(latencies) < 0.010


def load(port: int, stop: threading.Event, results: list, key: str) -> None:
    """Keep one tcp_table connection busy until *stop*; record each reply (or the error that ended it)."""
    try:
        client = TcpClient(port)
        while not stop.is_set() and len(results) < 20000:
            results.append(client.get(key))
        client.close()
    except (OSError, ConnectionError) as exc:
        results.append(exc)


def test_sighup_under_load_fails_no_request(dns_server):
    daemon = ServeProcess(["--dns-server", dns_server.address]).start()
    stop, results = threading.Event(), []
    worker = threading.Thread(target=load, args=(daemon.tcp_port, stop, results, "a@single.example.test"))
    worker.start()
    try:
        for _ in range(5):
            time.sleep(0.2)
            daemon.signal(signal.SIGHUP)
        time.sleep(0.2)
    finally:
        stop.set()
        worker.join(10)
        assert daemon.stop() == 0
    assert daemon.log().count("reloaded:") == 5
    assert len(results) > 10
    assert all(r == f"200 smtptor:[{ONION_A}]:25".encode() for r in results), set(map(repr, results))


def test_sigterm_answers_in_flight_lookups_then_exits_0():
    slow = SlowDns(delay_seconds=1.0, target=ONION_A).start()
    daemon = ServeProcess(["--dns-server", slow.address, "--dns-timeout", "5"]).start()
    try:
        client = TcpClient(daemon.tcp_port)
        client.sock.sendall(b"get a@one.example\nget b@two.example\n")
        time.sleep(0.3)                                   # both lookups are waiting on the slow DNS
        daemon.signal(signal.SIGTERM)
        buf = b""
        while buf.count(b"\n") < 2:
            chunk = client.sock.recv(4096)
            assert chunk, "connection closed before the in-flight lookups were answered"
            buf += chunk
        assert buf.splitlines() == [f"200 smtptor:[{ONION_A}]:25".encode()] * 2
        assert daemon.proc.wait(10) == 0
        daemon.wait_log("stopped: 0 connections had lookups cut off")
        client.close()
    finally:
        daemon.stop()
        slow.stop()


def test_second_sigterm_stops_without_waiting_for_the_drain():
    slow = SlowDns(delay_seconds=30, target=ONION_A).start()
    daemon = ServeProcess(["--dns-server", slow.address, "--dns-timeout", "20"]).start()
    try:
        client = socket.create_connection(("127.0.0.1", daemon.tcp_port))
        client.sendall(b"get a@stuck.example\n")
        time.sleep(0.3)
        daemon.signal(signal.SIGTERM)
        time.sleep(0.3)
        assert daemon.proc.poll() is None                 # still draining the stuck lookup
        start = time.monotonic()
        daemon.signal(signal.SIGTERM)
        daemon.proc.wait(5)
        assert time.monotonic() - start < 3
        daemon.wait_log("second termination signal")
        client.close()
    finally:
        daemon.stop()
        slow.stop()
