#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris/libFuzzer) of both wire codecs and the DNS-free routing path.

Invariants checked on every input (an AssertionError or any other exception is a crash):
- the decoders raise nothing but FramingError, and nothing at all once they have raised it;
- feeding the same bytes in two different splits gives the same items;
- every item gets a reply that the protocol allows (tcp: "200 "/"500 "/"400 " + one line <= 4096 bytes;
  socketmap: one netstring whose payload starts with OK/NOTFOUND/TEMP/PERM);
- routing a decoded key without DNS returns a result or a domain, never raises.

Run: python tests/fuzz/fuzz_lookup.py tests/fuzz/corpus -runs=1000000 -max_len=512
(see tests/fuzz/RESULTS.md for the recorded long run).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from onion_gateway.errors import FramingError
    from onion_gateway.lookup import codec
    from onion_gateway.lookup.dns import SrvResolver
    from onion_gateway.lookup.result import LookupResult
    from onion_gateway.lookup.routing import Router, build_routing_table

ROUTER = Router(SrvResolver([("127.0.0.1", 9)], 0.1),
                build_routing_table(frozenset({"own.example"}), frozenset(), True, {}))


def decode(decoder, data: bytes, cut: int) -> list:
    items: list = []
    for chunk in (data[:cut], data[cut:]):
        decoder.feed(chunk)
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


def check_tcp_reply(wire: bytes) -> None:
    assert wire[:4] in (b"200 ", b"500 ", b"400 ") and wire.endswith(b"\n") and wire.count(b"\n") == 1
    assert len(wire) <= codec.TCP_TABLE_MAX_REPLY_BYTES


def check_socketmap_reply(wire: bytes) -> None:
    length, _, rest = wire.partition(b":")
    assert rest.endswith(b",") and int(length) == len(rest) - 1
    assert rest.split(b" ", 1)[0] in (b"OK", b"NOTFOUND", b"TEMP", b"PERM")


def reply_for(item) -> LookupResult:
    if isinstance(item, codec.Malformed):
        return LookupResult.error(item.reason)
    routed = ROUTER.route_without_dns(item.key)
    return routed if isinstance(routed, LookupResult) else LookupResult.temp_fail("needs DNS")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    cut = data[0] % len(data)
    body = data[1:]
    for decoder_class, encode, framing, check in (
            (codec.TcpTableDecoder, codec.encode_tcp_reply, codec.encode_tcp_framing_error, check_tcp_reply),
            (codec.SocketmapDecoder, codec.encode_socketmap_reply, codec.encode_socketmap_framing_error,
             check_socketmap_reply)):
        whole = decode(decoder_class(), body, len(body))
        split = decode(decoder_class(), body, cut)
        assert whole == split, (whole, split)
        for item in whole:
            if isinstance(item, tuple):
                check(framing(item[1]))
            else:
                check(encode(reply_for(item)))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
