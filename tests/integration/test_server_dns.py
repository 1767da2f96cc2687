"""The SRV resolver against real DNS servers on loopback: the deadline rule and truncated answers."""

from __future__ import annotations

import asyncio
import time

import dns.name
import pytest

from onion_gateway.config import parse_dns_server
from onion_gateway.lookup.dns import DnsStatus, SrvResolver
from tests.support.dnsserver import SlowDns
from tests.support.faultdns import TruncatingDns
from tests.support.onions import ONION_A

pytestmark = pytest.mark.integration

QNAME = dns.name.from_text("_onion-mx._tcp.slow.example.")


def query(address: str, timeout_seconds: float, qname: dns.name.Name = QNAME):
    resolver = SrvResolver([parse_dns_server(address)], timeout_seconds)
    return asyncio.run(resolver.query(qname))


def test_an_answer_slower_than_a_retry_interval_still_counts_within_the_deadline():
    # the resolver needs 3.2 s for every answer: re-sent queries must not throw the first answer away
    slow = SlowDns(delay_seconds=3.2, target=ONION_A).start()
    try:
        start = time.monotonic()
        answer = query(slow.address, 5.0)
        elapsed = time.monotonic() - start
    finally:
        slow.stop()
    assert answer.status is DnsStatus.ANSWER, answer.detail
    assert [r.target for r in answer.records] == [ONION_A]
    assert 3.1 < elapsed < 4.5


def test_no_answer_by_the_deadline_is_a_timeout_at_the_deadline():
    slow = SlowDns(delay_seconds=6, target=ONION_A).start()
    try:
        start = time.monotonic()
        answer = query(slow.address, 1.5)
        elapsed = time.monotonic() - start
    finally:
        slow.stop()
    assert answer.status is DnsStatus.TIMEOUT
    assert 1.4 < elapsed < 2.0


def test_truncated_answer_that_is_empty_over_tcp_too_is_a_temporary_failure():
    server = TruncatingDns().start()
    try:
        answer = query(server.address, 3.0)
    finally:
        server.stop()
    assert answer.status is DnsStatus.FAILURE
    assert answer.status.is_temporary
    assert "truncated" in answer.detail



def test_a_dead_resolver_is_a_failure_before_the_deadline():
    # nothing listens on the port: the kernel answers "port unreachable", the lookup fails at once
    import socket

    from tests.support.procs import free_port
    start = time.monotonic()
    answer = query(f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", 5.0)
    assert answer.status is DnsStatus.FAILURE, answer
    assert "network error" in answer.detail
    assert time.monotonic() - start < 1.0
