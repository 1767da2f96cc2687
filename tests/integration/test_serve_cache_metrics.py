"""``onion-gateway serve`` as a process: /metrics after real lookups, /healthz, the cache across restarts."""

from __future__ import annotations

import shutil
import signal
import urllib.error
import urllib.request

import pytest

from tests.conftest import require
from tests.support.cachedns import auth_dnsmasq, srv_queries
from tests.support.daemon import ServeProcess
from tests.support.dnsserver import SrvEntry
from tests.support.mapclient import SocketmapClient, TcpTableClient
from tests.support.onions import ONION_A, V2_ONION
from tests.support.procs import free_port, public_tempdir, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def workdir():
    path = public_tempdir("og-serve-cache-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def dns(workdir):
    require("dnsmasq")
    server = auth_dnsmasq(workdir / "dns", [SrvEntry("a.example.test", ONION_A),
                                            SrvEntry("persist.example.test", ONION_A),
                                            SrvEntry("v2.example.test", V2_ONION)], ttl_seconds=300).start()
    yield server
    server.stop()


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample(metrics_text: str, line_start: str) -> float:
    """The value of the first sample line starting with *line_start* (name plus labels)."""
    for line in metrics_text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start!r} in:\n{metrics_text}")


@pytest.fixture(scope="module")
def scraped(dns):
    """Run real lookups over both protocols against a serve with metrics, then scrape /metrics."""
    metrics_port = free_port()
    proc = ServeProcess(["--dns-server", dns.address, "--metrics-address", f"127.0.0.1:{metrics_port}",
                         "--exclude-domains", "own.example.test"]).start()
    try:
        tcp = TcpTableClient(proc.tcp_port)
        sm = SocketmapClient(proc.socketmap_port)
        assert tcp.get("x@a.example.test") == f"200 smtptor:[{ONION_A}]:25"      # miss
        assert tcp.get("y@a.example.test") == f"200 smtptor:[{ONION_A}]:25"      # hit
        assert sm.get("z@a.example.test") == f"OK smtptor:[{ONION_A}]:25"        # hit
        assert sm.get("x@v2.example.test") == "NOTFOUND "                        # miss, v2 refused
        assert tcp.get("x@own.example.test").startswith("500 ")                  # excluded: no DNS
        assert tcp.get("x@q.servfail.test").startswith("400 ")                   # SERVFAIL: temp
        status, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        health = http_get(f"http://127.0.0.1:{metrics_port}/healthz")
        tcp.close()
        sm.close()
    finally:
        proc.stop()
    assert status == 200, text
    return text, health


@pytest.mark.parametrize("sample_name, expected", [
    ('onion_gateway_lookups_total{outcome="found",protocol="tcp_table"}', 2),
    ('onion_gateway_lookups_total{outcome="not_found",protocol="tcp_table"}', 1),
    ('onion_gateway_lookups_total{outcome="temp",protocol="tcp_table"}', 1),
    ('onion_gateway_lookups_total{outcome="found",protocol="socketmap"}', 1),
    ('onion_gateway_lookups_total{outcome="not_found",protocol="socketmap"}', 1),
    ("onion_gateway_cache_hits_total", 2),
    ("onion_gateway_cache_misses_total", 3),
    ('onion_gateway_dns_queries_total{status="answer"}', 2),
    ('onion_gateway_dns_queries_total{status="failure"}', 1),
    ("onion_gateway_dns_query_seconds_count", 3),
    ('onion_gateway_refusals_total{reason="v2_onion"}', 1),
    ("onion_gateway_connections_open", 2),
    ("onion_gateway_cache_entries", 2),
])
def test_metrics_count_the_real_lookups(scraped, sample_name, expected):
    text, _ = scraped
    assert sample(text, sample_name) == expected


def test_metrics_include_process_memory(scraped):
    text, _ = scraped
    assert sample(text, "process_resident_memory_bytes") > 0


def test_healthz_answers_ok(scraped):
    _, health = scraped
    assert health == (200, "ok\n")


def test_cache_file_survives_a_restart(dns, workdir):
    cache_file = workdir / "cache.sqlite"
    args = ["--dns-server", dns.address, "--cache-file", str(cache_file)]
    first = ServeProcess(args).start()
    try:
        client = TcpTableClient(first.tcp_port)
        assert client.get("x@persist.example.test") == f"200 smtptor:[{ONION_A}]:25"
        client.close()
    finally:
        assert first.stop() == 0
    assert srv_queries(dns, "persist.example.test") == 1
    assert cache_file.exists()
    second = ServeProcess(args).start()
    try:
        # the file is loaded after the listeners are up; ask once it is in
        wait_for(lambda: "loaded 1 cache entries" in second.log(), 10, "the cache file to load", second.log)
        client = TcpTableClient(second.tcp_port)
        assert client.get("y@persist.example.test") == f"200 smtptor:[{ONION_A}]:25"
        client.close()
    finally:
        second.stop()
    assert srv_queries(dns, "persist.example.test") == 1, "the restarted daemon asked DNS again"


def test_corrupt_cache_file_starts_empty_and_serves(dns, workdir):
    cache_file = workdir / "corrupt.sqlite"
    cache_file.write_bytes(b"\x00garbage" * 512)
    proc = ServeProcess(["--dns-server", dns.address, "--cache-file", str(cache_file)]).start()
    try:
        client = TcpTableClient(proc.tcp_port)
        assert client.get("x@a.example.test") == f"200 smtptor:[{ONION_A}]:25"
        client.close()
        proc.signal(signal.SIGTERM)
    finally:
        assert proc.stop() == 0
    assert "is unusable" in proc.log() and "starting with an empty cache" in proc.log()
