"""What the daemon counts, and the HTTP endpoint that shows it (Prometheus text format and ``/healthz``).

The per-request path only increments plain integers in :class:`Stats`; nothing of prometheus_client
runs there. :class:`MetricsServer` imports prometheus_client only when a metrics address is
configured, turns the counters into metric families at scrape time (a custom collector), and serves
them with prometheus_client's own WSGI app and threading server (no HTTP parsing of our own).

Exposed metrics (all prefixed ``onion_gateway_``)::

    lookups_total{protocol,outcome}   replies sent; outcome = found | not_found | temp | error
    cache_hits_total                  answered from the cache (fresh entries)
    cache_misses_total                had to wait for DNS
    cache_coalesced_total             misses that joined a query already in flight (single-flight)
    cache_prefetches_total            background refreshes started shortly before expiry
    cache_stale_answers_total         stale entries answered because DNS failed (RFC 8767)
    cache_evictions_total             entries dropped by the size bound (LRU)
    cache_entries                     entries held now
    dns_queries_total{status}         SRV queries sent; status = answer | nxdomain | nodata | failure | timeout
    dns_query_seconds                 histogram of SRV query latency
    connections_open                  client connections open now
    refusals_total{reason}            onion targets refused; reason = v2_onion | clearnet | bad_checksum | ...
    pin_changes_total                 domains whose SRV onion set changed from the pinned one
    process_*                         prometheus_client's process collector (CPU seconds, RSS, fds)

``GET /healthz`` answers ``200 ok`` while the listeners accept, ``503`` once shutdown began.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from onion_gateway.lookup.result import Outcome

log = logging.getLogger(__name__)

OUTCOMES = tuple(Outcome)
DNS_LATENCY_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ReplyCounts:
    """Replies sent on one protocol, one named counter per :class:`Outcome` (attribute = outcome value)."""

    __slots__ = ("found", "not_found", "temp", "error")

    def __init__(self) -> None:
        self.found = self.not_found = self.temp = self.error = 0

    def count(self, outcome: Outcome) -> None:
        """Count one reply with *outcome*."""
        if outcome is Outcome.FOUND:
            self.found += 1
        elif outcome is Outcome.NOT_FOUND:
            self.not_found += 1
        elif outcome is Outcome.TEMP_FAIL:
            self.temp += 1
        else:
            self.error += 1

    def of(self, outcome: Outcome) -> int:
        """Replies counted with *outcome*."""
        return getattr(self, outcome.value)


@dataclass(slots=True)
class Stats:
    """Plain counters shared by the server, the cache and the metrics endpoint.

    :param lookups: ``{protocol: ReplyCounts}`` replies sent per protocol (``tcp_table``, ``socketmap``).
    """

    lookups: dict[str, ReplyCounts] = field(
        default_factory=lambda: {"tcp_table": ReplyCounts(), "socketmap": ReplyCounts()})
    cache_hits: int = 0
    cache_misses: int = 0
    cache_coalesced: int = 0
    prefetches: int = 0
    stale_answers: int = 0
    cache_evictions: int = 0
    dns_queries: collections.Counter = field(default_factory=collections.Counter)
    dns_latency_counts: list[int] = field(default_factory=lambda: [0] * (len(DNS_LATENCY_BUCKETS_SECONDS) + 1))
    dns_latency_sum_seconds: float = 0.0

    def note_dns(self, status, elapsed_seconds: float) -> None:
        """Count one SRV query with its :class:`~onion_gateway.lookup.dns.DnsStatus` and duration (seconds)."""
        self.dns_queries[status.value] += 1
        self.dns_latency_counts[bisect.bisect_left(DNS_LATENCY_BUCKETS_SECONDS, elapsed_seconds)] += 1
        self.dns_latency_sum_seconds += elapsed_seconds

    def lookup_count(self, protocol: str, outcome: Outcome) -> int:
        """Replies sent on *protocol* (``tcp_table``/``socketmap``) with *outcome*."""
        return self.lookups[protocol].of(outcome)


@dataclass
class Sources:
    """Where the collector reads gauges that live elsewhere (callables, read at scrape time).

    :param connections_open: returns the number of open client connections.
    :param cache_entries: returns the number of cache entries.
    :param refusals: returns ``{reason: count}`` of refused onion targets.
    :param pin_changes: returns how many onion-set changes the pin store has seen.
    :param healthy: returns True while the listeners accept.
    """

    connections_open: Callable[[], int] = lambda: 0
    cache_entries: Callable[[], int] = lambda: 0
    refusals: Callable[[], dict[str, int]] = dict
    pin_changes: Callable[[], int] = lambda: 0
    healthy: Callable[[], bool] = lambda: True


class _Collector:
    """A prometheus_client collector reading :class:`Stats` and :class:`Sources` at scrape time."""

    def __init__(self, stats: Stats, sources: Sources) -> None:
        self._stats = stats
        self._sources = sources

    def collect(self):
        """Yield the metric families (prometheus_client collector protocol), read at scrape time."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        s = self._stats
        lookups = CounterMetricFamily("onion_gateway_lookups", "Lookup replies sent, by protocol and outcome",
                                      labels=["protocol", "outcome"])
        for protocol, counts in s.lookups.items():
            for outcome in OUTCOMES:
                lookups.add_metric([protocol, outcome.value], counts.of(outcome))
        yield lookups
        for name, value, text in (
                ("cache_hits", s.cache_hits, "Lookups answered from a fresh cache entry"),
                ("cache_misses", s.cache_misses, "Lookups that had to wait for DNS"),
                ("cache_coalesced", s.cache_coalesced, "Misses that joined a DNS query already in flight"),
                ("cache_prefetches", s.prefetches, "Background refreshes started shortly before expiry"),
                ("cache_stale_answers", s.stale_answers, "Expired entries answered because DNS failed"),
                ("cache_evictions", s.cache_evictions, "Entries dropped by the cache size bound")):
            yield CounterMetricFamily(f"onion_gateway_{name}", text, value=value)
        yield GaugeMetricFamily("onion_gateway_cache_entries", "Cache entries held",
                                value=self._sources.cache_entries())
        queries = CounterMetricFamily("onion_gateway_dns_queries", "SRV queries sent, by result",
                                      labels=["status"])
        for status, count in sorted(s.dns_queries.items()):
            queries.add_metric([status], count)
        yield queries
        cumulative, buckets = 0, []
        for bound, count in zip((*DNS_LATENCY_BUCKETS_SECONDS, float("inf")), s.dns_latency_counts):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily("onion_gateway_dns_query_seconds", "SRV query latency (seconds)",
                                    buckets=buckets, sum_value=s.dns_latency_sum_seconds)
        yield GaugeMetricFamily("onion_gateway_connections_open", "Client connections open",
                                value=self._sources.connections_open())
        refusals = CounterMetricFamily("onion_gateway_refusals", "Onion targets refused, by reason",
                                       labels=["reason"])
        for reason, count in sorted(self._sources.refusals().items()):
            refusals.add_metric([reason], count)
        yield refusals
        yield CounterMetricFamily("onion_gateway_pin_changes", "SRV onion sets that differed from the pinned one",
                                  value=self._sources.pin_changes())


class MetricsServer:
    """``GET /metrics`` (prometheus_client's own WSGI app) and ``GET /healthz``, served by
    prometheus_client's threading WSGI server in a thread of its own (scrapes never run on the event loop).

    Extend the exposed metrics by registering more collectors on :attr:`registry` after
    :meth:`start` (or pass them in *collectors*).

    :param host: IP address to bind.
    :param port: TCP port (0 = any free port).
    :param stats: the daemon's :class:`Stats`.
    :param sources: gauges and health read at scrape time.
    :param collectors: more prometheus_client collectors to register.
    :raises ConfigError: (from :meth:`start`) if prometheus_client is not installed.
    """

    def __init__(self, host: str, port: int, stats: Stats, sources: Sources, collectors=()) -> None:
        self.host, self.port = host, port
        self._stats, self._sources = stats, sources
        self._collectors = tuple(collectors)
        self._server = None
        self._thread: threading.Thread | None = None
        self.registry = None
        self.bound = ""

    async def start(self) -> str:
        """Bind the listener and start serving in a thread.

        :returns: the bound ``host:port`` (port 0 resolved).
        :raises ConfigError: if prometheus_client cannot be imported.
        :raises OSError: if the address cannot be bound.
        """
        try:
            from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
            from prometheus_client.exposition import ThreadingWSGIServer
        except ImportError as exc:
            from onion_gateway.errors import ConfigError
            raise ConfigError(f"serve.metrics_address: prometheus_client is not installed ({exc})") from exc
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        class QuietHandler(WSGIRequestHandler):
            def log_message(self, format, *args):   # noqa: A002 (the stdlib's name)
                """Scrapes are not logged."""

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self._stats, self._sources))
        ProcessCollector(registry=registry)
        for collector in self._collectors:
            registry.register(collector)
        self.registry = registry
        metrics_app = make_wsgi_app(registry)
        healthy = self._sources.healthy

        def app(environ, start_response):
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                ok = healthy()
                start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"ok\n" if ok else b"stopping\n"]
            if path == "/metrics":
                return metrics_app(environ, start_response)
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"try /metrics or /healthz\n"]

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            daemon_threads = True

        self._server = make_server(self.host, self.port, app, Server, handler_class=QuietHandler)
        host, port = self._server.server_address[:2]
        self.bound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        return self.bound

    async def stop(self) -> None:
        """Stop serving and close the listener."""
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.shutdown)
            server.server_close()
