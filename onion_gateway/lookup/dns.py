"""The SRV query behind every route (RFC 2782), with DNS outcomes as values.

:class:`SrvResolver` asks one question, ``_<service>._tcp.<domain>. IN SRV``, always as an absolute
name (no search list), and returns an :class:`SrvAnswer` whose :class:`DnsStatus` tells routing what
happened. Only dnspython is imported here.

Mapping (DNS response -> status -> what routing does with it)::

    answer with SRV rrset          ANSWER    -> filter and order the targets
    NXDOMAIN                       NXDOMAIN  -> not found (normal transport)
    NOERROR, no SRV (NODATA)       NODATA    -> not found
    truncated and empty even       FAILURE   -> temporary failure (we do not know the records)
      over TCP
    SERVFAIL / REFUSED / no server FAILURE   -> temporary failure (Postfix defers)
    no usable answer by the        TIMEOUT   -> temporary failure
      lookup's deadline

Deadline rule: one deadline per lookup (``dns_timeout``); re-sent queries do not abandon earlier ones,
so an answer that arrives late for the first query still decides the lookup.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import inspect
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1.0       # first re-send of an unanswered query; doubles for each further one
MAX_QUERIES_IN_FLIGHT = 1024    # DNS sockets open at once over all lookups (file descriptors)
# EDNS0 with a 1232-byte buffer: room for many SRV records without falling back to TCP;
# AD in the query so a validating resolver tells us whether it validated (RFC 6840 §5.7).
EDNS_PAYLOAD_BYTES = 1232


class DnsStatus(enum.Enum):
    """What the DNS said, reduced to what routing needs to know."""

    ANSWER = "answer"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    FAILURE = "failure"
    TIMEOUT = "timeout"

    @property
    def is_temporary(self) -> bool:
        """True when the mail must be deferred (the DNS did not say "no")."""
        return self in (DnsStatus.FAILURE, DnsStatus.TIMEOUT)


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """One SRV record (RFC 2782).

    :param priority: lower is tried first (0-65535).
    :param weight: relative share within a priority (0-65535).
    :param port: TCP port of the service.
    :param target: the target host, lower-case, without the trailing dot; ``"."`` stays ``"."``
        (RFC 2782: "service decidedly not available").
    """

    priority: int
    weight: int
    port: int
    target: str

    # dnspython's processing-order protocol (dns.rdtypes.util.weighted_processing_order)
    def _processing_priority(self) -> int:
        return self.priority

    def _processing_weight(self) -> int:
        return self.weight


@dataclass(frozen=True, slots=True)
class SrvAnswer:
    """The outcome of one SRV query.

    :param status: the :class:`DnsStatus`.
    :param records: the SRV records (``ANSWER`` only).
    :param ttl_seconds: the rrset TTL for ``ANSWER``; for NXDOMAIN/NODATA the negative TTL from the
        SOA in the authority section (RFC 2308: min(SOA TTL, SOA MINIMUM)), or ``None`` when absent.
    :param authenticated: the resolver set the AD bit (it validated the answer with DNSSEC).
    :param detail: a short human explanation for logs and temporary-failure replies.
    :param elapsed_seconds: how long the query took (seconds).
    """

    status: DnsStatus
    records: tuple[SrvRecord, ...] = ()
    ttl_seconds: int | None = None
    authenticated: bool = False
    detail: str = ""
    elapsed_seconds: float = 0.0


# dnspython >= 2.4 keeps listening past a malformed or mismatched datagram (``ignore_errors``: a spoofed
# packet cannot end the try). dnspython 2.3 (Debian 12) has no such option: there the bad datagram ends
# that try with an error, and the lookup's other tries (re-sent within the same deadline) carry on.
_UDP_OPTIONS = ({"ignore_errors": True}
                if "ignore_errors" in inspect.signature(dns.asyncquery.udp_with_fallback).parameters else {})


class SrvResolver:
    """Ask DNS servers for SRV records, with one deadline per lookup.

    Each lookup sends a query (``dns.message.make_query`` + ``dns.asyncquery.udp_with_fallback``: dnspython
    checks the ID and the question and falls back to TCP on TC), and re-sends a fresh query -- to the next
    server, round robin -- after :data:`RETRY_AFTER_SECONDS`, doubling each time. Earlier queries keep
    listening: the result is decided by the **first usable answer** from any of them, or by the deadline
    (``timeout_seconds``), whichever comes first. A server that answers SERVFAIL/REFUSED or refuses the
    connection is not asked again in this lookup; when every server did so the lookup ends at once as a
    failure (a dead resolver is noticed as soon as it says so, not at the deadline).

    :param nameservers: ``(ip, port)`` pairs; empty means the servers of /etc/resolv.conf (port 53).
    :param timeout_seconds: the deadline of one :meth:`query`, retries included (seconds).
    :raises dns.resolver.NoResolverConfiguration: (at construction) if *nameservers* is empty and the
        system has no usable resolv.conf.
    """

    def __init__(self, nameservers: Sequence[tuple[str, int]], timeout_seconds: float) -> None:
        if not nameservers:
            system = dns.resolver.Resolver(configure=True)
            nameservers = [(str(ip), 53) for ip in system.nameservers]
        self.nameservers: tuple[tuple[str, int], ...] = tuple(nameservers)
        self.timeout_seconds = timeout_seconds
        # bounds the sockets open for DNS at once (file descriptors; see docs/daemon.md "Limits")
        self._sockets = asyncio.Semaphore(MAX_QUERIES_IN_FLIGHT)

    async def query(self, qname: dns.name.Name) -> SrvAnswer:
        """Query *qname* (absolute, e.g. ``_onion-mx._tcp.example.com.``) for SRV records.

        :param qname: the absolute owner name to ask for.
        :returns: an :class:`SrvAnswer`; every DNS problem is a status, never an exception.
        :raises: nothing from DNS; only programming errors propagate.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.timeout_seconds
        servers = self.nameservers
        failed: set[int] = set()
        attempts: dict[asyncio.Task, int] = {}
        failure = ""
        next_try = start
        retry_after = RETRY_AFTER_SECONDS
        turn = 0
        try:
            while True:
                now = loop.time()
                if now >= deadline:
                    break
                if now >= next_try and len(failed) < len(servers):
                    while turn % len(servers) in failed:
                        turn += 1
                    index = turn % len(servers)
                    turn += 1
                    attempts[loop.create_task(self._attempt(qname, servers[index], deadline - now))] = index
                    next_try = now + retry_after
                    retry_after *= 2
                if not attempts:
                    if len(failed) >= len(servers):
                        return SrvAnswer(DnsStatus.FAILURE, detail=failure or "DNS servers failed",
                                         elapsed_seconds=loop.time() - start)
                    continue
                wake = min(deadline, next_try) if len(failed) < len(servers) else deadline
                done, _ = await asyncio.wait(attempts, timeout=max(0.0, wake - loop.time()),
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    index = attempts.pop(task)
                    outcome = task.result()
                    if outcome is None:             # this query timed out: the others may still answer
                        continue
                    if isinstance(outcome, SrvAnswer):
                        return dataclasses.replace(outcome, elapsed_seconds=loop.time() - start)
                    failure = outcome
                    if index not in failed:
                        failed.add(index)
                        next_try = loop.time()      # ask the next server now, not after the retry interval
        finally:
            for task in attempts:
                task.cancel()
        return SrvAnswer(DnsStatus.TIMEOUT, detail=f"DNS timeout after {self.timeout_seconds:g} s",
                         elapsed_seconds=loop.time() - start)

    async def _attempt(self, qname: dns.name.Name, server: tuple[str, int],
                       budget_seconds: float) -> SrvAnswer | str | None:
        """Send one query to *server* and wait for its answer (at most *budget_seconds*).

        :returns: a usable :class:`SrvAnswer` (ANSWER, NODATA, NXDOMAIN, or FAILURE for a truncated
            answer that even TCP could not carry); a short failure text for this server (SERVFAIL,
            REFUSED, a network error, a malformed answer); ``None`` when no answer came in time.
        """
        query = dns.message.make_query(qname, dns.rdatatype.SRV, use_edns=0, payload=EDNS_PAYLOAD_BYTES,
                                       flags=dns.flags.RD | dns.flags.AD)
        host, port = server
        try:
            async with self._sockets:
                # a connected UDP socket: the kernel reports "port unreachable" (a dead resolver) to us
                udp = await dns.asyncbackend.get_default_backend().make_socket(
                    dns.inet.af_for_address(host), socket.SOCK_DGRAM, 0, None, (host, port))
                try:
                    response, _tcp = await dns.asyncquery.udp_with_fallback(
                        query, host, timeout=budget_seconds, port=port, ignore_unexpected=True,
                        udp_sock=udp, **_UDP_OPTIONS)
                finally:
                    await udp.close()
        except dns.exception.Timeout:
            return None
        except OSError as exc:
            return f"DNS network error: {exc.strerror or exc}"
        except dns.exception.DNSException as exc:
            return f"DNS error: {type(exc).__name__}"
        return _answer_of(response)


def _answer_of(response: dns.message.Message) -> SrvAnswer | str:
    """Reduce one DNS response to an :class:`SrvAnswer`, or a failure text for a server failure."""
    rcode = response.rcode()
    authenticated = bool(response.flags & dns.flags.AD)
    if rcode == dns.rcode.NXDOMAIN:
        return SrvAnswer(DnsStatus.NXDOMAIN, ttl_seconds=_negative_ttl_of([response]),
                         authenticated=authenticated, detail="NXDOMAIN")
    if rcode != dns.rcode.NOERROR:
        return f"DNS server answered {dns.rcode.to_text(rcode)}"
    try:
        chain = response.resolve_chaining()
    except dns.exception.DNSException as exc:
        return f"DNS error: {type(exc).__name__}"
    rrset = chain.answer
    if rrset is None or not len(rrset):
        if response.flags & dns.flags.TC:
            # the answer did not fit even over TCP (an SRV set over 64 KiB): we do not know the records,
            # so this is a failure, never "no SRV record"
            return SrvAnswer(DnsStatus.FAILURE, detail="DNS answer truncated even over TCP")
        return SrvAnswer(DnsStatus.NODATA, ttl_seconds=_negative_ttl_of([response]),
                         authenticated=authenticated, detail="no SRV record")
    records = tuple(
        SrvRecord(rr.priority, rr.weight, rr.port,
                  "." if rr.target == dns.name.root else rr.target.to_text(omit_final_dot=True).lower())
        for rr in rrset)
    return SrvAnswer(DnsStatus.ANSWER, records, ttl_seconds=rrset.ttl, authenticated=authenticated)


def _negative_ttl_of(responses) -> int | None:
    """RFC 2308 §5: the negative TTL is min(SOA record TTL, SOA MINIMUM) from the authority section."""
    for response in responses:
        if not isinstance(response, dns.message.Message):
            continue
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                return min(rrset.ttl, rrset[0].minimum)
    return None
