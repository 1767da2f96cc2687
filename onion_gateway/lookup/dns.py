"""The SRV query behind every route (RFC 2782), with DNS outcomes as values.

:class:`SrvResolver` asks one question, ``_<service>._tcp.<domain>. IN SRV``, always as an absolute
name (no search list), and returns an :class:`SrvAnswer` whose :class:`DnsStatus` tells routing what
happened. Only dnspython is imported here.

Mapping (dnspython -> status -> what routing does with it)::

    answer with SRV rrset          ANSWER    -> filter and order the targets
    NXDOMAIN                       NXDOMAIN  -> not found (normal transport)
    NOERROR, no SRV (NODATA)       NODATA    -> not found
    SERVFAIL / REFUSED / no server FAILURE   -> temporary failure (Postfix defers)
    no answer within the budget    TIMEOUT   -> temporary failure
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

log = logging.getLogger(__name__)


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


class SrvResolver:
    """Ask DNS servers for SRV records, within a total time budget.

    :param nameservers: ``(ip, port)`` pairs; empty means the system resolver from /etc/resolv.conf.
    :param timeout_seconds: the budget for one :meth:`query`, retries included (seconds).
    :raises dns.resolver.NoResolverConfiguration: (at construction) if *nameservers* is empty and the
        system has no usable resolv.conf.
    """

    def __init__(self, nameservers: Sequence[tuple[str, int]], timeout_seconds: float) -> None:
        resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            # Addresses plus a port per address: the form dnspython 2.3 (Debian 12) and later both take
            # (ports first: from 2.4 on, setting nameservers reads nameserver_ports).
            resolver.nameserver_ports = {ip: port for ip, port in nameservers}
            resolver.nameservers = [ip for ip, _ in nameservers]
        resolver.lifetime = timeout_seconds
        resolver.timeout = min(timeout_seconds, 3.0)    # per try; the lifetime bounds the whole query
        resolver.cache = None                             # caching is ours to do, by TTL, per domain
        resolver.use_search_by_default = False
        # EDNS0 with a 1232-byte buffer: room for many SRV records without falling back to TCP;
        # AD in the query so a validating resolver tells us whether it validated (RFC 6840 §5.7).
        resolver.use_edns(0, 0, 1232)
        resolver.flags = dns.flags.RD | dns.flags.AD
        self._resolver = resolver
        self.timeout_seconds = timeout_seconds

    async def query(self, qname: dns.name.Name) -> SrvAnswer:
        """Query *qname* (absolute, e.g. ``_onion-mx._tcp.example.com.``) for SRV records.

        :param qname: the absolute owner name to ask for.
        :returns: an :class:`SrvAnswer`; every DNS problem is a status, never an exception.
        :raises: nothing from DNS; only programming errors propagate.
        """
        start = time.monotonic()
        try:
            answer = await self._resolver.resolve(qname, dns.rdatatype.SRV, search=False,
                                                  raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            return SrvAnswer(DnsStatus.NXDOMAIN, ttl_seconds=_negative_ttl_of(exc.responses().values()),
                             authenticated=_all_authenticated(exc.responses().values()),
                             detail="NXDOMAIN", elapsed_seconds=time.monotonic() - start)
        except dns.resolver.LifetimeTimeout:
            return SrvAnswer(DnsStatus.TIMEOUT, detail=f"DNS timeout after {self.timeout_seconds:g} s",
                             elapsed_seconds=time.monotonic() - start)
        except dns.resolver.NoNameservers as exc:
            return SrvAnswer(DnsStatus.FAILURE, detail=_failure_detail(exc),
                             elapsed_seconds=time.monotonic() - start)
        except dns.exception.DNSException as exc:
            return SrvAnswer(DnsStatus.FAILURE, detail=f"DNS error: {type(exc).__name__}",
                             elapsed_seconds=time.monotonic() - start)
        except OSError as exc:
            return SrvAnswer(DnsStatus.FAILURE, detail=f"DNS network error: {exc.strerror or exc}",
                             elapsed_seconds=time.monotonic() - start)
        elapsed = time.monotonic() - start
        response = answer.response
        authenticated = bool(response.flags & dns.flags.AD)
        if answer.rrset is None:
            return SrvAnswer(DnsStatus.NODATA, ttl_seconds=_negative_ttl_of([response]),
                             authenticated=authenticated, detail="no SRV record", elapsed_seconds=elapsed)
        records = tuple(
            SrvRecord(rr.priority, rr.weight, rr.port,
                      "." if rr.target == dns.name.root else rr.target.to_text(omit_final_dot=True).lower())
            for rr in answer.rrset
        )
        return SrvAnswer(DnsStatus.ANSWER, records, ttl_seconds=answer.rrset.ttl,
                         authenticated=authenticated, detail="", elapsed_seconds=elapsed)


def _negative_ttl_of(responses) -> int | None:
    """RFC 2308 §5: the negative TTL is min(SOA record TTL, SOA MINIMUM) from the authority section."""
    for response in responses:
        if not isinstance(response, dns.message.Message):
            continue
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                return min(rrset.ttl, rrset[0].minimum)
    return None


def _all_authenticated(responses) -> bool:
    msgs = [r for r in responses if isinstance(r, dns.message.Message)]
    return bool(msgs) and all(m.flags & dns.flags.AD for m in msgs)


def _failure_detail(exc: dns.resolver.NoNameservers) -> str:
    """Say what the servers answered: dnspython keeps (server, tcp, port, error, response) per try."""
    for error in exc.kwargs.get("errors") or []:
        what = error[3]
        if isinstance(what, str):                       # an rcode name such as "SERVFAIL" or "REFUSED"
            return f"DNS server answered {what}"
        if isinstance(what, OSError):
            return f"DNS network error: {what.strerror or what}"
        if what is not None:
            return f"DNS error: {type(what).__name__}"
    return "DNS servers failed"
