"""Postfix's own postmap -q as the client of the daemon, over tcp_table(5) and socketmap_table(5)."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import require
from tests.support.onions import ONION_A, ONION_B, ONION_C

pytestmark = pytest.mark.integration


def postmap_q(key: str, table: str) -> subprocess.CompletedProcess:
    require("postmap")
    return subprocess.run(["postmap", "-q", key, table], capture_output=True, text=True, timeout=60)


@pytest.fixture(params=["tcp", "socketmap"])
def table(request, serve):
    return serve.tcp_map if request.param == "tcp" else serve.socketmap


@pytest.mark.parametrize("key, expected", [
    ("alice@single.example.test", f"smtptor:[{ONION_A}]:25"),
    ("Alice+Ext@Single.Example.TEST", f"smtptor:[{ONION_A}]:25"),
    ("single.example.test", f"smtptor:[{ONION_A}]:25"),
    ("single.example.test.", f"smtptor:[{ONION_A}]:25"),
    ("bob@multi.example.test", f"smtptor:[{ONION_A}]:25, [{ONION_B}]:2525"),
    ("carol@mixed.example.test", f"smtptor:[{ONION_C}]:25"),
    ("dave@bücher.example.test", f"smtptor:[{ONION_C}]:25"),
    (f"erin@{ONION_B}", f"smtptor:[{ONION_B}]:25"),
])
def test_found_routes_through_the_onion_transport(table, key, expected):
    result = postmap_q(key, table)
    assert (result.returncode, result.stdout.strip()) == (0, expected), result.stderr


@pytest.mark.parametrize("key", [
    "nobody@nosuch.example.test",      # NXDOMAIN
    "x@example.test",                  # NOERROR, no SRV (NODATA)
    "x@v2.example.test",               # only a v2 onion target
    "x@clearnet.example.test",         # clearnet target
    "x@badsum.example.test",           # bad checksum
    "x@excluded.example.test",         # excluded
    "*",                               # trivial-rewrite's wildcard probe
    "user@[192.0.2.1]",                # address literal
])
def test_not_found_leaves_the_normal_transport(table, key):
    result = postmap_q(key, table)
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert "query error" not in result.stderr


def test_servfail_is_a_temporary_error_not_a_miss(table):
    result = postmap_q("x@servfail.test", table)
    assert result.returncode == 1
    assert "query error" in result.stderr, result.stderr


def test_excluded_and_wildcard_keys_send_no_dns_query(serve, dns_server):
    for key in ("x@excluded.example.test", "*", "user@[192.0.2.1]"):
        assert postmap_q(key, serve.tcp_map).returncode == 1
    assert dns_server.query_count("_onion-mx._tcp.excluded.example.test") == 0


def test_refused_targets_are_logged_with_the_domain(serve):
    postmap_q("x@v2.example.test", serve.tcp_map)
    postmap_q("x@clearnet.example.test", serve.tcp_map)
    serve.wait_log("refusing SRV target expyuzz4wqqyqhjn.onion for v2.example.test: v2_onion")
    serve.wait_log("refusing SRV target mx.example.net for clearnet.example.test: clearnet")
