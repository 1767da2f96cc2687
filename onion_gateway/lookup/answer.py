"""The one object the request path talks to: a lookup key in, an answer now or a lookup to await.

:class:`Answerer` hides whether a domain is answered by the routing rules, the route cache or DNS::

    answerer.answer(key)  -> LookupResult          the rules or a fresh cache entry decided (no task)
                          -> NeedsDns(domain)      the connection awaits answerer.resolve(needs_dns)
"""

from __future__ import annotations

from dataclasses import dataclass

from onion_gateway.lookup.cache import RouteCache
from onion_gateway.lookup.result import LookupResult
from onion_gateway.lookup.routing import Router


@dataclass(frozen=True, slots=True)
class NeedsDns:
    """A lookup that only DNS can answer.

    :param domain: the normalized A-label domain whose SRV record decides.
    """

    domain: str


class Answerer:
    """Answer lookup keys through the router and, when there is one, the route cache.

    :param router: the :class:`Router` (rules without DNS, then SRV).
    :param cache: the :class:`RouteCache` in front of DNS, or ``None`` to ask DNS for every lookup.
    """

    __slots__ = ("router", "cache", "_route", "_get", "_resolve")

    def __init__(self, router: Router, cache: RouteCache | None = None) -> None:
        self.router = router
        self.cache = cache
        self._route = router.route_without_dns
        self._get = cache.get if cache is not None else None
        self._resolve = cache.lookup if cache is not None else router.lookup_domain

    def answer(self, key: str) -> LookupResult | NeedsDns:
        """Answer *key* at once if the rules or a fresh cache entry can.

        :param key: the decoded lookup key (address, domain or ``*``).
        :returns: a :class:`LookupResult`, or :class:`NeedsDns` to pass to :meth:`resolve`.
        """
        first = self._route(key)
        if first.__class__ is str:
            if self._get is not None:
                hit = self._get(first)
                if hit is not None:
                    return hit
            return NeedsDns(first)
        return first

    async def resolve(self, pending: NeedsDns) -> LookupResult:
        """Answer a lookup that needs DNS (cache single-flight when there is a cache).

        :param pending: what :meth:`answer` returned.
        :returns: ``FOUND``, ``NOT_FOUND`` or ``TEMP_FAIL`` (DNS trouble is never an exception).
        """
        return await self._resolve(pending.domain)
