"""Is a domain's mail onion mail? The gateway's own routing answers, read-only.

:class:`RouterRoutes` is the production ``is_onion_route`` predicate of
:func:`onion_gateway.health.queue.read_queue`: it asks the same
:class:`~onion_gateway.lookup.routing.Router` the daemon uses (exclusions, static map, own domains,
SRV ``_onion-mx._tcp.<domain>``) and says "onion" when the answer starts with the onion transport
(``smtptor:``). Built by :meth:`RouterRoutes.from_settings` with pinning off, so it never writes the
pins file; it reads the static map and exclusion files and asks DNS, nothing else. (A domain whose
changed onion set the daemon holds under strict pinning is still onion mail here: it is deferred
onion mail waiting for ``pins accept``.)

Routing outcome -> predicate::

    FOUND "smtptor:[x.onion]:25"          True
    FOUND "smtp:[relay]" / "error:..."    False   (a static route elsewhere, a bounced bad onion)
    NOT_FOUND                             False
    TEMP_FAIL (DNS failed)                None    (undecided now)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Iterable

from onion_gateway.config import ServeSettings
from onion_gateway.lookup.result import Outcome
from onion_gateway.lookup.routing import Router, onions_in_route

log = logging.getLogger(__name__)

CONCURRENT_LOOKUPS = 32
_NEXTHOP = re.compile(r"\[([^\]\s]+\.onion)\]:(\d+)", re.IGNORECASE)


class RouterRoutes:
    """``domain -> True | False | None`` from a :class:`Router`, with one answer per domain per instance.

    Runs the router's coroutines on a private event loop, so call it from a thread that runs no
    event loop (the daemon: ``await asyncio.to_thread(read_queue, ..., routes)``). :meth:`close` the
    loop when done (or use it as a context manager).

    :param router: the router (its resolver, routing table and transport).
    """

    def __init__(self, router: Router) -> None:
        self.router = router
        # asyncio.Runner: at close it cancels and finishes what is left (a DNS retry cancelled when the
        # first answer won) before the loop closes, as asyncio.run does
        self._runner = asyncio.Runner()
        self._answers: dict[str, bool | None] = {}
        self._onions: dict[str, tuple[str, ...]] = {}
        self._ports: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> "RouterRoutes":
        """The daemon's router for *settings*, with pinning off (read-only).

        :raises ConfigError: if the routing files are bad or no resolver can be configured.
        """
        from onion_gateway.lookup.daemon import build_router

        return cls(build_router(dataclasses.replace(settings, pinning="off")))

    def __call__(self, domain: str) -> bool | None:
        """Does routing send *domain*'s mail to the onion transport?

        :param domain: a recipient domain (any case).
        :returns: ``True`` / ``False``, or ``None`` when routing answered a temporary failure.
        """
        key = domain.lower()
        if key not in self._answers:
            self.prime([key])
        return self._answers[key]

    def prime(self, domains: Iterable[str]) -> None:
        """Route every domain not yet asked, at most :data:`CONCURRENT_LOOKUPS` at a time.

        :func:`~onion_gateway.health.queue.summarize` calls this with all deferred domains first, so
        that a DNS outage costs one DNS timeout per batch, not one per domain.

        :param domains: recipient domains (any case).
        """
        todo = sorted({d.lower() for d in domains} - set(self._answers))
        if todo:
            self._runner.run(self._route_all(todo))

    async def _route_all(self, domains: list[str]) -> None:
        gate = asyncio.Semaphore(CONCURRENT_LOOKUPS)

        async def one(domain: str) -> None:
            async with gate:
                result = await self.router.lookup(domain)
            if result.outcome is Outcome.TEMP_FAIL:
                answer: bool | None = None
            else:
                answer = result.outcome is Outcome.FOUND and result.value.startswith(self.router.transport + ":")
            log.debug("health: %s routes %s (%s)", domain, answer, result.value)
            self._answers[domain] = answer
            self._onions[domain] = tuple(o.lower() for o in onions_in_route(result.value)) if answer else ()
            for onion, port in _NEXTHOP.findall(result.value) if answer else ():
                self._ports.setdefault(onion.lower(), int(port))

        await asyncio.gather(*(one(d) for d in domains))

    def onions(self, domain: str) -> tuple[str, ...]:
        """The onions the route of *domain* named when it was asked (empty if not asked or not onion mail).

        :returns: ``("<56 chars>.onion", ...)`` in the route's order -- the ones to HSFETCH for a partner.
        """
        return self._onions.get(domain.lower(), ())

    def port(self, onion: str) -> int:
        """The port the routes asked so far name for *onion* (``smtptor:[x.onion]:2525``); 25 if none."""
        return self._ports.get(onion.lower(), 25)

    def close(self) -> None:
        """Finish what is left on the private event loop and close it."""
        self._runner.close()

    def __enter__(self) -> "RouterRoutes":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
