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
from tests.support.procs import wait_for
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
            daemon.wait_log("ignoring SRV for insecure.test: not authenticated by DNSSEC")
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


def cli(*args: str) -> subprocess.CompletedProcess:
    import sys
    return subprocess.run([sys.executable, "-m", "onion_gateway", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mode", ["warn", "strict"])
def test_changed_srv_target_warns_and_strict_mode_holds_it_until_accepted(mode):
    require("dnsmasq")
    work = public_tempdir("og-pins-")
    pins_file = work / "pins.json"
    config = work / "og.toml"
    dns = Dnsmasq(work / "dns", local_zones=["moved.test"], srv=[SrvEntry("moved.test", ONION_A)]).start()
    from tests.support.procs import free_port
    metrics_port = free_port()
    config.write_text(f'[serve]\ndns_servers = ["{dns.address}"]\npins_file = "{pins_file}"\npinning = "{mode}"\n'
                      f'metrics_address = "127.0.0.1:{metrics_port}"\n'
                      'cache_max_entries = 0\n')      # every lookup asks DNS: the change is seen at once
    daemon = ServeProcess(["--config", str(config)]).start()
    try:
        assert postmap("a@moved.test", daemon.socketmap).stdout.strip() == f"smtptor:[{ONION_A}]:25"
        dns.restart([SrvEntry("moved.test", ONION_B)])
        second = postmap("a@moved.test", daemon.socketmap)
        daemon.wait_log(f"onion set of moved.test changed: SRV now says {ONION_B}")
        # the pins file is written in batches, within about a second
        expected = f"moved.test  {ONION_B}" if mode == "warn" else f"moved.test  {ONION_A}  PENDING {ONION_B}"
        wait_for(lambda: expected in cli("pins", "list", "--config", str(config)).stdout, 10,
                 "the pin change written", daemon.log)
        import urllib.request
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert "onion_gateway_pin_changes_total 1.0" in scraped
        if mode == "warn":
            assert second.stdout.strip() == f"smtptor:[{ONION_B}]:25"
            assert "PENDING" not in cli("pins", "list", "--pins-file", str(pins_file)).stdout
            return
        assert second.returncode == 1 and "query error" in second.stderr        # temporary failure
        listed = cli("pins", "list", "--config", str(config)).stdout
        assert f"moved.test  {ONION_A}  PENDING {ONION_B}" in listed
        accepted = cli("pins", "accept", "--pins-file", str(pins_file), "moved.test")
        assert accepted.returncode == 0, accepted.stderr
        wait_for(lambda: "pins: operator accepted moved.test" in daemon.log(), 10, "the acceptance applied",
                 daemon.log)
        assert postmap("a@moved.test", daemon.socketmap).stdout.strip() == f"smtptor:[{ONION_B}]:25"
        assert cli("pins", "accept", "--config", str(config), "moved.test").returncode == 1
    finally:
        daemon.stop()
        dns.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_check_map_reports_each_kind_of_difference(dns_server):
    from tests.support.onions import V2_ONION, bad_checksum
    work = public_tempdir("og-map-")
    static = work / "tor_transport"
    static.write_text("\n".join([
        f"single.example.test    smtptor:[{ONION_A}]:25",          # SRV publishes the same: not needed
        f"multi.example.test     smtptor:[{ONION_C}]:25",          # SRV disagrees
        f"legacy.example.test    smtptor:[{V2_ONION}]:25",         # v2
        f"typo.example.test      smtptor:[{bad_checksum(ONION_A)}]:25",
        f"nosrv.example.test     smtptor:[{ONION_B}]:25",          # no SRV: the entry is what routes it
        f".sub.example.test      smtptor:[{ONION_B}]:25",
        ""]))
    result = cli("check-map", str(static), "--dns-server", dns_server.address)
    lines = {line.split()[1]: line.split()[0] for line in result.stdout.splitlines()}
    assert lines == {"single.example.test": "srv_published", "multi.example.test": "srv_disagrees",
                     "legacy.example.test": "invalid_onion", "typo.example.test": "invalid_onion",
                     "nosrv.example.test": "no_srv", ".sub.example.test": "parent_entry"}
    assert result.returncode == 1
    static.write_text(f"nosrv.example.test  smtptor:[{ONION_B}]:25\n")
    assert cli("check-map", str(static), "--dns-server", dns_server.address).returncode == 0
