"""The listeners with real sockets: ordering, pipelining, bad input, limits, unix sockets.

The server runs in-process on port 0; requests that need DNS go to the session's dnsmasq.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile

import pytest

from onion_gateway.address import ListenAddress
from onion_gateway.config import parse_dns_server
from onion_gateway.lookup.dns import SrvResolver
from onion_gateway.lookup.routing import Router, build_routing_table
from onion_gateway.lookup.server import Limits, MapServer
from tests.support.onions import ONION_A

pytestmark = pytest.mark.integration

LOOPBACK_0 = ListenAddress(host="127.0.0.1", port=0)


def make_server(dns_server, limits: Limits = Limits(), tcp=(LOOPBACK_0,), socketmap=(LOOPBACK_0,)) -> MapServer:
    resolver = SrvResolver([parse_dns_server(dns_server.address)], timeout_seconds=2)
    table = build_routing_table(frozenset({"excluded.example.test"}), frozenset(), False, {})
    return MapServer(Router(resolver, table), tcp, socketmap, limits)


def run(dns_server, scenario, **kwargs):
    """Start a server, run ``await scenario(server, tcp_port, socketmap_port)``, stop the server."""
    async def main():
        server = make_server(dns_server, **kwargs)
        bound = await server.start()
        ports = [int(addr.rsplit(":", 1)[1]) if not addr.startswith("unix:") else None for _, addr in bound]
        try:
            return await asyncio.wait_for(scenario(server, *ports), 20)
        finally:
            await server.stop(1)
    return asyncio.run(main())


async def exchange(port: int, payload: bytes, replies: int, sep: bytes) -> tuple[list[bytes], bool]:
    """Send *payload* at once, read *replies* replies; return them and whether the server then closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    out = [await read_reply(reader, sep) for _ in range(replies)]
    try:
        rest = await asyncio.wait_for(reader.read(1), 0.5)
        closed = rest == b""
    except asyncio.TimeoutError:
        closed = False
    writer.close()
    return out, closed


async def read_reply(reader: asyncio.StreamReader, sep: bytes) -> bytes:
    if sep == b"\n":
        return await reader.readuntil(b"\n")
    length = int((await reader.readuntil(b":"))[:-1])
    return await reader.readexactly(length + 1)


def ns(*requests: str) -> bytes:
    """socketmap requests as netstrings."""
    return b"".join(b"%d:%s," % (len(r.encode()), r.encode()) for r in requests)


def test_pipelined_tcp_requests_are_answered_in_order_even_when_one_needs_dns(dns_server):
    async def scenario(server, tcp, sm):
        return await exchange(tcp, b"get a@single.example.test\nget *\nget b@" + ONION_A.encode() + b"\n"
                              b"get c@nosuch.example.test\n", 4, b"\n")
    replies, closed = run(dns_server, scenario)
    assert replies == [f"200 smtptor:[{ONION_A}]:25\n".encode(), b"500 no%20routable%20domain%20in%20key\n",
                       f"200 smtptor:[{ONION_A}]:25\n".encode(), b"500 NXDOMAIN\n"]
    assert not closed


def test_pipelined_socketmap_requests_are_answered_in_order(dns_server):
    async def scenario(server, tcp, sm):
        return await exchange(sm, ns("onion a@single.example.test", "onion *", "onion a@servfail.test"), 3, b",")
    replies, closed = run(dns_server, scenario)
    assert replies[0] == f"OK smtptor:[{ONION_A}]:25,".encode()
    assert replies[1] == b"NOTFOUND ,"
    assert replies[2].startswith(b"TEMP DNS server answered SERVFAIL")
    assert not closed


def test_malformed_tcp_request_gets_an_error_and_the_connection_goes_on(dns_server):
    async def scenario(server, tcp, sm):
        return await exchange(tcp, b"bogus\nget bad%zz\nget *\n", 3, b"\n")
    replies, closed = run(dns_server, scenario)
    assert replies[0].startswith(b"400 unknown%20command")
    assert replies[1].startswith(b"400 bad%20key%20encoding")
    assert replies[2].startswith(b"500 ")
    assert not closed


def test_overlong_tcp_line_closes_only_that_connection(dns_server):
    async def scenario(server, tcp, sm):
        bad = await exchange(tcp, b"get " + b"x" * 5000 + b"\n", 1, b"\n")
        good = await exchange(tcp, b"get *\n", 1, b"\n")
        return bad, good
    (bad_replies, bad_closed), (good_replies, good_closed) = run(dns_server, scenario)
    assert bad_replies[0].startswith(b"400 request%20line%20longer%20than%204096%20bytes")
    assert bad_closed
    assert good_replies[0].startswith(b"500 ") and not good_closed


def test_bad_netstring_answers_earlier_requests_then_perm_and_close(dns_server):
    async def scenario(server, tcp, sm):
        return await exchange(sm, ns("onion a@single.example.test") + b"zz:junk", 2, b",")
    replies, closed = run(dns_server, scenario)
    assert replies[0] == f"OK smtptor:[{ONION_A}]:25,".encode()
    assert replies[1] == b"PERM bad netstring length,"
    assert closed


def test_unknown_socketmap_name_is_a_perm_error_when_names_are_configured(dns_server):
    async def scenario(server, tcp, sm):
        return await exchange(sm, ns("other *", "onion *"), 2, b",")
    replies, _ = run(dns_server, scenario, limits=Limits(socketmap_names=frozenset({"onion"})))
    assert replies == [b"PERM unknown map name other,", b"NOTFOUND ,"]


def test_idle_connections_are_closed_after_the_timeout(dns_server):
    async def scenario(server, tcp, sm):
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp)
        writer.write(b"get *\n")
        await reader.readuntil(b"\n")
        data = await asyncio.wait_for(reader.read(1), 5)      # server closes: EOF
        writer.close()
        return data
    assert run(dns_server, scenario, limits=Limits(idle_timeout_seconds=0.3)) == b""


def test_past_the_connection_limit_the_longest_idle_connection_makes_room(dns_server):
    async def scenario(server, tcp, sm):
        oldest = await asyncio.open_connection("127.0.0.1", tcp)
        await asyncio.sleep(0.2)
        recent = await asyncio.open_connection("127.0.0.1", tcp)
        recent[1].write(b"get *\n")
        await recent[0].readuntil(b"\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp)
        writer.write(b"get *\n")
        served_new = await asyncio.wait_for(reader.readuntil(b"\n"), 5)
        oldest_closed = await asyncio.wait_for(oldest[0].read(1), 5)
        recent[1].write(b"get *\n")
        served_recent = await asyncio.wait_for(recent[0].readuntil(b"\n"), 5)
        for w in (oldest[1], recent[1], writer):
            w.close()
        return served_new, oldest_closed, served_recent
    served_new, oldest_closed, served_recent = run(dns_server, scenario, limits=Limits(max_connections=2))
    assert served_new.startswith(b"500 ")
    assert oldest_closed == b""
    assert served_recent.startswith(b"500 ")


def test_unix_socket_socketmap_with_postmap(dns_server):
    path = os.path.join(tempfile.mkdtemp(prefix="og-sock-", dir="/tmp"), "map.sock")
    os.chmod(os.path.dirname(path), 0o755)

    async def scenario(server, *ports):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: subprocess.run(
            ["postmap", "-q", "a@single.example.test", f"socketmap:unix:{path}:onion"],
            capture_output=True, text=True, timeout=30))
    result = run(dns_server, scenario, tcp=(), socketmap=(ListenAddress(path=path),))
    assert (result.returncode, result.stdout.strip()) == (0, f"smtptor:[{ONION_A}]:25"), result.stderr
    assert not os.path.exists(path)        # removed at stop
