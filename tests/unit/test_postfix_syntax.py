"""Postfix list syntax as postconf(5) defines it: commas and whitespace, ``{ }`` groups kept whole."""

from __future__ import annotations

import pytest

from onion_gateway.postfix_syntax import parse_restrictions, split_list


@pytest.mark.parametrize("value, expected", [
    ("hash:/etc/postfix/transport", ["hash:/etc/postfix/transport"]),
    ("a,b  c,,\n\t d", ["a", "b", "c", "d"]),
    ("inline:{ { a.example = smtp:[192.0.2.1] }, b.example = local }, hash:/etc/postfix/transport",
     ["inline:{ { a.example = smtp:[192.0.2.1] }, b.example = local }", "hash:/etc/postfix/transport"]),
    ("$transport_maps, hash:/x", ["$transport_maps", "hash:/x"]),
    ("", []),
])
def test_split_list_as_postfix_splits(value, expected):
    assert split_list(value) == expected


def test_restriction_arguments_may_be_brace_groups():
    assert parse_restrictions("check_policy_service { inet:127.0.0.1:9, timeout=1s }, permit") == [
        ("check_policy_service", "{ inet:127.0.0.1:9, timeout=1s }"), ("permit", None)]
