"""A fast SRV stub resolver: persistent UDP sockets and a small wire codec (RFC 1035, RFC 2782).

:class:`UdpSrvResolver` has the same contract as :class:`~onion_gateway.lookup.dns.SrvResolver`
(``await query(qname) -> SrvAnswer``, every DNS problem a status) at a fraction of the CPU: dnspython
spends ~200 µs per query building and parsing messages and opens a socket per query; here a query is
one ``sendto`` on a socket that stays open and the reply is read with ``struct``.

Soundness measures (what a stub resolver on a shared socket must do):

- each server gets a pool of ``SOCKETS_PER_SERVER`` *connected* UDP sockets (the kernel drops replies
  from any other address), each on its own random ephemeral port, replaced after
  ``MAX_QUERIES_PER_SOCKET`` queries (c-ares' ``udp_max_queries``) so a port is not reused forever;
- a random 16-bit ID per query, unique among the socket's pending queries, and a reply is taken only if
  it echoes our exact question section;
- a truncated reply (TC) is asked again over TCP (dnspython, rare);
- SERVFAIL/REFUSED/FORMERR or a socket error moves on to the next server; when every server failed
  the answer is FAILURE; no reply within the budget is TIMEOUT.

Query wire (EDNS0 buffer 1232, RD and AD set as in :class:`SrvResolver`)::

    ID  0x0120  QD=1 AN=0 NS=0 AR=1 | QNAME SRV IN | . OPT 1232 0 0
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from collections.abc import Sequence

import dns.name

from onion_gateway.lookup.dns import DnsStatus, SrvAnswer, SrvRecord

log = logging.getLogger(__name__)

SOCKETS_PER_SERVER = 4
MAX_QUERIES_PER_SOCKET = 10_000
PER_TRY_TIMEOUT_SECONDS = 3.0

TYPE_CNAME, TYPE_SOA, TYPE_SRV = 5, 6, 33
RCODE_NOERROR, RCODE_NXDOMAIN = 0, 3
_RCODE_TEXT = {1: "FORMERR", 2: "SERVFAIL", 4: "NOTIMP", 5: "REFUSED"}
_FLAGS_RD_AD = 0x0120
_OPT_RR = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"     # root, OPT, 1232 bytes, no flags, no options
_QTYPE_QCLASS = struct.pack("!HH", TYPE_SRV, 1)
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_SRV = struct.Struct("!HHH")


class MalformedReply(ValueError):
    """A reply that cannot be parsed (truncated, bad pointers)."""


def build_query(query_id: int, qname_wire: bytes) -> bytes:
    """The wire form of ``qname IN SRV`` with EDNS0 (RD, AD set).

    :param query_id: 0-65535.
    :param qname_wire: the absolute name in wire form (``Name.to_wire()``).
    """
    return _HEADER.pack(query_id, _FLAGS_RD_AD, 1, 0, 0, 1) + qname_wire + _QTYPE_QCLASS + _OPT_RR


def read_name(data: bytes, offset: int) -> tuple[str, int]:
    """Read a possibly compressed name (RFC 1035 §4.1.4) at *offset*.

    :returns: ``(name, offset after it)``; the name lower-case without the final dot, ``"."`` for the root.
    :raises MalformedReply: on a truncated name, a bad label type or a pointer loop.
    """
    labels: list[str] = []
    end = -1
    jumps = 0
    try:
        while True:
            length = data[offset]
            if length == 0:
                offset += 1
                break
            if length >= 0xC0:
                if end < 0:
                    end = offset + 2
                jumps += 1
                if jumps > 64:
                    raise MalformedReply("compression pointer loop")
                offset = ((length & 0x3F) << 8) | data[offset + 1]
                continue
            if length > 63:
                raise MalformedReply("bad label type")
            label = data[offset + 1:offset + 1 + length]
            if len(label) != length:
                raise MalformedReply("truncated label")
            labels.append(label.decode("latin-1").lower())
            offset += 1 + length
    except IndexError:
        raise MalformedReply("truncated name") from None
    return (".".join(labels) if labels else "."), (end if end >= 0 else offset)


def parse_reply(data: bytes, qname: str) -> tuple[int, bool, bool, tuple[SrvRecord, ...], int | None, int | None]:
    """Parse an SRV reply.

    :param data: the reply datagram.
    :param qname: the asked name, lower-case, no final dot (SRV records of it or of its CNAME chain count).
    :returns: ``(rcode, truncated, authenticated, records, srv_ttl, negative_ttl)``; *srv_ttl* is the
        smallest TTL of the SRV records, *negative_ttl* min(SOA TTL, SOA MINIMUM) from the authority
        section (RFC 2308 §5), each ``None`` when absent.
    :raises MalformedReply: if the reply cannot be parsed.
    """
    try:
        _id, flags, qdcount, ancount, nscount, _arcount = _HEADER.unpack_from(data)
        offset = 12
        for _ in range(qdcount):
            offset = read_name(data, offset)[1] + 4
        owners = {qname}
        records: list[SrvRecord] = []
        srv_ttl: int | None = None
        for _ in range(ancount):
            owner, offset = read_name(data, offset)
            rtype, _rclass, ttl, rdlength = _RR.unpack_from(data, offset)
            offset += 10
            if owner in owners:
                if rtype == TYPE_SRV:
                    priority, weight, port = _SRV.unpack_from(data, offset)
                    records.append(SrvRecord(priority, weight, port, read_name(data, offset + 6)[0]))
                    srv_ttl = ttl if srv_ttl is None else min(srv_ttl, ttl)
                elif rtype == TYPE_CNAME:
                    owners.add(read_name(data, offset)[0])
            offset += rdlength
        negative_ttl: int | None = None
        for _ in range(nscount):
            _owner, offset = read_name(data, offset)
            rtype, _rclass, ttl, rdlength = _RR.unpack_from(data, offset)
            offset += 10
            if rtype == TYPE_SOA and negative_ttl is None:
                minimum = struct.unpack_from("!I", data, offset + rdlength - 4)[0]
                negative_ttl = min(ttl, minimum)
            offset += rdlength
        if offset > len(data):
            raise MalformedReply("truncated record")
    except struct.error:
        raise MalformedReply("truncated reply") from None
    return flags & 0x000F, bool(flags & 0x0200), bool(flags & 0x0020), tuple(records), srv_ttl, negative_ttl


class _Channel(asyncio.DatagramProtocol):
    """One connected UDP socket with its pending queries ``{id: (question bytes, future)}``."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[bytes, asyncio.Future[bytes]]] = {}
        self.sent = 0
        self.retired = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) < 12:
            return
        query_id = (data[0] << 8) | data[1]
        waiting = self.pending.get(query_id)
        if waiting is None:
            return
        question, future = waiting
        if data[12:12 + len(question)].lower() != question:   # not the reply to our question: ignore
            return
        del self.pending[query_id]
        if not future.done():
            future.set_result(data)
        self._close_if_idle()

    def error_received(self, exc: Exception) -> None:
        # connected UDP: ICMP port unreachable and friends arrive here; fail everything pending
        for _question, future in self.pending.values():
            if not future.done():
                future.set_exception(exc)
        self.pending.clear()

    def connection_lost(self, exc) -> None:
        self.error_received(exc or ConnectionResetError("socket closed"))
        self.transport = None

    def send(self, query_id: int, wire: bytes, question: bytes, future: asyncio.Future[bytes]) -> None:
        self.pending[query_id] = (question, future)
        self.sent += 1
        if self.sent >= MAX_QUERIES_PER_SOCKET:
            self.retired = True
        assert self.transport is not None
        self.transport.sendto(wire)

    def forget(self, query_id: int) -> None:
        self.pending.pop(query_id, None)
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self.retired and not self.pending and self.transport is not None:
            self.transport.close()


class UdpSrvResolver:
    """Ask DNS servers for SRV records over persistent UDP sockets, within a total time budget.

    :param nameservers: ``(ip, port)`` pairs, tried in turn; empty means the system resolver's servers
        (/etc/resolv.conf, port 53).
    :param timeout_seconds: the budget for one :meth:`query`, retries included (seconds).
    :raises dns.resolver.NoResolverConfiguration: (at construction) if *nameservers* is empty and the
        system has no usable resolv.conf.
    """

    def __init__(self, nameservers: Sequence[tuple[str, int]], timeout_seconds: float) -> None:
        if not nameservers:
            import dns.resolver

            nameservers = [(str(ip), 53) for ip in dns.resolver.Resolver(configure=True).nameservers]
            if not nameservers:
                raise dns.resolver.NoResolverConfiguration("no nameservers in resolv.conf")
        self.nameservers = list(nameservers)
        self.timeout_seconds = timeout_seconds
        self._pools: list[list[_Channel | None]] = [[None] * SOCKETS_PER_SERVER for _ in self.nameservers]
        self._turn = 0

    def close(self) -> None:
        """Close every socket (pending queries fail); the next query opens new ones."""
        for pool in self._pools:
            for index, channel in enumerate(pool):
                if channel is not None and channel.transport is not None:
                    channel.transport.close()
                pool[index] = None

    async def _channel(self, server: int) -> _Channel:
        pool = self._pools[server]
        self._turn = (self._turn + 1) % SOCKETS_PER_SERVER
        channel = pool[self._turn]
        if channel is None or channel.retired or channel.transport is None:
            host, port = self.nameservers[server]
            loop = asyncio.get_running_loop()
            _transport, channel = await loop.create_datagram_endpoint(_Channel, remote_addr=(host, port))
            old = pool[self._turn]
            pool[self._turn] = channel
            if old is not None:
                old.retired = True
                old._close_if_idle()
        return channel

    async def query(self, qname: dns.name.Name) -> SrvAnswer:
        """Query *qname* (absolute, e.g. ``_onion-mx._tcp.example.com.``) for SRV records.

        :returns: an :class:`SrvAnswer`; every DNS problem is a status, never an exception.
        """
        start = time.monotonic()
        deadline = start + self.timeout_seconds
        qname_wire = qname.to_wire()
        question = qname_wire.lower() + _QTYPE_QCLASS
        name_text = qname.to_text(omit_final_dot=True).lower()
        failures: list[str] = []
        servers = len(self.nameservers)
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return SrvAnswer(DnsStatus.TIMEOUT, detail=f"DNS timeout after {self.timeout_seconds:g} s",
                                 elapsed_seconds=time.monotonic() - start)
            server = attempt % servers
            attempt += 1
            try:
                data = await self._ask(server, qname_wire, question, min(remaining, PER_TRY_TIMEOUT_SECONDS))
                if data is None:
                    continue                                  # this try timed out: next server / retry
                rcode, truncated, authenticated, records, srv_ttl, negative_ttl = parse_reply(data, name_text)
                if truncated:
                    data = await self._ask_tcp(server, qname, max(0.1, deadline - time.monotonic()))
                    rcode, _, authenticated, records, srv_ttl, negative_ttl = parse_reply(data, name_text)
            except (OSError, MalformedReply, asyncio.TimeoutError) as exc:
                failures.append(f"DNS network error: {getattr(exc, 'strerror', None) or exc}"
                                if isinstance(exc, OSError) else f"DNS error: {exc}")
            else:
                elapsed = time.monotonic() - start
                if rcode == RCODE_NXDOMAIN:
                    return SrvAnswer(DnsStatus.NXDOMAIN, ttl_seconds=negative_ttl, authenticated=authenticated,
                                     detail="NXDOMAIN", elapsed_seconds=elapsed)
                if rcode == RCODE_NOERROR:
                    if not records:
                        return SrvAnswer(DnsStatus.NODATA, ttl_seconds=negative_ttl, authenticated=authenticated,
                                         detail="no SRV record", elapsed_seconds=elapsed)
                    return SrvAnswer(DnsStatus.ANSWER, records, ttl_seconds=srv_ttl, authenticated=authenticated,
                                     elapsed_seconds=elapsed)
                failures.append(f"DNS server answered {_RCODE_TEXT.get(rcode, f'rcode {rcode}')}")
            if len(failures) >= servers:                     # every server failed outright: no point waiting
                return SrvAnswer(DnsStatus.FAILURE, detail=failures[-1], elapsed_seconds=time.monotonic() - start)

    async def _ask(self, server: int, qname_wire: bytes, question: bytes, timeout: float) -> bytes | None:
        channel = await self._channel(server)
        query_id = secrets.randbits(16)
        while query_id in channel.pending:
            query_id = secrets.randbits(16)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        channel.send(query_id, build_query(query_id, qname_wire), question, future)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            channel.forget(query_id)

    async def _ask_tcp(self, server: int, qname: dns.name.Name, timeout: float) -> bytes:
        import dns.asyncquery
        import dns.message

        host, port = self.nameservers[server]
        query = dns.message.make_query(qname, "SRV", use_edns=0, payload=1232)
        query.flags |= 0x0020
        reply = await dns.asyncquery.tcp(query, host, timeout=timeout, port=port)
        return reply.to_wire()
