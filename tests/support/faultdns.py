"""A DNS server on 127.0.0.1 (UDP and TCP) whose every answer is truncated, even over TCP.

This is what a resolver sends for an SRV set larger than 64 KiB: over UDP a TC answer, over TCP an
answer with TC set and no records. No stock server produces it on demand, so this one builds real
DNS messages with dnspython and serves them on real sockets.
"""

from __future__ import annotations

from tests.support.dnsserver import ScriptDns
from tests.support.procs import free_tcp_udp_port

TRUNCATING_DNS = r'''
import socket, struct, sys, threading
import dns.flags, dns.message
port = int(sys.argv[1])
def truncated(data):
    q = dns.message.from_wire(data)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.TC
    return r.to_wire()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.1", port))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("127.0.0.1", port))
t.listen(16)
def serve_udp():
    while True:
        data, addr = u.recvfrom(4096)
        try:
            u.sendto(truncated(data), addr)
        except Exception:
            pass
def serve_tcp_one(c):
    with c:
        while True:
            head = c.recv(2)
            if len(head) < 2:
                return
            (n,) = struct.unpack("!H", head)
            data = b""
            while len(data) < n:
                more = c.recv(n - len(data))
                if not more:
                    return
                data += more
            wire = truncated(data)
            c.sendall(struct.pack("!H", len(wire)) + wire)
def serve_tcp():
    while True:
        c, _ = t.accept()
        threading.Thread(target=serve_tcp_one, args=(c,), daemon=True).start()
threading.Thread(target=serve_udp, daemon=True).start()
print("ready", flush=True)
serve_tcp()
'''


class TruncatingDns(ScriptDns):
    """Answer every query with TC set and no records, over UDP and over TCP (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(TRUNCATING_DNS, free_tcp_udp_port())
