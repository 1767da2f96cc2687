"""The ceiling: a server that answers every tcp_table/socketmap request with one constant reply.

It frames requests (a newline, or a netstring) and writes a prebuilt reply; no parsing of keys,
no routing, no DNS. Whatever a real daemon loses against it is the cost of its own work.
Runs on uvloop when installed, like the daemons it is compared with.

    python benchmarks/constant_server.py --tcp-table 127.0.0.1:7013 --socketmap 127.0.0.1:7014
"""

from __future__ import annotations

import argparse
import asyncio
import signal

TCP_REPLY = b"200 smtptor:[" + b"a" * 56 + b".onion]:25\n"
_SOCKETMAP_PAYLOAD = b"OK smtptor:[" + b"a" * 56 + b".onion]:25"
SOCKETMAP_REPLY = b"%d:%s," % (len(_SOCKETMAP_PAYLOAD), _SOCKETMAP_PAYLOAD)


class TcpConstant(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        count = data.count(b"\n")
        if count:
            self.transport.write(TCP_REPLY * count)


class SocketmapConstant(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        replies = 0
        while True:
            colon = buffer.find(b":")
            if colon < 0:
                break
            end = colon + 1 + int(buffer[:colon])
            if len(buffer) <= end:
                break
            buffer = buffer[end + 1:]
            replies += 1
        self.buffer = buffer
        if replies:
            self.transport.write(SOCKETMAP_REPLY * replies)


async def serve(tcp: tuple[str, int], socketmap: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(TcpConstant, *tcp, reuse_address=True),
               await loop.create_server(SocketmapConstant, *socketmap, reuse_address=True)]
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description="constant-answer tcp_table/socketmap server (benchmark ceiling)")
    parser.add_argument("--tcp-table", type=_address, required=True)
    parser.add_argument("--socketmap", type=_address, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.tcp_table, args.socketmap))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.tcp_table, args.socketmap))


if __name__ == "__main__":
    main()
