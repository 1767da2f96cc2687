"""The daemon's UDP resolver gives the same SrvAnswer as the dnspython resolver, against real dnsmasq."""

from __future__ import annotations

import asyncio
import socket

import dns.name
import pytest

from onion_gateway.lookup.dns import DnsStatus, SrvResolver
from onion_gateway.lookup.udpdns import UdpSrvResolver
from tests.support.procs import free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("domain", ["single.example.test", "multi.example.test", "clearnet.example.test",
                                    "nosuch.example.test", "example.test", "x.servfail.test"])
def test_same_answer_as_dnspython(dns_server, domain):
    servers = [("127.0.0.1", dns_server.port)]
    qname = dns.name.from_text(f"_onion-mx._tcp.{domain}.")

    async def both():
        return await SrvResolver(servers, 2).query(qname), await UdpSrvResolver(servers, 2).query(qname)

    reference, fast = asyncio.run(both())
    assert (fast.status, sorted(fast.records, key=repr), fast.ttl_seconds, fast.authenticated) == \
           (reference.status, sorted(reference.records, key=repr), reference.ttl_seconds, reference.authenticated)
    if reference.status is DnsStatus.FAILURE:
        assert fast.detail == "DNS server answered SERVFAIL"


def test_silent_server_is_a_timeout_within_the_budget():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:    # bound, never answers
        silent.bind(("127.0.0.1", free_port(socket.SOCK_DGRAM)))
        port = silent.getsockname()[1]
        answer = asyncio.run(UdpSrvResolver([("127.0.0.1", port)], 0.3).query(
            dns.name.from_text("_onion-mx._tcp.example.test.")))
    assert answer.status is DnsStatus.TIMEOUT
    assert 0.3 <= answer.elapsed_seconds < 2


def test_closed_port_is_a_failure_not_a_miss():
    port = free_port(socket.SOCK_DGRAM)                                 # nothing listens there
    answer = asyncio.run(UdpSrvResolver([("127.0.0.1", port)], 2).query(
        dns.name.from_text("_onion-mx._tcp.example.test.")))
    assert answer.status.is_temporary


def test_many_concurrent_queries_on_the_socket_pool(dns_server):
    resolver = UdpSrvResolver([("127.0.0.1", dns_server.port)], 5)

    async def many():
        names = ["single", "multi", "nosuch", "mixed"] * 50
        return await asyncio.gather(*(resolver.query(dns.name.from_text(f"_onion-mx._tcp.{n}.example.test."))
                                      for n in names))

    answers = asyncio.run(many())
    assert {a.status for a in answers[0::4]} == {DnsStatus.ANSWER}
    assert {a.status for a in answers[2::4]} == {DnsStatus.NXDOMAIN}
    assert all(len(a.records) == 2 for a in answers[1::4])
