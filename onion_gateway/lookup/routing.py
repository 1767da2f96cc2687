"""From a Postfix lookup key to a transport-map answer (the routing rules of ``serve``).

Rules, in order (each stops the walk)::

    key empty, "*", or an address literal user@[192.0.2.1]   -> not found, no DNS query
    domain not a valid DNS name                               -> not found, no DNS query
    domain excluded (exact; subdomains if configured)         -> not found, no DNS query
    static map entry (exact, then ".parent" entries)          -> its value
    domain is itself a v3 .onion name                         -> <transport>:[domain]:25 (never to DNS,
                                                                  RFC 7686); a bad one, or the bare
                                                                  TLD "onion" -> error: bounce
    SRV _<service>._tcp.<A-label domain>.                     -> usable v3 onion targets (port not 0) in RFC 2782
                                                                  order: <transport>:[a.onion]:25, [b.onion]:2525
      NXDOMAIN / NODATA / no usable target                    -> not found
      SERVFAIL / timeout / refused / network error            -> temporary failure (mail is deferred)

Postfix sends the full recipient (``user+ext@Example.COM``), a bare domain (postmap, other callers)
or ``*`` (trivial-rewrite's wildcard probe); tcp: and socketmap: tables are "pattern" tables, so Postfix
never retries with the parent domain itself (see LAB-NOTES §3).
"""

from __future__ import annotations

import collections
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.name
import dns.rdtypes.util

from onion_gateway.lookup.dns import DnsStatus, SrvAnswer, SrvRecord, SrvResolver
from onion_gateway.lookup.pins import PinStore, PinVerdict
from onion_gateway.lookup.result import LookupResult
from onion_gateway.onion import OnionCheck, check_onion

log = logging.getLogger(__name__)

ONION_SMTP_PORT = 25
PORT_ZERO_REFUSAL = "port_zero"     # refusal reason (metrics) of an SRV record with port 0
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_HOST_NAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")    # one fullmatch instead of one match per label
_BRACKETED_HOST = re.compile(r"\[([^\]]*)\]")
_INVALID_ONION_ROUTE = "error:5.1.2 Bad destination system address: not a valid v3 onion address"


@dataclass(frozen=True)
class RoutingTable:
    """The reloadable part of routing: what SIGHUP re-reads.

    :param exclude_domains: A-label domains never routed to an onion.
    :param exclude_subdomains: whether subdomains of excluded domains are excluded too.
    :param static_routes: ``{domain or .parent: transport-map value}``, answered before DNS.
    """

    exclude_domains: frozenset[str] = frozenset()
    exclude_subdomains: bool = False
    static_routes: Mapping[str, str] = field(default_factory=dict)

    def is_excluded(self, domain: str) -> bool:
        """True if *domain* (normalized A-label) is excluded from onion routing."""
        if domain in self.exclude_domains:
            return True
        if self.exclude_subdomains:
            parts = domain.split(".")
            return any(".".join(parts[i:]) in self.exclude_domains for i in range(1, len(parts)))
        return False

    def static_route(self, domain: str) -> str | None:
        """The static-map value for *domain*: exact key first, then ``.parent`` keys, nearest first."""
        routes = self.static_routes
        if not routes:
            return None
        value = routes.get(domain)
        if value is not None:
            return value
        parts = domain.split(".")
        for i in range(1, len(parts)):
            value = routes.get("." + ".".join(parts[i:]))
            if value is not None:
                return value
        return None


def normalize_domain(domain: str) -> str | None:
    """Lower-case *domain*, drop one trailing dot, and convert it to its IDNA A-label form.

    :param domain: the domain part of a recipient, in any case, U-label or A-label.
    :returns: the A-label domain (``"xn--bcher-kva.example"``), or ``None`` if it is not a valid
        host name (empty labels, bad characters, label > 63 or name > 253 characters).
    """
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain:
        return None
    if not domain.isascii():
        try:
            domain = dns.name.from_unicode(domain, idna_codec=dns.name.IDNA_2008_Practical).to_text(
                omit_final_dot=True)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return None
    domain = domain.lower()
    if len(domain) > 253:
        return None
    if _HOST_NAME.fullmatch(domain) is None:
        return None
    return domain


def domain_of_key(key: str) -> str | None:
    """Extract the domain to route from a lookup key.

    :param key: a full address ``user@domain``, a bare ``domain``, ``*`` or an empty key.
    :returns: the raw domain part, or ``None`` when the key names no routable domain
        (empty, ``*``, an address literal ``[...]``, a bare local part ending in ``@``).
    """
    key = key.strip()
    if not key or key == "*":
        return None
    domain = key.rpartition("@")[2]
    if not domain or domain.startswith("["):
        return None
    return domain


def usable_targets(domain: str, records: Sequence[SrvRecord],
                   refusals: "collections.Counter[str] | None" = None) -> list[SrvRecord]:
    """Keep the SRV records whose target is a valid v3 onion on a port other than 0, each (target, port) once.

    Refused targets (v2 onions, clearnet names, bad checksums, port 0) are logged at warning with *domain*;
    the target ``.`` ("decidedly not available", RFC 2782) at info.

    :param domain: the domain the records belong to (for the log).
    :param records: the SRV records of its answer.
    :param refusals: a counter incremented per refused target by its :class:`OnionCheck` value, or
        ``"port_zero"`` (metrics).
    :returns: the usable records, in answer order.
    """
    usable: list[SrvRecord] = []
    seen: set[tuple[str, int]] = set()
    for record in records:
        verdict = check_onion(record.target) if record.target != "." else None
        if verdict is OnionCheck.VALID and record.port == 0:
            # port 0 is no SMTP service; smtptor:[x.onion]:0 would only defer the mail at delivery time
            log.warning("refusing SRV target %s:0 for %s: port 0", record.target, domain)
            if refusals is not None:
                refusals[PORT_ZERO_REFUSAL] += 1
        elif verdict is OnionCheck.VALID:
            if (record.target, record.port) not in seen:
                seen.add((record.target, record.port))
                usable.append(record)
        elif verdict is None:
            log.info("SRV for %s has target '.': service decidedly not available (RFC 2782)", domain)
        else:
            log.warning("refusing SRV target %s for %s: %s", record.target, domain, verdict.value)
            if refusals is not None:
                refusals[verdict.value] += 1
    return usable


def onions_in_route(value: str) -> list[str]:
    """The bracketed ``.onion`` hosts of a transport-map value (``smtptor:[a.onion]:25, [b.onion]:25``)."""
    return [h for h in _BRACKETED_HOST.findall(value) if h.lower().endswith(".onion")]


def order_targets(records: Sequence[SrvRecord]) -> list[SrvRecord]:
    """Order SRV records as RFC 2782 says a client must try them, with dnspython's
    ``weighted_processing_order`` (what ``Rdataset.processing_order()`` uses for SRV).

    Priorities ascending; within a priority, repeatedly pick a record at random with probability
    proportional to its weight; a weight-0 record counts as weight 0.1 (RFC 2782: "a very small chance").

    :param records: the usable records.
    :returns: a new list in try order.
    """
    return dns.rdtypes.util.weighted_processing_order(records)


class Router:
    """Answer lookup keys with transport-map values.

    :param resolver: an SRV resolver with ``async query(qname) -> SrvAnswer``
        (:class:`SrvResolver`).
    :param table: the reloadable :class:`RoutingTable`; replace it with :meth:`reload`.
    :param service: SRV service label (``onion-mx`` -> ``_onion-mx._tcp.<domain>``).
    :param transport: master.cf transport name put before the nexthops (``smtptor``).
    :param max_nexthops: at most this many nexthops per answer.
    :param require_dnssec: use an SRV answer only if the resolver authenticated it (AD bit, RFC 4035
        §3.2.3); an unsigned answer is ignored (not found), a bogus one is the resolver's SERVFAIL.
    :param pins: the :class:`PinStore` that notices onion-set changes, or ``None`` for no pinning.
    """

    def __init__(self, resolver: SrvResolver, table: RoutingTable, *, service: str = "onion-mx",
                 transport: str = "smtptor", max_nexthops: int = 10, require_dnssec: bool = False,
                 pins: PinStore | None = None) -> None:
        self.resolver = resolver
        self.table = table
        self.service = service
        self.transport = transport
        self.max_nexthops = max_nexthops
        self.require_dnssec = require_dnssec
        self.pins = pins
        self._service_prefix = dns.name.Name([b"_" + service.encode("ascii"), b"_tcp"])
        # onion names refused, by OnionCheck value (v2_onion, clearnet, bad_checksum, ...): for metrics
        self.refusals: collections.Counter[str] = collections.Counter()

    def reload(self, table: RoutingTable) -> None:
        """Swap in a new :class:`RoutingTable` (exclusions, static map) atomically."""
        self.table = table

    def route_without_dns(self, key: str) -> LookupResult | str:
        """Apply every rule that needs no DNS.

        :param key: the decoded lookup key.
        :returns: a final :class:`LookupResult`, or the normalized domain (str) whose SRV must be asked.
        """
        raw = domain_of_key(key)
        if raw is None:
            return LookupResult.not_found("no routable domain in key")
        domain = normalize_domain(raw)
        if domain is None:
            return LookupResult.not_found("not a domain name")
        table = self.table
        if table.is_excluded(domain):
            return LookupResult.not_found("excluded domain")
        static = table.static_route(domain)
        if static is not None:
            return LookupResult.found(static)
        if domain.endswith(".onion") or domain == "onion":     # RFC 7686 §2: never to DNS, the TLD neither
            verdict = check_onion(domain)
            if verdict is OnionCheck.VALID:
                return LookupResult.found(f"{self.transport}:[{domain}]:{ONION_SMTP_PORT}")
            log.warning("recipient domain %s is not a valid v3 onion address (%s): bouncing",
                        domain, verdict.value)
            self.refusals[verdict.value] += 1
            return LookupResult.found(_INVALID_ONION_ROUTE)
        return domain

    def srv_name(self, domain: str) -> dns.name.Name:
        """The absolute SRV owner name ``_<service>._tcp.<domain>.`` for an A-label *domain*."""
        return self._service_prefix.concatenate(dns.name.from_text(domain))

    def route_from_answer(self, domain: str, answer: SrvAnswer) -> LookupResult:
        """Turn an SRV answer for *domain* into a lookup result.

        :param domain: the normalized domain that was asked about (for logs).
        :param answer: what :meth:`SrvResolver.query` returned.
        :returns: ``FOUND`` with the nexthop list, ``NOT_FOUND`` or ``TEMP_FAIL``.
        """
        status = answer.status
        if status.is_temporary:
            log.warning("SRV lookup for %s failed (%s): temporary failure, mail deferred", domain, answer.detail)
            return LookupResult.temp_fail(answer.detail or "DNS failure")
        if status is not DnsStatus.ANSWER:
            return LookupResult.not_found(answer.detail or status.value)
        if self.require_dnssec and not answer.authenticated:
            log.warning("ignoring SRV for %s: not authenticated by DNSSEC (require_dnssec)", domain)
            return LookupResult.not_found("SRV answer not DNSSEC-authenticated")
        usable = usable_targets(domain, answer.records, self.refusals)
        if not usable:
            return LookupResult.not_found("no usable onion target")
        if self.pins is not None and self.pins.check(domain, (r.target for r in usable)) is PinVerdict.HELD:
            return LookupResult.temp_fail(f"onion set of {domain} changed: held until 'onion-gateway pins accept'")
        ordered = order_targets(usable)[: self.max_nexthops]
        return LookupResult.found(
            f"{self.transport}:" + ", ".join(f"[{r.target}]:{r.port}" for r in ordered))

    async def lookup(self, key: str) -> LookupResult:
        """Route one lookup key, asking DNS if the rules need it.

        :param key: the decoded lookup key (address, domain or ``*``).
        :returns: the :class:`LookupResult` (never raises for DNS trouble: that is ``TEMP_FAIL``).
        """
        first = self.route_without_dns(key)
        if isinstance(first, LookupResult):
            return first
        return await self.lookup_domain(first)

    async def lookup_domain(self, domain: str) -> LookupResult:
        """Ask DNS for *domain*'s SRV records and route by them.

        :param domain: a domain as returned by :meth:`route_without_dns` (normalized A-label).
        :returns: ``FOUND``, ``NOT_FOUND`` or ``TEMP_FAIL``.
        """
        return (await self.resolve_domain(domain))[0]

    async def resolve_domain(self, domain: str) -> tuple[LookupResult, SrvAnswer | None]:
        """Like :meth:`lookup_domain`, also returning the DNS answer (its TTL is what a cache needs).

        :param domain: a normalized A-label domain.
        :returns: ``(result, answer)``; *answer* is ``None`` when no query was sent (name too long).
        """
        try:
            qname = self.srv_name(domain)
        except dns.exception.DNSException:
            return LookupResult.not_found("domain name too long for an SRV query"), None
        answer = await self.resolver.query(qname)
        return self.route_from_answer(domain, answer), answer


def build_routing_table(exclude_domains: frozenset[str], exclude_file_domains: frozenset[str],
                        exclude_subdomains: bool, static_routes: Mapping[str, str]) -> RoutingTable:
    """Normalize configured exclusions and static routes into a :class:`RoutingTable`.

    :param exclude_domains: domains from the config/command line.
    :param exclude_file_domains: domains read from the exclusion file.
    :param exclude_subdomains: exclude subdomains too.
    :param static_routes: ``{domain or .parent: value}`` from the static map file and the TOML table.
    :returns: the table, with every domain in A-label form.
    :raises ValueError: if an excluded domain or static-map key is not a valid domain name, or a
        static-map value is not ``transport:nexthop`` or names an invalid or v2 onion.
    """
    excluded = set()
    for domain in exclude_domains | exclude_file_domains:
        normal = normalize_domain(domain)
        if normal is None:
            raise ValueError(f"excluded domain {domain!r} is not a domain name")
        excluded.add(normal)
    routes: dict[str, str] = {}
    for key, value in static_routes.items():
        dot = key.startswith(".")
        normal = normalize_domain(key[1:] if dot else key)
        if normal is None:
            raise ValueError(f"static map key {key!r} is not a domain name")
        transport, colon, nexthops = value.partition(":")
        if not colon or not transport:
            raise ValueError(f"static map value for {key!r} is not 'transport:nexthop': {value!r}")
        for host in onions_in_route(nexthops):
            if check_onion(host) is not OnionCheck.VALID:
                raise ValueError(f"static map value for {key!r} names a bad onion ({check_onion(host).value}): {host}")
        routes[("." if dot else "") + normal] = value
    return RoutingTable(frozenset(excluded), exclude_subdomains, routes)
