"""Property tests (hypothesis) for the codecs: arbitrary bytes, arbitrary splits, pipelined requests."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from onion_gateway.errors import FramingError
from onion_gateway.lookup import codec
from onion_gateway.lookup.codec import Request

DECODERS = [codec.TcpTableDecoder, codec.SocketmapDecoder]


def feed_in_pieces(decoder, data: bytes, cuts: list[int]) -> list:
    """Feed *data* cut at *cuts*; collect items, and a ("framing",) marker where framing is lost."""
    items: list = []
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, end in zip(bounds, bounds[1:]):
        decoder.feed(data[start:end])
        while True:
            try:
                item = decoder.next_request()
            except FramingError:
                items.append(("framing",))
                return items
            if item is None:
                break
            items.append(item)
    return items


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8))
def test_any_bytes_in_any_pieces_decode_the_same_and_raise_only_framing_errors(data, cuts):
    for decoder_class in DECODERS:
        assert feed_in_pieces(decoder_class(), data, cuts) == feed_in_pieces(decoder_class(), data, [])


keys = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(keys, min_size=1, max_size=10), cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_pipelined_tcp_requests_come_back_exactly(keys, cuts):
    stream = b"".join(b"get " + codec.percent_encode(k) + b"\n" for k in keys)
    assert feed_in_pieces(codec.TcpTableDecoder(), stream, cuts) == [Request(k) for k in keys]


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(keys.filter(lambda k: True), min_size=1, max_size=10),
       cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_pipelined_socketmap_requests_come_back_exactly(keys, cuts):
    payloads = [b"onion " + k.encode() for k in keys]
    stream = b"".join(b"%d:%s," % (len(p), p) for p in payloads)
    assert feed_in_pieces(codec.SocketmapDecoder(), stream, cuts) == [Request(k, "onion") for k in keys]


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=300))
def test_tcp_replies_are_one_line_and_decode_back(value):
    from onion_gateway.lookup.result import LookupResult
    wire = codec.encode_tcp_reply(LookupResult.found(value))
    assert wire.count(b"\n") == 1 and wire.endswith(b"\n") and len(wire) <= 4096
    assert all(0x21 <= b < 0x7F for b in wire[4:-1])
    assert codec.percent_decode(wire[4:-1]) == value
