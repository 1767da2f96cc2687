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
import logging
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from onion_gateway.config import ServeSettings
from onion_gateway.lookup.bounded import GenerationalMap
from onion_gateway.lookup.dns import SrvAnswer
from onion_gateway.lookup.metrics import Stats
from onion_gateway.lookup.result import LookupResult, Outcome
from onion_gateway.lookup.routing import Router

log = logging.getLogger(__name__)

_DEFAULTS = ServeSettings()         # defaults live in one place: the settings
PREFETCH_FRACTION = 0.1             # refresh in the last 10 % of the TTL (unbound's prefetch rule)
STALE_ANSWER_TTL_SECONDS = 30.0     # RFC 8767 §4: stale answers carry TTL 30 s; DNS is retried after it


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How long answers are kept and how many.

    :param max_entries: the most domains kept (an approximate LRU, see :class:`RouteCache`). 0 disables
        caching (single-flight still applies).
    :param min_ttl_seconds: the shortest time any positive or negative answer is kept (seconds).
    :param max_ttl_seconds: the longest time a FOUND answer is kept (seconds).
    :param negative_max_ttl_seconds: the longest time a NOT_FOUND answer is kept (seconds).
    :param temp_fail_ttl_seconds: how long a temporary failure is kept (seconds); 0 = not cached.
    :param prefetch: refresh entries that are used in the last 10 % of their TTL.
    :param serve_stale_seconds: how long after expiry an entry may still be answered when DNS fails
        (seconds, RFC 8767); 0 = never.
    """

    max_entries: int = _DEFAULTS.cache_max_entries
    min_ttl_seconds: float = _DEFAULTS.cache_min_ttl_seconds
    max_ttl_seconds: float = _DEFAULTS.cache_max_ttl_seconds
    negative_max_ttl_seconds: float = _DEFAULTS.cache_negative_max_ttl_seconds
    temp_fail_ttl_seconds: float = _DEFAULTS.cache_temp_fail_ttl_seconds
    prefetch: bool = _DEFAULTS.cache_prefetch
    serve_stale_seconds: float = _DEFAULTS.cache_serve_stale_seconds

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> "CachePolicy":
        """The cache policy of *settings* (its ``cache_*`` keys; defaults live in :class:`ServeSettings`)."""
        return cls(max_entries=settings.cache_max_entries, min_ttl_seconds=settings.cache_min_ttl_seconds,
                   max_ttl_seconds=settings.cache_max_ttl_seconds,
                   negative_max_ttl_seconds=settings.cache_negative_max_ttl_seconds,
                   temp_fail_ttl_seconds=settings.cache_temp_fail_ttl_seconds, prefetch=settings.cache_prefetch,
                   serve_stale_seconds=settings.cache_serve_stale_seconds)


_NEVER = float("inf")

# One entry is one bytes object: a fixed head, then the result's value as UTF-8 (about 270 bytes per
# domain in RSS with its dict slot and key, against about 510 for an object per entry).
#   expires_at, prefetch_at, stale_until: monotonic seconds (prefetch_at +inf when prefetch is off)
#   code: index into _CODES; PIN_ONLY marks an entry that holds only a pin (never answered);
#         FOUND_SHORT a found value stored without its "<transport>:" prefix (16 bytes less per domain)
#   pin: the domain's onion-pin digest (see pins.py), 0 = none
_HEAD = struct.Struct("<dffBQ")     # prefetch_at and stale_until stored as float32 offsets from expires_at
_HEAD_SIZE = _HEAD.size
_CODES = (Outcome.FOUND, Outcome.NOT_FOUND, Outcome.TEMP_FAIL)
_CODE_OF = {outcome: code for code, outcome in enumerate(_CODES)}
_TEMP = _CODE_OF[Outcome.TEMP_FAIL]
PIN_ONLY = len(_CODES)
FOUND_SHORT = PIN_ONLY + 1


def _pack_head(expires: float, prefetch_at: float, stale: float, code: int, pin: int) -> bytes:
    return _HEAD.pack(expires, prefetch_at - expires, stale - expires, code, pin)


def _unpack(raw: bytes) -> tuple[float, float, float, int, int]:
    """``(expires_at, prefetch_at, stale_until, code, pin)`` of an entry."""
    expires, prefetch, stale, code, pin = _HEAD.unpack_from(raw)
    return expires, expires + prefetch, expires + stale, code, pin


class RouteCache:
    """Cache routing results per domain, with single-flight, prefetch and serve-stale.

    **Bound**: at most ``max_entries`` domains, an approximate LRU in generations
    (:class:`~onion_gateway.lookup.bounded.GenerationalMap`). Expired entries stay until they are
    replaced or evicted (they keep the domain's pin).

    The cache is also the memory of the onion pins (:class:`~onion_gateway.lookup.pins.PinStore` reads
    and writes them through :meth:`pin_of` / :meth:`set_pin`): a pin is evicted with its route.

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
        self._map: GenerationalMap[bytes] = GenerationalMap(policy.max_entries, self._evicted)
        self._inflight: dict[str, asyncio.Task[LookupResult]] = {}
        self._enabled = policy.max_entries > 0
        self._negative: dict[bytes, LookupResult] = {}   # one result object per distinct negative answer
        self._prefetch = policy.prefetch
        transport = getattr(router, "transport", "")
        self._prefix = f"{transport}:" if transport else ""     # stripped from stored found values
        self.changed = False   # set on every store; the persistence task clears it after saving
        # called with {domain: entry} of each dropped generation (the pin store forgets their pins)
        self.on_evict: Callable[[dict[str, bytes]], None] | None = None

    @property
    def enabled(self) -> bool:
        """False when ``max_entries`` is 0 (nothing is kept; single-flight still applies)."""
        return self._enabled

    # -- the per-request path --------------------------------------------------------------------
    def get(self, domain: str) -> LookupResult | None:
        """The fresh cached result for *domain*, or ``None`` on a miss (no DNS is asked here).

        A hit counts as a use for the eviction order and may start a prefetch.

        :param domain: a normalized A-label domain (as from :meth:`Router.route_without_dns`).
        :returns: the cached :class:`LookupResult`, or ``None`` if absent or expired.
        """
        raw = self._map.use(domain)
        if raw is None:
            return None
        expires, prefetch_at, _stale, code, _pin = _unpack(raw)
        now = self._clock()
        if now >= expires:
            return None
        self.stats.cache_hits += 1
        if now >= prefetch_at and domain not in self._inflight:
            self.stats.prefetches += 1
            self._start_fetch(domain)
        if code == FOUND_SHORT:
            return LookupResult(Outcome.FOUND, self._prefix + raw[_HEAD_SIZE:].decode())
        if code:
            return self._negative_result(raw, code)
        return LookupResult(Outcome.FOUND, raw[_HEAD_SIZE:].decode())

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

    # -- pins (the PinStore's memory) ------------------------------------------------------------
    def pin_of(self, domain: str) -> int:
        """The pin digest kept with *domain*'s entry, 0 when none."""
        raw = self._entry(domain)
        return 0 if raw is None else _HEAD.unpack_from(raw)[4]

    def set_pin(self, domain: str, pin: int) -> None:
        """Keep pin digest *pin* (0 = forget) with *domain*'s entry; an entry holding only the pin is
        made when there is none (it never answers a lookup)."""
        raw = self._entry(domain)
        if raw is None:
            if pin:
                self._put(domain, _pack_head(0.0, _NEVER, 0.0, PIN_ONLY, pin), changed=False)
            return
        expires, prefetch_at, stale, code, _old_pin = _unpack(raw)
        self._replace(domain, _pack_head(expires, prefetch_at, stale, code, pin) + raw[_HEAD_SIZE:])

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

    def _entry(self, domain: str) -> bytes | None:
        return self._map.find(domain)

    def _store(self, domain: str, result: LookupResult, answer: SrvAnswer | None) -> LookupResult:
        policy = self.policy
        now = self._clock()
        current = self._entry(domain)
        if current is not None:
            expires, _prefetch, stale, code, pin = _unpack(current)
        else:
            expires, stale, code, pin = 0.0, 0.0, PIN_ONLY, 0
        if result.outcome is Outcome.TEMP_FAIL:
            if current is not None and code != PIN_ONLY:
                if now < expires:
                    return self._result_of(current, code)     # a failed prefetch keeps the fresh entry
                if now < stale and code != _TEMP:
                    self.stats.stale_answers += 1
                    log.warning("DNS for %s failed (%s): answering the entry that expired %.0f s ago "
                                "(serve-stale)", domain, result.value, now - expires)
                    self._replace(domain, _pack_head(min(now + STALE_ANSWER_TTL_SECONDS, stale), _NEVER, stale,
                                                     code, pin) + current[_HEAD_SIZE:])
                    return self._result_of(current, code)
            if policy.temp_fail_ttl_seconds > 0 and self._enabled:
                until = now + policy.temp_fail_ttl_seconds
                self._put(domain, _pack_head(until, _NEVER, until, _TEMP, pin) + result.value.encode())
            return result
        if not self._enabled:
            return result
        ttl = float(answer.ttl_seconds) if answer is not None and answer.ttl_seconds is not None else 0.0
        ceiling = policy.max_ttl_seconds if result.outcome is Outcome.FOUND else policy.negative_max_ttl_seconds
        ttl = min(max(ttl, policy.min_ttl_seconds), ceiling)
        expires = now + ttl
        stale = expires + policy.serve_stale_seconds if policy.serve_stale_seconds else expires
        self._put(domain, self._pack(result, ttl, expires, stale, pin))
        return result

    def _pack(self, result: LookupResult, ttl: float, expires: float, stale: float, pin: int) -> bytes:
        prefetch_at = expires - ttl * PREFETCH_FRACTION if self._prefetch else _NEVER
        value = result.value
        if result.outcome is Outcome.FOUND and self._prefix and value.startswith(self._prefix):
            return _pack_head(expires, prefetch_at, stale, FOUND_SHORT, pin) + value[len(self._prefix):].encode()
        return _pack_head(expires, prefetch_at, stale, _CODE_OF[result.outcome], pin) + value.encode()

    def _result_of(self, raw: bytes, code: int) -> LookupResult:
        if code == FOUND_SHORT:
            return LookupResult(Outcome.FOUND, self._prefix + raw[_HEAD_SIZE:].decode())
        if code:
            return self._negative_result(raw, code)
        return LookupResult(Outcome.FOUND, raw[_HEAD_SIZE:].decode())

    def _negative_result(self, raw: bytes, code: int) -> LookupResult:
        key = bytes((code,)) + raw[_HEAD_SIZE:]
        result = self._negative.get(key)
        if result is None:
            if len(self._negative) > 1000:      # reasons are few; never let odd ones pile up
                self._negative.clear()
            result = self._negative[key] = LookupResult(_CODES[code], raw[_HEAD_SIZE:].decode())
        return result

    def _replace(self, domain: str, entry: bytes) -> None:
        self._map.replace(domain, entry)

    def _put(self, domain: str, entry: bytes, changed: bool = True) -> None:
        self._map.put(domain, entry)
        if changed:
            self.changed = True

    def _evicted(self, dropped: dict[str, bytes]) -> None:
        self.stats.cache_evictions += len(dropped)
        if self.on_evict is not None:
            self.on_evict(dropped)

    # -- inspection and persistence --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._map)

    @staticmethod
    def pin_in(entry: bytes) -> int:
        """The pin digest inside a raw *entry* (as passed to :attr:`on_evict`)."""
        return _HEAD.unpack_from(entry)[4]

    def remaining_seconds(self, domain: str) -> float | None:
        """Seconds until *domain*'s entry expires (negative once expired), or ``None`` if absent."""
        raw = self._entry(domain)
        if raw is None:
            return None
        expires, _p, _s, code, _pin = _unpack(raw)
        return None if code == PIN_ONLY else expires - self._clock()

    def export(self) -> list[tuple[str, str, str, float, float]]:
        """The entries worth keeping across a restart, least recently used first.

        :returns: ``[(domain, outcome value, result value, expires_wall, stale_until_wall)]`` with
            wall-clock (``time.time()``) epoch seconds; temporary failures, pin-only and dead entries
            are left out (pins are kept by the pins file).
        """
        now = self._clock()
        offset = time.time() - now
        rows = []
        for domain, raw in self._map.items():
            expires, _p, stale, code, _pin = _unpack(raw)
            if code in (0, 1, FOUND_SHORT) and stale > now:
                result = self._result_of(raw, code)
                rows.append((domain, result.outcome.value, result.value, expires + offset, stale + offset))
        return rows

    def restore(self, rows: Iterable[tuple[str, str, str, float, float]]) -> int:
        """Load rows made by :meth:`export` (oldest first); expired ones and domains already cached
        (answered by DNS meanwhile, so fresher) are skipped.

        :returns: how many entries were loaded.
        :raises ValueError: if a row has an unknown outcome or malformed fields.
        """
        now = self._clock()
        offset = time.time() - now
        policy = self.policy
        loaded = 0
        for domain, outcome, value, expires_wall, stale_wall in rows:
            result = LookupResult(Outcome(outcome), str(value))
            if result.outcome not in (Outcome.FOUND, Outcome.NOT_FOUND):
                raise ValueError(f"unexpected outcome {outcome!r} for {domain!r}")
            expires, stale = float(expires_wall) - offset, float(stale_wall) - offset
            pin = 0
            current = self._entry(domain)
            if current is not None:
                _e, _p, _s, code, pin = _unpack(current)
                if code != PIN_ONLY:
                    continue
            if stale <= now:
                continue
            # never trust a file for longer than the policy allows now
            expires = min(expires, now + policy.max_ttl_seconds)
            stale = min(stale, expires + policy.serve_stale_seconds) if policy.serve_stale_seconds else expires
            self._put(str(domain), self._pack(result, max(0.0, expires - now), expires, max(stale, expires), pin))
            loaded += 1
        return loaded
