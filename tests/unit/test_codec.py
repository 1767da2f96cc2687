"""tcp_table(5) and socketmap_table(5) codecs: golden request -> item tables, replayed at every read size."""

from __future__ import annotations

import pytest

from onion_gateway.errors import FramingError
from onion_gateway.lookup import codec
from onion_gateway.lookup.codec import Malformed, Request
from onion_gateway.lookup.result import LookupResult

READ_SIZES = [4096, 128, 16, 1]


def decode_all(decoder, stream: bytes, read_size: int) -> list:
    """Feed *stream* in chunks of *read_size* and collect every item; a FramingError is collected too."""
    items: list = []
    for start in range(0, len(stream), read_size):
        decoder.feed(stream[start:start + read_size])
        while True:
            try:
                item = decoder.next_request()
            except FramingError as exc:
                items.append(("framing", str(exc)))
                return items
            if item is None:
                break
            items.append(item)
    return items


TCP_GOLDEN = [
    (b"get alice@example.com\n", [Request("alice@example.com")]),
    (b"get a%20b%25c:%C3%A9\n", [Request("a b%c:é")]),                  # what postmap sends (LAB-NOTES §3)
    (b"get one\nget two\nget three\n", [Request("one"), Request("two"), Request("three")]),
    (b"get *\n", [Request("*")]),
    (b"get \n", [Request("")]),
    (b"get x\r\n", [Request("x")]),
    (b"get bad%zzkey\n", [Malformed("bad key encoding: bad %XX escape b'zz'")]),
    (b"get trunc%4\n", [Malformed("bad key encoding: truncated %XX escape")]),
    (b"put k v\n", [Malformed("put is not implemented")]),
    (b"GET x\n", [Malformed("unknown command: expected 'get KEY'")]),
    (b"get\n", [Malformed("unknown command: expected 'get KEY'")]),
    (b"get x\nbogus\nget y\n", [Request("x"), Malformed("unknown command: expected 'get KEY'"), Request("y")]),
]


@pytest.mark.parametrize("read_size", READ_SIZES)
@pytest.mark.parametrize("stream, expected", TCP_GOLDEN)
def test_tcp_table_decoder_golden(stream, expected, read_size):
    assert decode_all(codec.TcpTableDecoder(), stream, read_size) == expected


@pytest.mark.parametrize("read_size", READ_SIZES)
def test_tcp_table_non_utf8_key_is_malformed_and_stream_stays_in_step(read_size):
    items = decode_all(codec.TcpTableDecoder(), b"get %FF%FE\nget ok\n", read_size)
    assert isinstance(items[0], Malformed) and "encoding" in items[0].reason
    assert items[1] == Request("ok")


@pytest.mark.parametrize("read_size", READ_SIZES)
def test_tcp_table_overlong_line_loses_framing(read_size):
    decoder = codec.TcpTableDecoder(max_request_bytes=64)
    items = decode_all(decoder, b"get ok\nget " + b"a" * 100 + b"\n", read_size)
    assert items[0] == Request("ok")
    assert items[1][0] == "framing" and "longer than 64 bytes" in items[1][1]


def test_tcp_table_line_of_exactly_the_limit_is_accepted():
    line = b"get " + b"a" * 59 + b"\n"          # 64 bytes with the newline
    assert len(line) == 64
    assert decode_all(codec.TcpTableDecoder(max_request_bytes=64), line, 4096) == [Request("a" * 59)]


SOCKETMAP_GOLDEN = [
    (b"23:onion alice@example.com,", [Request("alice@example.com", "onion")]),
    (b"14:mymap Some.Key,", [Request("Some.Key", "mymap")]),             # postmap keeps case (LAB-NOTES §3)
    (b"7:onion *,9:onion a.b,", [Request("*", "onion"), Request("a.b", "onion")]),
    (b"6:onion ,", [Request("", "onion")]),
    (b"5:onion,", [Malformed("expected 'NAME KEY'")]),
    (b"5: key1,", [Malformed("expected 'NAME KEY'")]),
    (b"8:onion \xff\xfe,7:onion x,", [Malformed("key is not UTF-8"), Request("x", "onion")]),
    (b"x:onion a,", [("framing", "bad netstring length")]),
    (b"7:onion ab,", [("framing", "netstring not terminated by ','")]),
    (b"10001:", [("framing", "request longer than 10000 bytes")]),
    (b"123456", [("framing", "bad netstring length")]),
    (b"-1:x,", [("framing", "bad netstring length")]),
]


@pytest.mark.parametrize("read_size", READ_SIZES)
@pytest.mark.parametrize("stream, expected", SOCKETMAP_GOLDEN)
def test_socketmap_decoder_golden(stream, expected, read_size):
    assert decode_all(codec.SocketmapDecoder(), stream, read_size) == expected


def test_socketmap_request_of_exactly_the_limit_is_accepted():
    payload = b"onion " + b"k" * (10_000 - 6)
    stream = b"10000:" + payload + b","
    assert decode_all(codec.SocketmapDecoder(), stream, 4096) == [Request("k" * 9994, "onion")]


def test_incomplete_input_waits_for_more_bytes():
    tcp = codec.TcpTableDecoder()
    tcp.feed(b"get partial")
    assert tcp.next_request() is None and tcp.buffered_bytes == len(b"get partial")
    sm = codec.SocketmapDecoder()
    sm.feed(b"12:onion")
    assert sm.next_request() is None


TCP_REPLIES = [
    (LookupResult.found("smtptor:[a.onion]:25"), b"200 smtptor:[a.onion]:25\n"),
    (LookupResult.found("smtptor:[a.onion]:25, [b.onion]:2525"), b"200 smtptor:[a.onion]:25,%20[b.onion]:2525\n"),
    (LookupResult.not_found("no SRV record"), b"500 no%20SRV%20record\n"),
    (LookupResult.not_found(""), b"500 not%20found\n"),
    (LookupResult.temp_fail("DNS timeout after 10 s"), b"400 DNS%20timeout%20after%2010%20s\n"),
    (LookupResult.error("bad 100%"), b"400 bad%20100%25\n"),
    (LookupResult.temp_fail("é\n"), b"400 %C3%A9%0A\n"),
]


@pytest.mark.parametrize("result, wire", TCP_REPLIES)
def test_tcp_table_replies(result, wire):
    assert codec.encode_tcp_reply(result) == wire


def test_tcp_table_reply_never_exceeds_4096_bytes():
    huge = LookupResult.found("smtptor:" + ", ".join(["[x.onion]:25"] * 400))
    wire = codec.encode_tcp_reply(huge)
    assert wire.startswith(b"400 ") and len(wire) <= 4096


def test_tcp_reply_round_trips_through_percent_decoding():
    value = "smtptor:[a.onion]:25, [b.onion]:2525"
    wire = codec.encode_tcp_reply(LookupResult.found(value))
    assert codec.percent_decode(wire[4:-1]) == value


SOCKETMAP_REPLIES = [
    (LookupResult.found("smtptor:[a.onion]:25"), b"23:OK smtptor:[a.onion]:25,"),
    (LookupResult.not_found("no SRV record"), b"9:NOTFOUND ,"),
    (LookupResult.temp_fail("DNS timeout"), b"16:TEMP DNS timeout,"),
    (LookupResult.error("expected 'NAME KEY'"), b"24:PERM expected 'NAME KEY',"),
]


@pytest.mark.parametrize("result, wire", SOCKETMAP_REPLIES)
def test_socketmap_replies(result, wire):
    assert codec.encode_socketmap_reply(result) == wire


def test_framing_error_replies():
    assert codec.encode_tcp_framing_error("request line longer than 4096 bytes") == \
        b"400 request%20line%20longer%20than%204096%20bytes\n"
    assert codec.encode_socketmap_framing_error("bad netstring length") == b"25:PERM bad netstring length,"
