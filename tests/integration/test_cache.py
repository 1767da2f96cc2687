"""The route cache against a real authoritative dnsmasq whose answers change (TTLs, SOA minimum).

Each test runs the cache in-process (asyncio.run) and counts the SRV queries dnsmasq logged: the
DNS server is the witness of "asked once per TTL" and "N concurrent misses -> 1 query".
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
import time

import pytest

from onion_gateway.lookup.cache import CachePolicy, RouteCache
from onion_gateway.lookup.dns import SrvResolver
from onion_gateway.lookup.persist import load_cache, save_cache
from onion_gateway.lookup.result import LookupResult, Outcome
from onion_gateway.lookup.routing import Router, RoutingTable
from tests.conftest import require
from tests.support.cachedns import auth_dnsmasq, srv_queries
from tests.support.dnsserver import SrvEntry
from tests.support.onions import ONION_A, ONION_B, V2_ONION
from tests.support.procs import public_tempdir

pytestmark = pytest.mark.integration

TTL = 2      # seconds: the auth-ttl, i.e. SRV TTL and SOA MINIMUM of every answer


@pytest.fixture
def dns():
    """A fresh authoritative dnsmasq per test (tests restart it with other records or stop it)."""
    require("dnsmasq")
    workdir = public_tempdir("og-cache-dns-")
    server = auth_dnsmasq(workdir, [SrvEntry("a.example.test", ONION_A),
                                    SrvEntry("b.example.test", ONION_B),
                                    SrvEntry("c.example.test", ONION_A),
                                    SrvEntry("v2.example.test", V2_ONION)], TTL).start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def make_cache(dns, timeout_seconds: float = 2.0, **policy) -> RouteCache:
    policy.setdefault("min_ttl_seconds", 0.0)
    policy.setdefault("prefetch", False)
    resolver = SrvResolver([("127.0.0.1", dns.port)], timeout_seconds)
    return RouteCache(Router(resolver, RoutingTable()), CachePolicy(**policy))


def found(onion: str) -> LookupResult:
    return LookupResult.found(f"smtptor:[{onion}]:25")


async def wait_expired(cache: RouteCache, domain: str) -> None:
    remaining = cache.remaining_seconds(domain)
    assert remaining is not None
    await asyncio.sleep(max(0.0, remaining) + 0.05)


def test_found_answer_is_kept_for_the_srv_ttl_then_asked_again(dns):
    async def scenario():
        cache = make_cache(dns)
        assert await cache.lookup("a.example.test") == found(ONION_A)
        assert 0 < cache.remaining_seconds("a.example.test") <= TTL
        dns.restart([SrvEntry("a.example.test", ONION_B)])        # the zone changes
        assert await cache.lookup("a.example.test") == found(ONION_A)   # still within the TTL
        assert srv_queries(dns, "a.example.test") == 1
        await wait_expired(cache, "a.example.test")
        assert await cache.lookup("a.example.test") == found(ONION_B)
        assert srv_queries(dns, "a.example.test") == 2

    asyncio.run(scenario())


def test_nxdomain_is_kept_for_the_soa_minimum_then_asked_again(dns):
    async def scenario():
        cache = make_cache(dns)
        first = await cache.lookup("new.example.test")
        assert first.outcome is Outcome.NOT_FOUND
        assert 0 < cache.remaining_seconds("new.example.test") <= TTL
        dns.restart([SrvEntry("new.example.test", ONION_A)])      # the domain publishes a record
        assert (await cache.lookup("new.example.test")).outcome is Outcome.NOT_FOUND
        assert srv_queries(dns, "new.example.test") == 1
        await wait_expired(cache, "new.example.test")
        assert await cache.lookup("new.example.test") == found(ONION_A)
        assert srv_queries(dns, "new.example.test") == 2

    asyncio.run(scenario())


def test_ttls_are_clamped_by_the_configured_bounds(dns):
    async def scenario():
        raised = make_cache(dns, min_ttl_seconds=100.0, max_ttl_seconds=1000.0, negative_max_ttl_seconds=1000.0)
        await raised.lookup("a.example.test")
        assert raised.remaining_seconds("a.example.test") > TTL         # TTL 2 raised to 100
        capped = make_cache(dns, max_ttl_seconds=0.5, negative_max_ttl_seconds=0.25)
        await capped.lookup("a.example.test")
        await capped.lookup("nosuch.example.test")
        assert capped.remaining_seconds("a.example.test") <= 0.5         # TTL 2 capped
        assert capped.remaining_seconds("nosuch.example.test") <= 0.25   # SOA minimum 2 capped

    asyncio.run(scenario())


def test_concurrent_misses_send_one_query(dns):
    async def scenario():
        cache = make_cache(dns)
        results = await asyncio.gather(*(cache.lookup("b.example.test") for _ in range(25)))
        assert set(results) == {found(ONION_B)}
        assert srv_queries(dns, "b.example.test") == 1
        assert (cache.stats.cache_misses, cache.stats.cache_coalesced) == (25, 24)

    asyncio.run(scenario())


def test_a_cancelled_waiter_does_not_cancel_the_shared_query(dns):
    async def scenario():
        cache = make_cache(dns)
        first = asyncio.ensure_future(cache.lookup("c.example.test"))
        second = asyncio.ensure_future(cache.lookup("c.example.test"))
        await asyncio.sleep(0)
        first.cancel()                       # its client connection went away
        assert await second == found(ONION_A)
        assert srv_queries(dns, "c.example.test") == 1

    asyncio.run(scenario())


def test_temporary_failures_are_not_cached_by_default(dns):
    async def scenario():
        cache = make_cache(dns)
        for _ in range(2):
            assert (await cache.lookup("x.servfail.test")).outcome is Outcome.TEMP_FAIL
        assert srv_queries(dns, "x.servfail.test") == 2

    asyncio.run(scenario())


def test_temporary_failures_are_cached_briefly_when_configured(dns):
    async def scenario():
        cache = make_cache(dns, temp_fail_ttl_seconds=60.0)
        for _ in range(2):
            assert (await cache.lookup("x.servfail.test")).outcome is Outcome.TEMP_FAIL
        assert srv_queries(dns, "x.servfail.test") == 1

    asyncio.run(scenario())


def test_prefetch_refreshes_a_hot_entry_before_it_expires(dns):
    dns.restart([SrvEntry("hot.example.test", ONION_A)])
    dns.extra_lines = [line if not line.startswith("auth-ttl=") else "auth-ttl=4" for line in dns.extra_lines]
    dns.restart()

    async def scenario():
        cache = make_cache(dns, prefetch=True)
        await cache.lookup("hot.example.test")
        ttl = cache.remaining_seconds("hot.example.test")
        assert 3 < ttl <= 4
        # wait until the entry is in its last 10 %, then use it: a hit that starts a refresh
        while cache.remaining_seconds("hot.example.test") > 0.1 * 4 - 0.05:
            await asyncio.sleep(0.02)
        assert cache.get("hot.example.test") == found(ONION_A)
        deadline = time.monotonic() + 3
        while srv_queries(dns, "hot.example.test") < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        assert srv_queries(dns, "hot.example.test") == 2
        assert cache.remaining_seconds("hot.example.test") > 1       # refreshed, not about to expire
        assert (cache.stats.cache_misses, cache.stats.prefetches) == (1, 1)

    asyncio.run(scenario())


def test_serve_stale_answers_an_expired_entry_while_dns_is_down(dns):
    async def scenario():
        stale = make_cache(dns, timeout_seconds=0.5, serve_stale_seconds=3600.0)
        strict = make_cache(dns, timeout_seconds=0.5)
        for cache in (stale, strict):
            assert await cache.lookup("a.example.test") == found(ONION_A)
        dns.stop_server()                                      # every query now times out
        await wait_expired(stale, "a.example.test")
        assert await stale.lookup("a.example.test") == found(ONION_A)
        assert stale.stats.stale_answers == 1
        assert stale.remaining_seconds("a.example.test") > 1    # re-armed: DNS is not asked per request
        assert (await strict.lookup("a.example.test")).outcome is Outcome.TEMP_FAIL

    asyncio.run(scenario())


def test_size_bound_keeps_max_entries_and_evicts_one_not_used_recently(dns):
    # max_entries 4: four generations of one domain each; a used entry moves to the newest
    async def scenario():
        cache = make_cache(dns, max_entries=4, min_ttl_seconds=600.0)
        for name in ("a", "b", "c", "d"):
            await cache.lookup(f"{name}.example.test")
        assert len(cache) == 4
        assert cache.get("a.example.test") is not None         # a is used: now the newest
        await cache.lookup("e.example.test")                   # 5 > 4: b, the oldest unused, goes
        assert len(cache) == 4
        assert cache.remaining_seconds("b.example.test") is None
        assert cache.get("a.example.test") == found(ONION_A)
        assert cache.stats.cache_evictions == 1

    asyncio.run(scenario())


def test_refused_targets_are_counted_by_reason(dns):
    async def scenario():
        cache = make_cache(dns)
        assert (await cache.lookup("v2.example.test")).outcome is Outcome.NOT_FOUND
        assert cache.router.refusals == {"v2_onion": 1}

    asyncio.run(scenario())


def test_saved_cache_answers_after_a_restart_without_dns(dns, tmp_path):
    path = tmp_path / "cache.sqlite"

    async def fill():
        cache = make_cache(dns, min_ttl_seconds=600.0)
        await cache.lookup("a.example.test")
        await cache.lookup("nosuch.example.test")
        assert save_cache(cache, path, "fp") == 2

    async def reload():
        cache = make_cache(dns)
        assert load_cache(cache, path, "fp") == 2
        assert await cache.lookup("a.example.test") == found(ONION_A)
        assert (await cache.lookup("nosuch.example.test")).outcome is Outcome.NOT_FOUND

    asyncio.run(fill())
    asyncio.run(reload())
    assert srv_queries(dns, "a.example.test") == 1
    assert srv_queries(dns, "nosuch.example.test") == 1


@pytest.mark.parametrize("content", [None, b"this is not an sqlite database" * 100, b""])
def test_missing_or_corrupt_cache_file_starts_empty_with_a_warning(dns, tmp_path, caplog, content):
    path = tmp_path / "cache.sqlite"
    if content is not None:
        path.write_bytes(content)
    cache = make_cache(dns)
    with caplog.at_level(logging.WARNING, logger="onion_gateway.lookup.persist"):
        assert load_cache(cache, path, "fp") == 0
    assert len(cache) == 0
    assert "starting with an empty cache" in caplog.text


def test_cache_saved_under_other_settings_is_not_loaded(dns, tmp_path, caplog):
    path = tmp_path / "cache.sqlite"

    async def fill():
        cache = make_cache(dns, min_ttl_seconds=600.0)
        await cache.lookup("a.example.test")
        save_cache(cache, path, "transport=smtptor")

    asyncio.run(fill())
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM entry").fetchone() == (1,)
    cache = make_cache(dns)
    with caplog.at_level(logging.WARNING):
        assert load_cache(cache, path, "transport=other") == 0
    assert "other settings" in caplog.text


def test_cache_hits_are_answered_without_creating_a_task(dns):
    """A hit is answered inside data_received: no task, no DNS; a miss goes through one task."""
    from onion_gateway.address import parse_listen_address
    from onion_gateway.lookup.server import Limits, MapServer

    async def scenario():
        cache = make_cache(dns, min_ttl_seconds=600.0)
        server = MapServer(cache.router, [parse_listen_address("127.0.0.1:0")], [], Limits(), cache=cache)
        bound = await server.start()
        port = int(bound[0][1].rsplit(":", 1)[1])
        loop = asyncio.get_running_loop()
        created = []
        default_factory = loop.get_task_factory()

        def counting_factory(loop, coro, **kwargs):
            created.append(getattr(coro, "__qualname__", repr(coro)))
            return default_factory(loop, coro, **kwargs) if default_factory else asyncio.Task(coro, loop=loop, **kwargs)

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"get x@a.example.test\n")                         # miss: DNS, tasks
        assert await reader.readline() == f"200 smtptor:[{ONION_A}]:25\n".encode()
        loop.set_task_factory(counting_factory)
        try:
            for _ in range(50):
                writer.write(b"get y@a.example.test\n")
                assert await reader.readline() == f"200 smtptor:[{ONION_A}]:25\n".encode()
        finally:
            loop.set_task_factory(default_factory)
        writer.close()
        await server.stop(1.0)
        assert created == []
        assert cache.stats.cache_hits == 50 and srv_queries(dns, "a.example.test") == 1

    asyncio.run(scenario())
