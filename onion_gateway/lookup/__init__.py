"""The Postfix lookup-table daemon behind ``onion-gateway serve`` and ``onion-gateway lookup``.

- :mod:`.result`  -- :class:`LookupResult` and :class:`Outcome`, the value every layer passes on.
- :mod:`.codec`   -- sans-IO wire codecs for tcp_table(5) and socketmap_table(5).
- :mod:`.dns`     -- the SRV query (dnspython) with DNS outcomes as values, not exceptions.
- :mod:`.udpdns`  -- the same contract on persistent UDP sockets and a small wire codec (the daemon's).
- :mod:`.routing` -- recipient key -> transport-map answer (exclusions, static map, onion names, SRV).
- :mod:`.cache`   -- the route cache: TTL/negative TTL, LRU bound, single-flight, prefetch, serve-stale.
- :mod:`.persist` -- the cache saved to and loaded from sqlite across restarts.
- :mod:`.metrics` -- plain counters on the request path; Prometheus ``/metrics`` and ``/healthz``.
- :mod:`.server`  -- asyncio listeners (TCP and unix sockets) that own the connections.
"""
