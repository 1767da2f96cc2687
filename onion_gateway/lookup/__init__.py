"""The Postfix lookup-table daemon behind ``onion-gateway serve`` and ``onion-gateway lookup``.

- :mod:`.result`  -- :class:`LookupResult` and :class:`Outcome`, the value every layer passes on.
- :mod:`.codec`   -- sans-IO wire codecs for tcp_table(5) and socketmap_table(5).
- :mod:`.dns`     -- the SRV query (dnspython) with DNS outcomes as values, not exceptions.
- :mod:`.routing` -- recipient key -> transport-map answer (exclusions, static map, onion names, SRV).
- :mod:`.cache`   -- the route cache: TTL/negative TTL, bounded dense entries, single-flight, prefetch,
  serve-stale; also the memory of the onion pins.
- :mod:`.bounded` -- the bounded map behind the cache and the pins (approximate LRU in generations).
- :mod:`.pins`    -- onion pinning: digests in memory, full sets in an sqlite file written in batches.
- :mod:`.answer`  -- the one object the request path talks to (answer now, or a lookup to await).
- :mod:`.persist` -- the cache saved to and loaded from sqlite across restarts.
- :mod:`.metrics` -- plain counters on the request path; Prometheus ``/metrics`` and ``/healthz``.
- :mod:`.server`  -- asyncio listeners (TCP and unix sockets) that own the connections; flow control.
- :mod:`.systemd` -- socket activation (sd_listen_fds) and readiness (sd_notify), without libsystemd.
- :mod:`.daemon`  -- the :class:`~onion_gateway.lookup.daemon.Daemon`: start / wait for a signal / stop.

See docs/daemon.md for limits, pins, the cache bound and restarts.
"""
