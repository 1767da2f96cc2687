"""The SRV reply parser of udpdns against replies built by dnspython (compression, CNAME, SOA, TC)."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from onion_gateway.lookup.dns import SrvRecord
from onion_gateway.lookup.udpdns import MalformedReply, build_query, parse_reply, read_name

QNAME = "_onion-mx._tcp.example.test"


def reply(rcode=dns.rcode.NOERROR, answer=(), authority=(), flags=0) -> bytes:
    query = dns.message.make_query(QNAME + ".", "SRV", use_edns=0, payload=1232)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    response.flags |= flags
    for text in answer:
        response.answer.append(dns.rrset.from_text(*text))
    for text in authority:
        response.authority.append(dns.rrset.from_text(*text))
    return response.to_wire()       # dnspython compresses names: the parser must follow pointers


def test_query_is_what_dnspython_reads_as_an_srv_question_with_edns_rd_ad():
    message = dns.message.from_wire(build_query(4660, dns.message.make_query(QNAME + ".", "SRV").question[0].name.to_wire()))
    assert message.id == 4660
    assert str(message.question[0]) == f"{QNAME}. IN SRV"
    assert message.flags & dns.flags.RD and message.flags & dns.flags.AD
    assert (message.edns, message.payload) == (0, 1232)


def test_srv_records_with_compressed_targets_and_the_smallest_ttl():
    data = reply(answer=[(QNAME + ".", 300, "IN", "SRV", "10 5 25 a.example.test.", "20 0 2525 B.Example.TEST.")],
                 flags=dns.flags.AD)
    rcode, truncated, authenticated, records, ttl, negative = parse_reply(data, QNAME)
    assert (rcode, truncated, authenticated, ttl, negative) == (0, False, True, 300, None)
    # dnspython writes an rrset in no fixed order
    assert sorted(records, key=repr) == [SrvRecord(10, 5, 25, "a.example.test"), SrvRecord(20, 0, 2525, "b.example.test")]


def test_srv_records_behind_a_cname_count_and_others_do_not():
    data = reply(answer=[(QNAME + ".", 60, "IN", "CNAME", "_onion-mx._tcp.other.test."),
                         ("_onion-mx._tcp.other.test.", 120, "IN", "SRV", "10 5 25 x.onion."),
                         ("_onion-mx._tcp.unrelated.test.", 120, "IN", "SRV", "10 5 25 y.onion.")])
    _, _, _, records, ttl, _ = parse_reply(data, QNAME)
    assert records == (SrvRecord(10, 5, 25, "x.onion"),) and ttl == 120


@pytest.mark.parametrize("rcode", [dns.rcode.NXDOMAIN, dns.rcode.NOERROR])
def test_negative_ttl_is_min_of_soa_ttl_and_minimum(rcode):
    data = reply(rcode, authority=[("example.test.", 900, "IN", "SOA", "ns.example.test. h.example.test. 1 2 3 4 60")])
    assert parse_reply(data, QNAME)[0] == rcode
    assert parse_reply(data, QNAME)[3:] == ((), None, 60)


def test_servfail_and_truncation_are_reported():
    assert parse_reply(reply(dns.rcode.SERVFAIL), QNAME)[0] == dns.rcode.SERVFAIL
    assert parse_reply(reply(flags=dns.flags.TC), QNAME)[1] is True


def test_target_root_stays_a_dot():
    data = reply(answer=[(QNAME + ".", 300, "IN", "SRV", "0 0 0 .")])
    assert parse_reply(data, QNAME)[3] == (SrvRecord(0, 0, 0, "."),)


@pytest.mark.parametrize("data", [
    b"\x00" * 11,                                                    # short header
    b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x05abc",      # truncated question
    b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c",     # pointer to itself
])
def test_malformed_replies_raise(data):
    with pytest.raises(MalformedReply):
        parse_reply(data, QNAME)


def test_read_name_returns_the_offset_after_a_pointer():
    data = b"\x03abc\x00" + b"\x01x\xc0\x00"
    assert read_name(data, 5) == ("x.abc", 9)
