"""Property test of the request path over real sockets: whatever arrives, in whatever pieces, every
complete request gets exactly one well-formed reply in order, and lost framing closes only that connection.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onion_gateway.address import ListenAddress
from onion_gateway.lookup.dns import SrvResolver
from onion_gateway.lookup.routing import Router, build_routing_table
from onion_gateway.lookup.server import MapServer
from tests.support.onions import ONION_A

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ports():
    """A MapServer in a background event loop; keys used here never need DNS."""
    loop = asyncio.new_event_loop()
    router = Router(SrvResolver([("127.0.0.1", 9)], 0.5),
                    build_routing_table(frozenset({"own.example"}), frozenset(), False, {}))
    server = MapServer(router, [ListenAddress("127.0.0.1", 0)], [ListenAddress("127.0.0.1", 0)])
    bound = loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield [int(addr.rsplit(":", 1)[1]) for _, addr in bound]
    asyncio.run_coroutine_threadsafe(server.stop(1), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


# keys answered without DNS, with their expected tcp/socketmap reply kinds
DNS_FREE_KEYS = st.sampled_from(["*", "", f"a@{ONION_A}", "x@own.example", "u@[192.0.2.1]", "a@b..c"])
TCP_ITEMS = st.one_of(
    DNS_FREE_KEYS.map(lambda k: (b"get " + k.replace(" ", "%20").encode() + b"\n", "ok")),
    st.sampled_from([b"put a b\n", b"bogus\n", b"get %zz\n", b"get %FF\n"]).map(lambda r: (r, "error")),
)
SM_ITEMS = st.one_of(
    DNS_FREE_KEYS.map(lambda k: (b"%d:onion %s," % (len(k.encode()) + 6, k.encode()), "ok")),
    st.sampled_from([b"5:onion,", b"3:\xff \xfe,"]).map(lambda r: (r, "error")),
)


def read_replies(sock: socket.socket, count: int, tcp: bool) -> tuple[list[bytes], bool]:
    buf = b""
    replies: list[bytes] = []
    closed = False
    sock.settimeout(5)
    while len(replies) < count or not closed:
        if tcp and b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            replies.append(line)
            continue
        if not tcp and b":" in buf:
            length, rest = buf.split(b":", 1)
            if len(rest) > int(length):
                replies.append(rest[: int(length)])
                buf = rest[int(length) + 1:]
                continue
        if len(replies) >= count:
            sock.settimeout(0.1)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            closed = True
            break
        buf += chunk
    return replies, closed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tcp=st.booleans(), items=st.data(), cuts=st.lists(st.integers(0, 400), max_size=6),
       break_framing=st.booleans())
def test_every_request_gets_one_reply_in_order(ports, tcp, items, cuts, break_framing):
    chosen = items.draw(st.lists(TCP_ITEMS if tcp else SM_ITEMS, min_size=1, max_size=12))
    stream = b"".join(raw for raw, _ in chosen)
    if break_framing:
        stream += b"get " + b"x" * 5000 + b"\n" if tcp else b"zz:"
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    port = ports[0] if tcp else ports[1]
    with socket.create_connection(("127.0.0.1", port)) as sock, \
            socket.create_connection(("127.0.0.1", port)) as bystander:
        for start, end in zip(bounds, bounds[1:]):
            try:
                sock.sendall(stream[start:end])
            except (BrokenPipeError, ConnectionResetError):
                assert break_framing          # the server may close once framing is lost, not before
                break
        replies, closed = read_replies(sock, len(chosen) + break_framing, tcp)
        assert len(replies) == len(chosen) + break_framing
        for (raw, kind), reply in zip(chosen, replies):
            allowed = ((b"200 ", b"500 ") if kind == "ok" else (b"400 ",)) if tcp else \
                ((b"OK ", b"NOTFOUND ") if kind == "ok" else (b"PERM ",))
            assert reply.startswith(allowed), (raw, reply)
        assert closed == break_framing
        # the other connection is untouched
        bystander.sendall(b"get *\n" if tcp else b"7:onion *,")
        assert read_replies(bystander, 1, tcp)[0] == [b"500 no%20routable%20domain%20in%20key" if tcp else b"NOTFOUND "]
