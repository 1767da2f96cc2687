"""Routing rules (no DNS traffic: SRV answers are built as values, as the resolver returns them)."""

from __future__ import annotations

import collections
import logging

import pytest

from onion_gateway.lookup.dns import DnsStatus, SrvAnswer, SrvRecord, SrvResolver
from onion_gateway.lookup.result import LookupResult, Outcome
from onion_gateway.lookup.routing import (Router, RoutingTable, build_routing_table, domain_of_key,
                                          normalize_domain, order_targets)
from tests.support.onions import ONION_A, ONION_B, ONION_C, V2_ONION, bad_checksum


def make_router(table: RoutingTable | None = None, **kwargs) -> Router:
    # A resolver pointed at the discard port on loopback: these tests never reach DNS.
    resolver = SrvResolver([("127.0.0.1", 9)], timeout_seconds=0.5)
    return Router(resolver, table or RoutingTable(), **kwargs)


@pytest.mark.parametrize("key, domain", [
    ("alice@example.com", "example.com"),
    ("alice+ext@Example.COM", "Example.COM"),
    ('"odd@local"@example.com', "example.com"),
    ("example.com", "example.com"),
    ("*", None),
    ("", None),
    ("   ", None),
    ("user@[192.0.2.1]", None),
    ("user@[IPv6:2001:db8::1]", None),
    ("user@", None),
])
def test_domain_of_key(key, domain):
    assert domain_of_key(key) == domain


@pytest.mark.parametrize("raw, normal", [
    ("Example.COM", "example.com"),
    ("example.com.", "example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
    ("a..b", None),
    ("exa mple.com", None),
    ("-bad.example", None),
    ("a" * 64 + ".example", None),
    (".", None),
])
def test_normalize_domain(raw, normal):
    assert normalize_domain(raw) == normal


@pytest.mark.parametrize("key", ["*", "", "user@[192.0.2.1]", "x@not a domain", "x@a..b"])
def test_keys_without_a_routable_domain_are_not_found_without_dns(key):
    result = make_router().route_without_dns(key)
    assert result.outcome is Outcome.NOT_FOUND


def test_excluded_domain_is_not_found_without_dns():
    table = build_routing_table(frozenset({"Own.Example"}), frozenset(), False, {})
    router = make_router(table)
    assert router.route_without_dns("a@own.example").outcome is Outcome.NOT_FOUND
    assert router.route_without_dns("a@sub.own.example") == "sub.own.example"   # subdomains not excluded


def test_excluded_subdomains_when_configured():
    table = build_routing_table(frozenset(), frozenset({"own.example"}), True, {})
    router = make_router(table)
    assert router.route_without_dns("a@deep.sub.own.example").outcome is Outcome.NOT_FOUND
    assert router.route_without_dns("a@notown.example") == "notown.example"


def test_static_map_answers_before_dns_with_parent_entries():
    routes = {"static.example": f"smtptor:[{ONION_A}]:25", ".parent.example": f"smtptor:[{ONION_B}]:25"}
    router = make_router(build_routing_table(frozenset(), frozenset(), False, routes))
    assert router.route_without_dns("x@Static.Example").value == f"smtptor:[{ONION_A}]:25"
    assert router.route_without_dns("x@a.parent.example").value == f"smtptor:[{ONION_B}]:25"
    assert router.route_without_dns("x@parent.example") == "parent.example"      # ".parent" is subdomains only


@pytest.mark.parametrize("value", [f"smtptor:[{V2_ONION}]:25", f"smtptor:[{bad_checksum(ONION_A)}]:25", "no-colon"])
def test_static_map_rejects_bad_routes(value):
    with pytest.raises(ValueError):
        build_routing_table(frozenset(), frozenset(), False, {"x.example": value})


def test_onion_recipient_domain_is_routed_directly_never_to_dns():
    router = make_router(transport="smtptor")
    result = router.route_without_dns(f"bob@{ONION_A.upper()}")
    assert (result.outcome, result.value) == (Outcome.FOUND, f"smtptor:[{ONION_A}]:25")


@pytest.mark.parametrize("onion", [V2_ONION, bad_checksum(ONION_A), "short.onion"])
def test_invalid_onion_recipient_domain_bounces_instead_of_leaking_to_dns(onion, caplog):
    with caplog.at_level(logging.WARNING):
        result = make_router().route_without_dns(f"bob@{onion}")
    assert result.outcome is Outcome.FOUND and result.value.startswith("error:5.1.2 ")
    assert onion in caplog.text


@pytest.mark.parametrize("key", ["u@onion", "u@ONION.", "onion"])
def test_the_bare_onion_tld_is_never_sent_to_dns(key):
    # RFC 7686 §2: names in .onion -- the TLD itself included -- must not reach DNS
    result = make_router().route_without_dns(key)
    assert isinstance(result, LookupResult)
    assert result.outcome is Outcome.FOUND and result.value.startswith("error:5.1.2 ")


def test_srv_port_zero_is_refused_and_logged_with_the_domain(caplog):
    router = make_router()
    with caplog.at_level(logging.WARNING):
        result = router.route_from_answer("d.example", answer(SrvRecord(10, 5, 0, ONION_A)))
    assert result.outcome is Outcome.NOT_FOUND
    assert f"refusing SRV target {ONION_A}:0 for d.example: port 0" in caplog.text
    assert router.refusals["port_zero"] == 1


def test_srv_port_zero_next_to_a_usable_record_leaves_the_usable_one():
    result = make_router().route_from_answer("d.example", answer(
        SrvRecord(10, 5, 0, ONION_A), SrvRecord(20, 5, 25, ONION_B)))
    assert result.value == f"smtptor:[{ONION_B}]:25"


def test_srv_name_is_absolute_and_uses_the_service_label():
    router = make_router(service="onion-mx")
    assert router.srv_name("xn--bcher-kva.example").to_text() == "_onion-mx._tcp.xn--bcher-kva.example."


def answer(*records: SrvRecord) -> SrvAnswer:
    return SrvAnswer(DnsStatus.ANSWER, tuple(records), ttl_seconds=300)


def test_answer_with_valid_targets_is_found_in_priority_order():
    result = make_router().route_from_answer("d.example", answer(
        SrvRecord(20, 1, 2525, ONION_B), SrvRecord(10, 5, 25, ONION_A)))
    assert result.value == f"smtptor:[{ONION_A}]:25, [{ONION_B}]:2525"


@pytest.mark.parametrize("target, reason", [
    (V2_ONION, "v2_onion"), ("mx.example.net", "clearnet"), (bad_checksum(ONION_A), "bad_checksum")])
def test_unusable_targets_are_refused_and_logged_with_the_domain(target, reason, caplog):
    with caplog.at_level(logging.WARNING):
        result = make_router().route_from_answer("d.example", answer(SrvRecord(10, 5, 25, target)))
    assert result.outcome is Outcome.NOT_FOUND
    assert f"refusing SRV target {target} for d.example: {reason}" in caplog.text


def test_usable_targets_survive_next_to_refused_ones():
    result = make_router().route_from_answer("d.example", answer(
        SrvRecord(5, 5, 25, V2_ONION), SrvRecord(10, 5, 25, ONION_C), SrvRecord(1, 1, 25, ".")))
    assert result.value == f"smtptor:[{ONION_C}]:25"


def test_duplicate_targets_are_listed_once_and_nexthops_are_capped():
    records = [SrvRecord(10, 1, 25, ONION_A), SrvRecord(10, 1, 25, ONION_A), SrvRecord(20, 1, 25, ONION_B),
               SrvRecord(30, 1, 25, ONION_C)]
    result = make_router(max_nexthops=2).route_from_answer("d.example", answer(*records))
    assert result.value == f"smtptor:[{ONION_A}]:25, [{ONION_B}]:25"


@pytest.mark.parametrize("status", [DnsStatus.NXDOMAIN, DnsStatus.NODATA])
def test_negative_answers_are_not_found(status):
    assert make_router().route_from_answer("d.example", SrvAnswer(status)).outcome is Outcome.NOT_FOUND


@pytest.mark.parametrize("status", [DnsStatus.FAILURE, DnsStatus.TIMEOUT])
def test_dns_failures_are_temporary_never_not_found(status):
    result = make_router().route_from_answer("d.example", SrvAnswer(status, detail="DNS server answered SERVFAIL"))
    assert result.outcome is Outcome.TEMP_FAIL
    assert result.value == "DNS server answered SERVFAIL"


def test_rfc2782_weighted_order_within_a_priority():
    # weight 3 vs 1 in one priority: the heavier record comes first about 3 times in 4 (RFC 2782)
    heavy, light = SrvRecord(10, 3, 25, ONION_A), SrvRecord(10, 1, 25, ONION_B)
    firsts = collections.Counter(order_targets([light, heavy])[0].target for _ in range(4000))
    share = firsts[ONION_A] / 4000
    assert 0.70 < share < 0.80


def test_rfc2782_zero_weight_records_are_rarely_first():
    zero, weighted = SrvRecord(10, 0, 25, ONION_A), SrvRecord(10, 10, 25, ONION_B)
    firsts = collections.Counter(order_targets([zero, weighted])[0].target for _ in range(2000))
    assert firsts[ONION_B] > 1800


def test_rfc2782_priorities_are_strict():
    records = [SrvRecord(p, w, 25, t) for p, w, t in [(30, 100, ONION_A), (10, 0, ONION_B), (20, 50, ONION_C)]]
    for _ in range(20):
        ordered = order_targets(records)
        assert [r.priority for r in ordered] == [10, 20, 30]
