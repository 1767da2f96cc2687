"""Fixtures for integration tests: dnsmasq on loopback, the daemon as a subprocess, Postfix instances."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import require
from tests.support.daemon import ServeProcess
from tests.support.dnsserver import Dnsmasq, SrvEntry
from tests.support.gateway import new_gateway
from tests.support.onions import ONION_A, ONION_B, ONION_C, V2_ONION, bad_checksum
from tests.support.procs import public_tempdir

pytestmark = pytest.mark.integration

# The published test zone: one entry per routing case that needs DNS.
ZONE = [
    SrvEntry("single.example.test", ONION_A),
    SrvEntry("multi.example.test", ONION_B, port=2525, priority=20, weight=1),
    SrvEntry("multi.example.test", ONION_A, port=25, priority=10, weight=5),
    SrvEntry("v2.example.test", V2_ONION),
    SrvEntry("clearnet.example.test", "mx.example.net"),
    SrvEntry("badsum.example.test", bad_checksum(ONION_C)),
    SrvEntry("mixed.example.test", V2_ONION, priority=5),
    SrvEntry("mixed.example.test", ONION_C, priority=10),
    SrvEntry("xn--bcher-kva.example.test", ONION_C),
]


@pytest.fixture(scope="session")
def dns_server():
    """dnsmasq on 127.0.0.1 with the ZONE records; servfail.test answers SERVFAIL (session-wide)."""
    require("dnsmasq")
    workdir = public_tempdir("og-dns-")
    server = Dnsmasq(workdir, local_zones=["example.test"], srv=list(ZONE)).start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def serve(dns_server):
    """``onion-gateway serve`` resolving through dns_server, on free loopback ports (session-wide)."""
    proc = ServeProcess(["--dns-server", dns_server.address, "--dns-timeout", "2",
                         "--exclude-domains", "excluded.example.test,own.example.test",
                         "--log-level", "debug"]).start()
    yield proc
    proc.stop()


@pytest.fixture
def gateway(serve):
    """A lab gateway (tests/support/gateway.py) whose daemon table is the session's socketmap listener."""
    require("postfix", "postconf", "tor", "torsocks")
    gw = new_gateway(serve.socketmap)
    yield gw
    gw.close()
