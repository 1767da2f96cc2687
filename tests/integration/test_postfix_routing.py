"""A real Postfix instance routes mail by the daemon's answers (transport_maps over tcp: and socketmap:).

The test instance's ``smtptor`` transport is a pipe(8) that records Postfix's ``$nexthop`` and exits
75 (temporary failure): it proves which transport and nexthop Postfix chose, and nothing is ever
resolved or sent -- no onion name reaches a resolver, no byte leaves loopback.
"""

from __future__ import annotations

import os
import shutil
import smtplib

import pytest

from tests.conftest import require
from tests.support.daemon import ServeProcess
from tests.support.dnsserver import Dnsmasq, SrvEntry
from tests.support.onions import ONION_A, ONION_B
from tests.support.postfix import new_instance
from tests.support.procs import public_tempdir, tail, wait_for

pytestmark = pytest.mark.integration

SMTPTOR_PIPE = """\
smtptor   unix  -       n       n       -       -       pipe
  flags=q user=nobody argv={script} ${{nexthop}} ${{recipient}}
"""


def smtptor_pipe(work):
    """Write the pipe(8) script that records ``$nexthop $recipient`` and exits 75 (deferred).

    :returns: ``(script, record)`` paths; *record* is world-writable (pipe runs as nobody).
    """
    record = work / "smtptor.record"
    record.touch()
    os.chmod(record, 0o666)
    script = work / "smtptor.sh"
    script.write_text(f'#!/bin/sh\necho "$1 $2" >> {record}\nexit 75\n')
    os.chmod(script, 0o755)
    return script, record


@pytest.fixture(scope="module")
def routing_lab():
    """dnsmasq + serve + a Postfix instance whose transport_maps asks the daemon (module-wide)."""
    require("postfix", "dnsmasq")
    work = public_tempdir("og-route-")
    dns = Dnsmasq(work / "dns", local_zones=["rx.test"], srv=[
        SrvEntry("rx.test", ONION_A), SrvEntry("rx2.test", ONION_B, port=2525)]).start()
    # tx.test is the instance's own domain: excluded, as a postmaster must (sender lookups come too)
    daemon = ServeProcess(["--dns-server", dns.address, "--dns-timeout", "2", "--exclude-domains", "tx.test"]).start()
    script, record = smtptor_pipe(work)
    pf = new_instance(hostname="tx.lab.test", domains=["tx.test"],
                      main_extra={"transport_maps": f"tcp:127.0.0.1:{daemon.tcp_port}"},
                      master_extra=SMTPTOR_PIPE.format(script=script)).start()
    yield dns, daemon, pf, record
    pf.stop()
    daemon.stop()
    dns.stop()
    shutil.rmtree(work, ignore_errors=True)


def send(pf, rcpt: str) -> None:
    with pf.smtp() as client:
        client.sendmail("bob@tx.test", [rcpt], f"From: bob@tx.test\r\nTo: {rcpt}\r\nSubject: t\r\n\r\nhello\r\n")


def diagnostics(pf, daemon):
    return lambda: f"--- maillog\n{tail(pf.maillog)}\n--- daemon\n{daemon.log()[-3000:]}"


@pytest.mark.parametrize("table", ["tcp", "socketmap"])
def test_mail_for_a_domain_with_srv_takes_the_smtptor_transport_with_the_onion_nexthop(routing_lab, table):
    dns, daemon, pf, record = routing_lab
    maps = f"tcp:127.0.0.1:{daemon.tcp_port}" if table == "tcp" else \
        f"socketmap:inet:127.0.0.1:{daemon.socketmap_port}:onion"
    pf.postconf("-e", f"transport_maps = {maps}")
    pf.reload()
    rcpt = f"alice+{table}@rx.test"
    send(pf, rcpt)
    wait_for(lambda: rcpt in record.read_text(), 30, "smtptor pipe to be called", diagnostics(pf, daemon))
    assert f"[{ONION_A}]:25 {rcpt}" in record.read_text().splitlines()
    wait_for(lambda: f"to=<{rcpt}>, relay=smtptor" in pf.log_text(), 10, "smtptor delivery attempt in maillog",
             diagnostics(pf, daemon))


def test_mail_for_a_domain_without_srv_takes_the_normal_transport(routing_lab):
    dns, daemon, pf, record = routing_lab
    send(pf, "carol@nosrv.rx.test")
    # the normal transport is the dead loopback relayhost: deferred, never via smtptor
    wait_for(lambda: "to=<carol@nosrv.rx.test>, relay=none" in pf.log_text()
             or f"to=<carol@nosrv.rx.test>, relay=127.0.0.1[127.0.0.1]:{pf.dead_relay_port}" in pf.log_text(),
             30, "normal-transport attempt", diagnostics(pf, daemon))
    assert "carol@nosrv.rx.test" not in record.read_text()


def test_with_dns_down_rcpt_gets_a_temporary_failure_not_a_clearnet_route(routing_lab):
    dns, daemon, pf, record = routing_lab
    dns.stop_server()
    try:
        pf.reload()            # trivial-rewrite may keep earlier answers (LAB-NOTES §2)
        with pf.smtp() as client:
            client.mail("bob@tx.test")
            code, text = client.rcpt("dave@rx2.test")
        assert code == 451, (code, text)
        assert b"4.3.0" in text and b"Temporary lookup failure" in text
        assert "dave@rx2.test" not in record.read_text()
        daemon.wait_log("SRV lookup for rx2.test failed")
    finally:
        dns.start()
        pf.reload()
    # and the same recipient routes over the onion again, once Postfix's processes from before the reload
    # (postfix reload is asynchronous: an old smtpd may still hold trivial-rewrite's failed answer) are gone
    def rcpt_code() -> int:
        with pf.smtp() as client:
            client.mail("bob@tx.test")
            code = client.rcpt("dave@rx2.test")[0]
            client.rset()
        return code

    wait_for(lambda: rcpt_code() == 250, 20, "RCPT to dave@rx2.test accepted again after DNS came back",
             diagnostics(pf, daemon), interval=0.5)


def _cmdline(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _root(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/root")
    except OSError:
        return ""


def test_chrooted_trivial_rewrite_reaches_a_unix_socketmap_under_the_queue_directory():
    """README "Unix sockets and Postfix's chroot": trivial-rewrite runs chrooted to queue_directory and
    opens ``socketmap:unix:onion-gateway/map.sock:onion`` relative to it; the daemon listens on the same
    socket by its absolute path, group postfix, mode 0660."""
    require("postfix", "dnsmasq")
    work = public_tempdir("og-chroot-")
    dns = Dnsmasq(work / "dns", local_zones=["rx.test"], srv=[SrvEntry("rx.test", ONION_A)]).start()
    script, record = smtptor_pipe(work)
    pf = new_instance(hostname="tx.lab.test", domains=["tx.test"],
                      main_extra={"transport_maps": "socketmap:unix:onion-gateway/map.sock:onion"},
                      master_extra=SMTPTOR_PIPE.format(script=script))
    pf.postconf("-F", "rewrite/unix/chroot=y")
    sockdir = pf.root / "queue" / "onion-gateway"
    sockdir.mkdir(parents=True)
    os.chmod(sockdir, 0o755)
    daemon = ServeProcess(["--dns-server", dns.address, "--exclude-domains", "tx.test",
                           "--socketmap", f"unix:{sockdir / 'map.sock'}", "--unix-socket-group", "postfix",
                           "--unix-socket-mode", "0660"]).start()
    try:
        pf.start()
        assert "y" == pf.postconf("-Fh", "rewrite/unix/chroot").strip()
        send(pf, "alice@rx.test")
        wait_for(lambda: "alice@rx.test" in record.read_text(), 30, "smtptor pipe to be called",
                 diagnostics(pf, daemon))
        assert f"[{ONION_A}]:25 alice@rx.test" in record.read_text().splitlines()
        roots = {_root(pid) for pid in os.listdir("/proc") if pid.isdigit()
                 and _cmdline(pid).startswith("trivial-rewrite")}
        assert str(pf.root / "queue") in roots, roots            # it really runs chrooted
    finally:
        pf.stop()
        daemon.stop()
        dns.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(pf.root, ignore_errors=True)
