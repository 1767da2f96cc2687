"""The per-request fast paths keep the exact answers of the straightforward code they replaced."""

from __future__ import annotations

import pytest

from onion_gateway.lookup.codec import percent_encode
from onion_gateway.lookup.routing import normalize_domain


@pytest.mark.parametrize("text, encoded", [
    ("smtptor:[abc.onion]:25", b"smtptor:[abc.onion]:25"),
    ("not found", b"not%20found"),
    ("100%", b"100%25"),
    ("tab\there", b"tab%09here"),
    ("bücher", b"b%C3%BCcher"),
    ("", b""),
])
def test_percent_encode_escapes_exactly_percent_space_controls_and_non_ascii(text, encoded):
    assert percent_encode(text) == encoded


@pytest.mark.parametrize("domain, normal", [
    ("Example.COM.", "example.com"),
    ("_srv.a-b.example", "_srv.a-b.example"),
    ("a" * 63 + ".test", "a" * 63 + ".test"),
    ("a" * 64 + ".test", None),
    ("-a.test", None),
    ("a-.test", None),
    ("a..test", None),
    ("a.test\n", None),           # a newline (percent-decoded %0A) is not part of a host name
    ("a\n.test", None),
    ("a b.test", None),
])
def test_normalize_domain_accepts_host_names_only(domain, normal):
    assert normalize_domain(domain) == normal
