"""The route cache: one entry per recipient domain, kept for the DNS TTL, asked for once per TTL.

:class:`RouteCache` sits between the connections and :meth:`Router.resolve_domain
<onion_gateway.lookup.routing.Router.resolve_domain>`:

- :meth:`RouteCache.get` is synchronous and allocation-free on a hit, so a connection answers a cached
  domain straight from ``data_received`` without creating a task.
- :meth:`RouteCache.lookup` is the miss path: **single-flight** (concurrent lookups of one domain wait
  on one DNS query, run as its own task so a closed client connection does not cancel it).

How long an answer is kept (all clamped by :class:`CachePolicy`)::

    FOUND                      the SRV rrset TTL            in [min_ttl, max_ttl]
    NOT_FOUND  (NXDOMAIN,      RFC 2308 §5 negative TTL:    in [min_ttl, negative_max_ttl]
    NODATA, no usable target)  min(SOA TTL, SOA MINIMUM);
                               no SOA -> min_ttl
    TEMP_FAIL                  temp_fail_ttl (0: never cached)

**Prefetch** (unbound's ``prefetch``): a hit in the last 10 % of an entry's TTL starts one background
refresh, so a domain that is in use never sees a miss. A refresh that fails keeps the old entry.

**Serve-stale** (RFC 8767, off by default): when DNS fails temporarily, an entry that expired at most
``serve_stale_seconds`` ago is answered instead of a temporary failure, and re-armed for
``STALE_ANSWER_TTL_SECONDS`` (RFC 8767 §4: 30 s) before DNS is tried again. It trades freshness for
availability: a domain that moved its onion (or removed its SRV record) keeps the old route while
its DNS is broken; without it the mail is deferred and Postfix retries later.

The weighted RFC 2782 order of same-priority targets is drawn once per DNS answer, not per request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from onion_gateway.lookup.dns import SrvAnswer
from onion_gateway.lookup.metrics import Stats
from onion_gateway.lookup.result import LookupResult, Outcome
from onion_gateway.lookup.routing import Router

log = logging.getLogger(__name__)

PREFETCH_FRACTION = 0.1             # refresh in the last 10 % of the TTL (unbound's prefetch rule)
STALE_ANSWER_TTL_SECONDS = 30.0     # RFC 8767 §4: stale answers carry TTL 30 s; DNS is retried after it


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How long answers are kept and how many.

    :param max_entries: the most domains kept; past it the least recently used goes. 0 disables
        caching (single-flight still applies).
    :param min_ttl_seconds: the shortest time any positive or negative answer is kept (seconds).
    :param max_ttl_seconds: the longest time a FOUND answer is kept (seconds).
    :param negative_max_ttl_seconds: the longest time a NOT_FOUND answer is kept (seconds).
    :param temp_fail_ttl_seconds: how long a temporary failure is kept (seconds); 0 = not cached.
    :param prefetch: refresh entries that are used in the last 10 % of their TTL.
    :param serve_stale_seconds: how long after expiry an entry may still be answered when DNS fails
        (seconds, RFC 8767); 0 = never.
    """

    max_entries: int = 100_000
    min_ttl_seconds: float = 30.0
    max_ttl_seconds: float = 3600.0
    negative_max_ttl_seconds: float = 900.0
    temp_fail_ttl_seconds: float = 0.0
    prefetch: bool = True
    serve_stale_seconds: float = 0.0


_NEVER = float("inf")


class CacheEntry:
    """One cached answer (four references: about 100 bytes besides the result itself).

    :param result: the routing result.
    :param ttl_seconds: the clamped TTL it is stored with (seconds; only used to place the prefetch point).
    :param expires_at: when it stops being fresh (``time.monotonic()`` seconds).
    :param stale_until: until when it may be served stale (monotonic seconds; pass *expires_at*
        itself when serve-stale is off, so no second float is kept).
    :param prefetch: whether a hit in the last 10 % of the TTL starts a refresh.
    """

    __slots__ = ("result", "expires_at", "prefetch_at", "stale_until")

    def __init__(self, result: LookupResult, ttl_seconds: float, expires_at: float, stale_until: float,
                 prefetch: bool) -> None:
        self.result = result
        self.expires_at = expires_at
        self.stale_until = stale_until
        # a hit after this instant starts a refresh; +inf when prefetch is off
        self.prefetch_at = expires_at - ttl_seconds * PREFETCH_FRACTION if prefetch else _NEVER


class RouteCache:
    """Cache routing results per domain, with single-flight, prefetch and serve-stale.

    :param router: resolves misses (:meth:`Router.resolve_domain`).
    :param policy: the :class:`CachePolicy`.
    :param stats: counters to update (a fresh :class:`Stats` if not given).
    :param clock: monotonic clock in seconds (tests may pass their own).
    """

    def __init__(self, router: Router, policy: CachePolicy = CachePolicy(), stats: Stats | None = None,
                 clock=time.monotonic) -> None:
        self.router = router
        self.policy = policy
        self.stats = stats if stats is not None else Stats()
        self._clock = clock
        self._entries: collections.OrderedDict[str, CacheEntry] = collections.OrderedDict()
        self._inflight: dict[str, asyncio.Task[LookupResult]] = {}
        self._enabled = policy.max_entries > 0
        self._shared: dict[LookupResult, LookupResult] = {}   # one object per distinct negative answer
        self._prefetch = policy.prefetch
        self.changed = False   # set on every store; the persistence task clears it after saving

    # -- the per-request path --------------------------------------------------------------------
    def get(self, domain: str) -> LookupResult | None:
        """The fresh cached result for *domain*, or ``None`` on a miss (no DNS is asked here).

        A hit moves the entry to the most-recently-used end and may start a prefetch.

        :param domain: a normalized A-label domain (as from :meth:`Router.route_without_dns`).
        :returns: the cached :class:`LookupResult`, or ``None`` if absent or expired.
        """
        entry = self._entries.get(domain)
        if entry is None:
            return None
        now = self._clock()
        if now >= entry.expires_at:
            if now >= entry.stale_until:
                del self._entries[domain]
            return None
        self._entries.move_to_end(domain)
        self.stats.cache_hits += 1
        if now >= entry.prefetch_at and domain not in self._inflight:
            self.stats.prefetches += 1
            self._start_fetch(domain)
        return entry.result

    async def lookup(self, domain: str) -> LookupResult:
        """Answer *domain* from the cache or, on a miss, from DNS (one query for all concurrent callers).

        :param domain: a normalized A-label domain.
        :returns: ``FOUND``, ``NOT_FOUND`` or ``TEMP_FAIL`` (a stale ``FOUND``/``NOT_FOUND`` when
            serve-stale applies).
        """
        cached = self.get(domain)
        if cached is not None:
            return cached
        self.stats.cache_misses += 1
        task = self._inflight.get(domain)
        if task is None:
            task = self._start_fetch(domain)
        else:
            self.stats.cache_coalesced += 1
        # shield: a caller whose connection closes must not cancel the query the others wait on
        return await asyncio.shield(task)

    # -- filling ---------------------------------------------------------------------------------
    def _start_fetch(self, domain: str) -> asyncio.Task[LookupResult]:
        task = asyncio.get_running_loop().create_task(self._fetch(domain))
        self._inflight[domain] = task
        return task

    async def _fetch(self, domain: str) -> LookupResult:
        try:
            result, answer = await self.router.resolve_domain(domain)
        except Exception:   # a bug must not leave waiters hanging or kill the prefetch silently
            log.exception("lookup of %s failed unexpectedly", domain)
            result, answer = LookupResult.temp_fail("internal error"), None
        finally:
            self._inflight.pop(domain, None)
        if answer is not None:
            self.stats.note_dns(answer.status, answer.elapsed_seconds)
        return self._store(domain, result, answer)

    def _store(self, domain: str, result: LookupResult, answer: SrvAnswer | None) -> LookupResult:
        policy = self.policy
        now = self._clock()
        if result.outcome is Outcome.TEMP_FAIL:
            current = self._entries.get(domain)
            if current is not None and now < current.expires_at:
                return current.result           # a failed prefetch keeps the fresh entry
            if current is not None and now < current.stale_until and current.result.outcome is not Outcome.TEMP_FAIL:
                self.stats.stale_answers += 1
                log.warning("DNS for %s failed (%s): answering the entry that expired %.0f s ago (serve-stale)",
                            domain, result.value, now - current.expires_at)
                current.expires_at = min(now + STALE_ANSWER_TTL_SECONDS, current.stale_until)
                current.prefetch_at = _NEVER
                return current.result
            if policy.temp_fail_ttl_seconds > 0 and self._enabled:
                self._put(domain, CacheEntry(result, policy.temp_fail_ttl_seconds,
                                             now + policy.temp_fail_ttl_seconds,
                                             now + policy.temp_fail_ttl_seconds, False))
            return result
        if not self._enabled:
            return result
        ttl = float(answer.ttl_seconds) if answer is not None and answer.ttl_seconds is not None else 0.0
        ceiling = policy.max_ttl_seconds if result.outcome is Outcome.FOUND else policy.negative_max_ttl_seconds
        ttl = min(max(ttl, policy.min_ttl_seconds), ceiling)
        expires = now + ttl
        if result.outcome is not Outcome.FOUND:
            result = self._shared.setdefault(result, result)
        stale = expires + policy.serve_stale_seconds if policy.serve_stale_seconds else expires
        self._put(domain, CacheEntry(result, ttl, expires, stale, self._prefetch))
        return result

    def _put(self, domain: str, entry: CacheEntry) -> None:
        entries = self._entries
        entries[domain] = entry
        entries.move_to_end(domain)
        self.changed = True
        while len(entries) > self.policy.max_entries:
            entries.popitem(last=False)
            self.stats.cache_evictions += 1

    # -- inspection and persistence --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def remaining_seconds(self, domain: str) -> float | None:
        """Seconds until *domain*'s entry expires (negative once expired), or ``None`` if absent."""
        entry = self._entries.get(domain)
        return None if entry is None else entry.expires_at - self._clock()

    def export(self) -> list[tuple[str, str, str, float, float]]:
        """The entries worth keeping across a restart, least recently used first.

        :returns: ``[(domain, outcome value, result value, expires_wall, stale_until_wall)]`` with
            wall-clock (``time.time()``) epoch seconds; temporary failures and dead entries are left out.
        """
        now = self._clock()
        offset = time.time() - now
        return [(domain, e.result.outcome.value, e.result.value, e.expires_at + offset, e.stale_until + offset)
                for domain, e in self._entries.items()
                if e.result.outcome is not Outcome.TEMP_FAIL and e.stale_until > now]

    def restore(self, rows: Iterable[tuple[str, str, str, float, float]]) -> int:
        """Load rows made by :meth:`export` (oldest first); expired ones and domains already cached
        (answered by DNS meanwhile, so fresher) are skipped.

        :returns: how many entries were loaded.
        :raises ValueError: if a row has an unknown outcome or malformed fields.
        """
        now = self._clock()
        offset = time.time() - now
        policy = self.policy
        entries = self._entries
        loaded = 0
        for domain, outcome, value, expires_wall, stale_wall in rows:
            result = LookupResult(Outcome(outcome), str(value))
            if result.outcome is Outcome.NOT_FOUND:
                result = self._shared.setdefault(result, result)
            elif result.outcome is not Outcome.FOUND:
                raise ValueError(f"unexpected outcome {outcome!r} for {domain!r}")
            expires, stale = float(expires_wall) - offset, float(stale_wall) - offset
            if stale <= now or domain in entries:
                continue
            # never trust a file for longer than the policy allows now
            expires = min(expires, now + policy.max_ttl_seconds)
            stale = min(stale, expires + policy.serve_stale_seconds) if policy.serve_stale_seconds else expires
            self._put(str(domain), CacheEntry(result, max(0.0, expires - now), expires, max(stale, expires),
                                              self._prefetch))
            loaded += 1
        return loaded
