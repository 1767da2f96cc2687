"""Routing you can trust: DNSSEC-required mode (knot + unbound on loopback), own domains never routed."""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest

from tests.conftest import require
from tests.support.daemon import ServeProcess
from tests.support.dnsserver import Dnsmasq, SrvEntry
from tests.support.dnssec import DnssecLab
from tests.support.onions import ONION_A, ONION_B, ONION_C
from tests.support.postfix import new_instance
from tests.support.procs import public_tempdir, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dnssec_lab():
    require("knotd", "keymgr", "unbound")
    work = public_tempdir("og-dnssec-")
    lab = DnssecLab(work, {"signed.test": ONION_A, "insecure.test": ONION_B, "bogus.test": ONION_C}).start()
    yield lab
    lab.stop()
    shutil.rmtree(work, ignore_errors=True)


def postmap(key: str, table: str) -> subprocess.CompletedProcess:
    return subprocess.run(["postmap", "-q", key, table], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("require_dnssec", [True, False])
def test_dnssec_signed_unsigned_and_bogus_answers_through_postmap(dnssec_lab, require_dnssec):
    flag = "--require-dnssec" if require_dnssec else "--no-require-dnssec"
    daemon = ServeProcess(["--dns-server", dnssec_lab.resolver, "--dns-timeout", "3", flag]).start()
    try:
        for table in (daemon.tcp_map, daemon.socketmap):
            signed = postmap("a@signed.test", table)
            assert (signed.returncode, signed.stdout.strip()) == (0, f"smtptor:[{ONION_A}]:25")
            insecure = postmap("a@insecure.test", table)
            if require_dnssec:
                assert (insecure.returncode, insecure.stdout, "query error" in insecure.stderr) == (1, "", False)
            else:
                assert insecure.stdout.strip() == f"smtptor:[{ONION_B}]:25"
            bogus = postmap("a@bogus.test", table)
            assert bogus.returncode == 1 and "query error" in bogus.stderr       # temporary failure
        if require_dnssec:
            assert "ignoring SRV for insecure.test: not authenticated by DNSSEC" in daemon.log()
    finally:
        daemon.stop()


def test_own_postfix_domains_are_never_routed_even_with_srv():
    require("postfix", "dnsmasq")
    work = public_tempdir("og-own-")
    dns = Dnsmasq(work / "dns", local_zones=["own.test", "hashed.test", "later.test", "other.test"], srv=[
        SrvEntry(d, ONION_A) for d in ("own.test", "hashed.test", "later.test", "other.test")]).start()
    pf = new_instance(domains=["own.test"])
    (pf.config_dir / "relay").write_text("hashed.test OK\n")
    subprocess.run(["postmap", f"hash:{pf.config_dir / 'relay'}"], check=True)
    pf.postconf("-e", f"relay_domains = hash:{pf.config_dir / 'relay'}")
    daemon = ServeProcess(["--dns-server", dns.address, "--postfix-config-dir", str(pf.config_dir)]).start()
    try:
        for domain in ("own.test", "hashed.test"):
            assert postmap(f"a@{domain}", daemon.tcp_map).returncode == 1, domain
        assert postmap("a@later.test", daemon.tcp_map).stdout.strip() == f"smtptor:[{ONION_A}]:25"
        pf.postconf("-e", "mydestination = later.test")        # becomes our own: SIGHUP re-reads Postfix
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "reloaded:" in daemon.log(), 5, "reload")
        assert postmap("a@later.test", daemon.tcp_map).returncode == 1
        assert postmap("a@other.test", daemon.tcp_map).stdout.strip() == f"smtptor:[{ONION_A}]:25"
        assert dns.query_count("_onion-mx._tcp.own.test") == 0
    finally:
        daemon.stop()
        dns.stop()
        shutil.rmtree(pf.root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def test_own_onion_is_never_routed_to():
    daemon = ServeProcess(["--dns-server", "127.0.0.1:9", "--own-onion", ONION_B]).start()
    try:
        assert postmap(f"a@{ONION_B}", daemon.tcp_map).returncode == 1
        assert postmap(f"a@{ONION_A}", daemon.tcp_map).stdout.strip() == f"smtptor:[{ONION_A}]:25"
    finally:
        daemon.stop()
