"""End-to-end: mail from one Postfix to another over an onion service on a private Tor network.

The lab (tests/e2e/conftest.py) is built once for the session; the tests run in file order and each
drill puts back what it broke (tor client, DNS) before it ends, also when it fails.
What each test proves is in its docstring; README.md ("How we know it works") sums it up.
"""

from __future__ import annotations

import ipaddress
import re
import smtplib
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import (BADSUM_DOMAIN, BOOTSTRAP_TIMEOUT_SECONDS, FOREIGN_DOMAIN, ONION_SYSLOG_NAME,
                                RX_DOMAIN, LabGateway, MailLab, og_command)
from tests.support.procs import wait_for

pytestmark = pytest.mark.e2e

DELIVERY_TIMEOUT_SECONDS = 60
DEFER_TIMEOUT_SECONDS = 30
FLUSH_INTERVAL_SECONDS = 5
STATUS_RECOVERY_TIMEOUT_SECONDS = 60
# an IPv4 address, not a version number ("Tor 0.4.9.11 running on Linux")
_IPV4 = re.compile(r"(?<![\w.])(?<!Tor )(\d{1,3}(?:\.\d{1,3}){3})(?!\.?\d)")


def wait_delivered_flushing(lab: MailLab, token: str, timeout_seconds: float) -> None:
    """Wait for *token* in rx's mailbox, running ``postqueue -f`` every few seconds (deferred mail
    otherwise waits minimal_backoff_time, 300 s)."""
    deadline = time.monotonic() + timeout_seconds
    while not lab.mailbox_has(token):
        if time.monotonic() > deadline:
            raise AssertionError(f"message {token} not delivered after {timeout_seconds} s\n{lab.diagnostics()}")
        lab.flush_tx()
        step_end = time.monotonic() + FLUSH_INTERVAL_SECONDS
        while time.monotonic() < step_end and not lab.mailbox_has(token):
            time.sleep(0.2)


def test_private_network_is_loopback_only(lab: MailLab) -> None:
    """Every tor is a TestingTorNetwork node that only knows loopback addresses, started with an empty
    defaults file, and none of them logged a non-loopback address (the project's hard network rule)."""
    for node in lab.tor.nodes:
        torrc = node.torrc.read_text()
        options = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in torrc.splitlines() if " " in line}
        assert options.get("TestingTorNetwork") == "1", node.nick
        assert options.get("UseDefaultFallbackDirs") == "0", node.nick
        assert options.get("ClientUseIPv6") == "0", node.nick
        dir_authorities = [line for line in torrc.splitlines() if line.startswith("DirAuthority ")]
        assert len(dir_authorities) == lab.tor.n_authorities, node.nick
        for address in _IPV4.findall(torrc) + _IPV4.findall(node.log_since_start()):
            assert ipaddress.ip_address(address).is_loopback, f"{node.nick}: {address} in torrc or log"
        assert node.proc is not None
        cmdline = Path(f"/proc/{node.proc.pid}/cmdline").read_bytes().split(b"\0")
        defaults = Path(cmdline[cmdline.index(b"--defaults-torrc") + 1].decode())
        assert defaults.read_text() == "", f"{node.nick}: --defaults-torrc {defaults} is not empty"
    assert lab.tor.client.bootstrapped() and lab.tor.onion_node.bootstrapped()


def test_mail_goes_over_the_onion_to_the_hardened_listener(lab: MailLab) -> None:
    """tx asks the daemon, which finds rx.test's SRV record, and delivers through smtptor (torsocks + smtp)
    to the onion; rx receives it on its postfix/onion listener and stores it."""
    queue_id, token = lab.send(f"alice@{RX_DOMAIN}")
    wait_delivered_flushing(lab, token, DELIVERY_TIMEOUT_SECONDS)

    sent = lab.wait_log(lab.tx, rf"postfix/smtptor/smtp\[\d+\]: {queue_id}: to=<alice@{RX_DOMAIN}>, "
                                rf"relay={re.escape(lab.onion)}\[127\.42\.42\.\d+\]:25, .*dsn=2\.0\.0, "
                                rf"status=sent \(250 2\.0\.0 Ok: queued as (\w+)\)",
                        10, "tx's status=sent line through smtptor")
    rx_queue_id = sent.group(1)
    # setup's listener reads Tor's PROXY header: the client is the circuit's address, not 127.0.0.1
    lab.wait_log(lab.rx, rf"{ONION_SYSLOG_NAME}/smtpd\[\d+\]: {rx_queue_id}: "
                         rf"client=\S*\[fc00:dead:beef:4dad::[0-9a-f:]+\]",
                 10, "rx's onion listener accepting the message")
    lab.wait_log(lab.rx, rf"postfix/virtual\[\d+\]: {rx_queue_id}: to=<alice@{RX_DOMAIN}>, relay=virtual, "
                         rf".*status=sent", 10, "rx's local delivery")
    assert lab.trap.count() == 0, "mail reached the clear-route relayhost"


def status_verdicts(gw: LabGateway, *extra: str) -> tuple[int, dict[str, set[str]], str]:
    """Run ``onion-gateway status`` for *gw*.

    :returns: its exit code, ``{check name: {verdict, ...}}`` and its whole output (for messages).
    """
    done = gw.status(*extra)
    verdicts: dict[str, set[str]] = {}
    for line in done.stdout.splitlines():
        verdict, name = line.split()[:2]
        verdicts.setdefault(name, set()).add(verdict)
    return done.returncode, verdicts, done.stdout + done.stderr


@pytest.mark.parametrize("side", ["rx", "tx"])
def test_status_sees_a_healthy_gateway(lab: MailLab, side: str) -> None:
    """``onion-gateway status`` (the CLI) on each gateway: Tor bootstrapped with a SocksPort, the
    gateway's onion service published, the daemon answering on both listeners, the domain's SRV naming
    the onion setup printed, Postfix using the map, the smtptor service and its wrapper in place, and the
    relay audit of the onion listener clean: every check ok, exit 0."""
    gw = lab.rx_gw if side == "rx" else lab.tx_gw
    done = gw.status()
    report = done.stdout + done.stderr
    names = [line.split()[1] for line in done.stdout.splitlines()]
    assert names == ["tor_control", "onion_service", "map_listener", "map_listener", "srv_record",
                     "transport_maps", "smtptor_service", "relay_audit",
                     "tor_circuits", "smtptor_queue", "smtptor_delivery"], report   # + onion delivery health
    assert all(line.startswith("ok ") for line in done.stdout.splitlines()), report
    assert done.returncode == 0, report
    assert f"SocksPort 127.0.0.1:{gw.tor.socks_port}" in report
    assert gw.onion in report


def test_setup_output_and_relay_audit(lab: MailLab) -> None:
    """setup printed, for each gateway, the SRV record the lab publishes; ``onion-gateway audit-open-relay``
    finds rx's onion listener through the torrc setup extended (%include of its piece) and proves it
    cannot relay (exit 0, SAFE)."""
    for gw in (lab.rx_gw, lab.tx_gw):
        assert f"%include {gw.root / 'onion-gateway.torrc'}" in gw.tor.torrc.read_text()
        assert (gw.hidden_service_dir / "hostname").read_text().strip() == gw.onion
    done = og_command("audit-open-relay", "--torrc", str(lab.rx_gw.tor.torrc), "--test-domain", FOREIGN_DOMAIN,
                      "--postfix-config-dir", str(lab.rx.config_dir), timeout_seconds=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"== {lab.rx_gw.listener}  ->  SAFE (exit 0)" in done.stdout, done.stdout
    assert "control passed" in done.stdout, done.stdout


def test_tor_client_down_defers_and_keeps_the_mail(lab: MailLab) -> None:
    """Without tx's tor the message is deferred (4.x.x) and stays queued; it never takes another route,
    and ``status`` on tx fails the Tor and onion-service checks (only those). With the tor back (it
    reloads tx's onion service from setup's torrc piece), ``postqueue -f`` delivers the message over the
    onion and ``status`` is all ok again."""
    trap_before = lab.trap.count()
    lab.tor.stop_client()
    try:
        queue_id, token = lab.send(f"bob@{RX_DOMAIN}")
        deferred = lab.wait_log(lab.tx, rf"(postfix/[\w/]+)\[\d+\]: {queue_id}: to=<bob@{RX_DOMAIN}>, relay=.*"
                                        rf"dsn=(4\.\d\.\d+), status=deferred \(([^)]*)",
                                DEFER_TIMEOUT_SECONDS, "the message to be deferred")
        assert deferred.group(1) == "postfix/smtptor/smtp", deferred.group(0)
        assert queue_id in lab.tx.queue_ids()
        assert not lab.mailbox_has(token)
        assert lab.trap.count() == trap_before, "the message took the clear route while tor was down"
        code, verdicts, report = status_verdicts(lab.tx_gw)
        assert code == 1 and verdicts["tor_control"] == {"fail"}, report
        assert verdicts["onion_service"] == {"fail"} and verdicts["tor_circuits"] == {"fail"}, report
        others = {name: v for name, v in verdicts.items()
                  if name not in ("tor_control", "onion_service", "tor_circuits")}
        assert set(others) == {"map_listener", "srv_record", "transport_maps", "smtptor_service", "relay_audit",
                               "smtptor_queue", "partner_queue", "smtptor_delivery"}
        assert all(v == {"ok"} for v in others.values()), report
    finally:
        lab.tor.start_client()
    lab.tor.wait_bootstrapped(BOOTSTRAP_TIMEOUT_SECONDS, [lab.tor.client])
    lab.wait_onion_reachable()
    wait_delivered_flushing(lab, token, DELIVERY_TIMEOUT_SECONDS)
    lab.wait_log(lab.tx, rf"postfix/smtptor/smtp\[\d+\]: {queue_id}: to=<bob@{RX_DOMAIN}>, "
                         rf"relay={re.escape(lab.onion)}\[[\d.]+\]:25, .*status=sent",
                 10, "the retried message sent through smtptor")
    assert queue_id not in lab.tx.queue_ids()
    assert lab.trap.count() == trap_before
    # tx's tor serves tx's onion again (its torrc %includes setup's piece): status recovers on its own
    deadline = time.monotonic() + STATUS_RECOVERY_TIMEOUT_SECONDS
    while (result := status_verdicts(lab.tx_gw))[0] != 0:
        assert time.monotonic() < deadline, f"status still failing after the restart:\n{result[2]}\n" \
                                            f"{lab.diagnostics()}"
        time.sleep(1)


def test_dns_down_is_a_temporary_failure(lab: MailLab) -> None:
    """With the DNS server gone the daemon answers "temporary failure": tx refuses the recipient with
    451 4.3.0 (or defers the message); nothing is sent in clear and nothing is delivered. ``status`` on
    tx fails the SRV check ("DNS failure") and only that."""
    trap_before = lab.trap.count()
    # a domain the daemon has never asked about: rx.test's own route is in the route cache by now and
    # rightly keeps working through a DNS outage until its TTL ends
    rcpt_domain = f"late.{RX_DOMAIN}"
    lab.dns.stop_server()
    try:
        try:
            queue_id, token = lab.send(f"carol@{rcpt_domain}")
        except smtplib.SMTPResponseException as exc:
            assert exc.smtp_code == 451 and b"4.3.0" in exc.smtp_error, (exc.smtp_code, exc.smtp_error)
            queue_id = None
        if queue_id is not None:  # accepted: then it must be deferred, never sent
            lab.wait_log(lab.tx, rf"{queue_id}: to=<carol@{rcpt_domain}>, .*dsn=4\.\d\.\d+, status=deferred",
                         DEFER_TIMEOUT_SECONDS, "the message to be deferred")
            assert not lab.mailbox_has(token)
        wait_for(lambda: any(f"SRV lookup for {rcpt_domain} failed" in line for line in lab.serve.lines),
                 10, "the daemon's temporary-failure warning", lab.diagnostics)
        assert "to=<carol@" not in "".join(line for line in lab.tx.log_text().splitlines()
                                           if "status=sent" in line)
        assert lab.trap.count() == trap_before, "a DNS failure sent mail down the clear route"
        # --no-audit: with DNS down every audit probe would wait out a DNS timeout (its answers: 451)
        code, verdicts, report = status_verdicts(lab.tx_gw, "--no-audit")
        assert code == 1 and verdicts["srv_record"] == {"fail"} and "DNS failure" in report, report
        others = {name: v for name, v in verdicts.items() if name != "srv_record"}
        assert set(others) == {"tor_control", "onion_service", "map_listener", "transport_maps", "smtptor_service",
                               "tor_circuits", "smtptor_queue", "smtptor_delivery"}
        assert all(v == {"ok"} for v in others.values()), report
    finally:
        lab.dns.start()


def test_bad_checksum_onion_falls_back_to_the_normal_transport(lab: MailLab) -> None:
    """An SRV target with a broken onion checksum is refused (warning in the daemon log): the domain is
    "not found", so tx uses its normal transport (here a loopback trap relayhost: the mail is deferred)."""
    trap_before = lab.trap.count()
    queue_id, token = lab.send(f"dave@{BADSUM_DOMAIN}")
    deferred = lab.wait_log(lab.tx, rf"(postfix/[\w/]+)\[\d+\]: {queue_id}: to=<dave@{BADSUM_DOMAIN}>, "
                                    rf"relay=([^,]*), .*status=deferred", DEFER_TIMEOUT_SECONDS,
                            "the message to be deferred by the normal transport")
    assert deferred.group(1) == "postfix/smtp", deferred.group(0)
    assert deferred.group(2) == f"127.0.0.1[127.0.0.1]:{lab.trap.port}", deferred.group(0)
    assert lab.trap.count() > trap_before
    assert any(f"refusing SRV target {lab.bad_onion} for {BADSUM_DOMAIN}" in line for line in lab.serve.lines), \
        lab.diagnostics()
    assert queue_id in lab.tx.queue_ids()
