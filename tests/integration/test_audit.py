"""audit-open-relay against private Postfix instances on loopback, one listener per misconfiguration.

Each master.cf listener below is one shape of onion-facing smtpd; the stock main.cf (mynetworks
127.0.0.0/8, ``permit_mynetworks, reject_unauth_destination``) is the trap issue 4 describes. Remote
mail could only go to the dead loopback relayhost, and every test also checks that no probe reached
DATA (the smtpd ``disconnect`` lines count commands) and that nothing was queued.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from onion_gateway.audit import AuditOptions, audit_listener
from onion_gateway.audit.policy import Check, Severity
from onion_gateway.audit.probe import Verdict, other_onion
from tests.conftest import require
from tests.support.netns import Namespace
from tests.support.postfix import PostfixInstance, new_instance
from tests.support.procs import free_port, port_accepts, public_tempdir, tail, wait_for

pytestmark = pytest.mark.integration

TEST_DOMAIN = "relay-target.example"
CLI = [sys.executable, "-m", "onion_gateway", "audit-open-relay"]

# The hardened listener shape setup produces (issue 3).
HARDENED = ("-o syslog_name=postfix/onion -o mynetworks= -o smtpd_client_restrictions= "
            "-o smtpd_helo_restrictions= -o smtpd_sender_restrictions= "
            "-o smtpd_relay_restrictions=reject_unauth_destination "
            "-o smtpd_recipient_restrictions=reject_unauth_destination "
            "-o smtpd_authorized_xclient_hosts= -o smtpd_authorized_xforward_hosts=")

# name -> master.cf -o options of an smtpd on its own port ({etc} is the config directory).
LISTENERS = {
    "hardened": HARDENED,
    "hardened_minimal": ("-o syslog_name=postfix/onion2 -o mynetworks= "
                         "-o smtpd_relay_restrictions=reject_unauth_destination "
                         "-o smtpd_recipient_restrictions=reject_unauth_destination "
                         "-o smtpd_authorized_xclient_hosts= -o smtpd_authorized_xforward_hosts="),
    # the pre-2.10 layout: relay protection only in smtpd_recipient_restrictions, which permits first
    # (Postfix refuses to start with a bare "permit" before every reject, so permit_mynetworks it is)
    "permit_recipient": ("-o syslog_name=postfix/permit -o smtpd_relay_restrictions= "
                         "-o smtpd_recipient_restrictions=permit_mynetworks,reject_unauth_destination"),
    "sender_access": ("-o syslog_name=postfix/sender -o mynetworks= "
                      "-o smtpd_relay_restrictions=check_sender_access,hash:{etc}/sender_access,"
                      "reject_unauth_destination"),
    "xclient": ("-o syslog_name=postfix/xclient -o mynetworks=192.0.2.0/24 "
                "-o smtpd_authorized_xclient_hosts=127.0.0.1 "
                "-o smtpd_relay_restrictions=permit_mynetworks,reject_unauth_destination"),
    "inet_interfaces": ("-o syslog_name=postfix/ifaces -o mynetworks= "
                        "-o smtpd_relay_restrictions=permit_inet_interfaces,reject_unauth_destination"),
    "masked": ("-o syslog_name=postfix/masked "
               "-o smtpd_recipient_restrictions=reject_unauth_destination"),
    "greets_554": ("-o syslog_name=postfix/greet554 -o smtpd_delay_reject=no "
                   "-o smtpd_client_restrictions=reject"),
    "rejects_all": ("-o syslog_name=postfix/rejectall -o mynetworks= "
                    "-o smtpd_relay_restrictions=reject_unauth_destination "
                    "-o smtpd_recipient_restrictions=reject"),
}


# Every accepted probe opens a queue file that is never finished, so Postfix's flow control
# (in_flow_delay, default 1 s) would pause each accepted probe once the tokens run out.
NO_FLOW_DELAY = {"in_flow_delay": "0s"}


def _master_extra(ports: dict[str, int], etc: Path, postscreen_port: int) -> str:
    text = ""
    for name, options in LISTENERS.items():
        text += f"127.0.0.1:{ports[name]} inet n - n - - smtpd\n  {options.format(etc=etc)}\n"
    # postscreen in front of a hardened smtpd: the audit must follow it to the pass service
    text += (f"127.0.0.1:{postscreen_port} inet n - n - 1 postscreen\n"
             "  -o postscreen_access_list=permit_mynetworks\n"
             f"smtpd pass - - n - - smtpd\n  {HARDENED}\n"
             "tlsproxy unix - - n - 0 tlsproxy\n"
             # a unix-socket smtpd with the stock (main.cf) policy: Postfix sees localhost[127.0.0.1]
             "onionsock unix - - n - - smtpd\n  -o syslog_name=postfix/onionsock\n"
             "dnsblog unix - - n - 0 dnsblog\n")
    return text


class Lab:
    """The shared instance, its listener ports and an audit helper."""

    def __init__(self, pf: PostfixInstance, ports: dict[str, int]):
        self.pf = pf
        self.ports = ports

    def audit(self, name: str, **options):
        port = self.pf.smtp_port if name == "open" else self.ports[name]
        options.setdefault("test_domain", TEST_DOMAIN)
        return audit_listener(f"127.0.0.1:{port}", AuditOptions(config_dir=self.pf.config_dir, **options))


def assert_never_data_never_queued(pf: PostfixInstance) -> None:
    log = pf.log_text()
    disconnects = [line for line in log.splitlines() if "disconnect from" in line]
    assert disconnects, tail(pf.maillog)
    assert not [line for line in disconnects if re.search(r"\b(data|bdat)=", line)], disconnects
    assert "message-id=" not in log            # cleanup(8) never saw a message
    assert pf.queue_ids() == []


@pytest.fixture(scope="module")
def lab():
    require("postfix", "postconf", "postmap", "postqueue")
    root = public_tempdir("og-audit-")
    ports = {name: free_port() for name in [*LISTENERS, "postscreen"]}
    pf = PostfixInstance(root=root, master_extra=_master_extra(ports, root / "etc", ports["postscreen"]),
                         main_extra=NO_FLOW_DELAY)
    pf.write()
    (pf.config_dir / "sender_access").write_text("lab.test OK\n")
    subprocess.run(["postmap", str(pf.config_dir / "sender_access")], check=True, timeout=30)
    pf.start()
    for port in ports.values():
        wait_for(lambda: port_accepts(port), 10, f"listener {port}", lambda: tail(pf.maillog))
    yield Lab(pf, ports)
    pf.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_stock_instance_is_a_confirmed_open_relay(lab):
    report = lab.audit("open")
    assert report.exit_code == 1
    assert report.client_address == "127.0.0.1"
    finding = next(f for f in report.findings if f.check is Check.MYNETWORKS_LOOPBACK)
    assert finding.severity is Severity.CRITICAL
    assert "127.0.0.0/8" in finding.value and "main.cf" in finding.source
    accepted = {p.spec.name: p for p in report.accepted}
    assert accepted["third_party_sender"].reply.code == 250
    assert accepted["third_party_sender"].reply.enhanced == "2.1.5"
    assert "null_sender" in accepted and "other_onion" in accepted
    assert_never_data_never_queued(lab.pf)


@pytest.mark.parametrize("name", ["hardened", "hardened_minimal"])
def test_hardened_listener_is_safe(lab, name):
    report = lab.audit(name)
    assert report.exit_code == 0, report.reasons
    assert report.control_passed
    assert report.control.spec.rcpt_to == ("<postmaster@lab.test>",)
    ran = [p for p in report.probes if p.verdict is not Verdict.SKIPPED]
    assert len(ran) >= 20
    assert all(p.verdict is Verdict.DENIED for p in ran), [(p.spec.name, str(p.reply)) for p in ran]
    assert not report.critical
    assert report.policy.settings["mynetworks"].value == ""
    assert report.policy.settings["mynetworks"].source.startswith("master.cf 127.0.0.1:")
    assert_never_data_never_queued(lab.pf)


@pytest.mark.parametrize("name, exit_code, check, accepted_probe", [
    ("permit_recipient", 1, Check.MYNETWORKS_LOOPBACK, "third_party_sender"),
    ("sender_access", 1, Check.ACCESS_MAP_OK, "own_domain_sender"),
    ("xclient", 1, Check.XCLIENT_LOOPBACK, "xclient"),
    ("inet_interfaces", 1, Check.INET_INTERFACES, "third_party_sender"),
])
def test_misconfiguration_is_detected(lab, name, exit_code, check, accepted_probe):
    report = lab.audit(name)
    assert report.exit_code == exit_code, report.reasons
    assert check in {f.check for f in report.critical}, report.findings
    assert accepted_probe in {p.spec.name for p in report.accepted}
    assert_never_data_never_queued(lab.pf)


def test_empty_relay_restrictions_are_reported(lab):
    report = lab.audit("permit_recipient")
    checks = {f.check: f for f in report.findings}
    assert checks[Check.EMPTY_RELAY_RESTRICTIONS].severity is Severity.WARNING
    assert "smtpd_recipient_restrictions" in checks[Check.MYNETWORKS_LOOPBACK].title


def test_sender_access_relays_only_for_the_own_domain(lab):
    report = lab.audit("sender_access")
    verdicts = {p.spec.name: p.verdict for p in report.probes}
    assert verdicts["third_party_sender"] is Verdict.DENIED
    assert verdicts["own_domain_sender"] is Verdict.ACCEPTED
    finding = next(f for f in report.findings if f.check is Check.ACCESS_MAP_OK)
    assert "lab.test OK" in finding.value


def test_permit_masked_by_the_other_list_is_a_warning_not_critical(lab):
    report = lab.audit("masked")
    assert report.exit_code == 0, report.reasons
    finding = next(f for f in report.findings if f.check is Check.MYNETWORKS_LOOPBACK)
    assert finding.severity is Severity.WARNING


def test_server_that_rejects_everything_is_inconclusive_never_safe(lab):
    report = lab.audit("rejects_all")
    assert not report.control_passed
    assert report.exit_code == 3


def test_server_that_refuses_at_the_greeting_is_inconclusive(lab):
    report = lab.audit("greets_554")
    assert report.exit_code == 3, report.reasons
    assert report.control.stage in ("connect", "rcpt", "mail"), report.control


def test_control_recipient_option_is_used(lab):
    report = lab.audit("hardened", control_recipient="someone@lab.test")
    assert report.control.spec.rcpt_to == ("<someone@lab.test>",)
    assert report.exit_code == 0


def test_postscreen_is_followed_to_its_smtpd(lab):
    report = lab.audit("postscreen")
    assert report.listener["via"] == "postscreen -> smtpd/pass"
    assert report.policy.service == "smtpd/pass"
    assert report.exit_code == 0, report.reasons


def test_unreachable_target(lab):
    report = audit_listener(f"127.0.0.1:{free_port()}", AuditOptions(config_dir=lab.pf.config_dir))
    assert report.exit_code == 69
    assert report.findings[0].check is Check.NO_SERVICE


@pytest.fixture
def tor_dir():
    path = public_tempdir("og-audit-tor-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _torrc(tor: Path, port_lines: str) -> Path:
    """torrc -> %include torrc.d/ -> 50-mail.conf with a HiddenServiceDir whose hostname file exists."""
    (tor / "hs").mkdir()
    onion = other_onion()
    (tor / "hs" / "hostname").write_text(onion + "\n")
    (tor / "torrc.d").mkdir()
    (tor / "torrc.d" / "50-mail.conf").write_text(f"HiddenServiceDir {tor}/hs\n{port_lines}")
    (tor / "torrc").write_text("DisableNetwork 1\n%include " + str(tor / "torrc.d") + "\n")
    return tor / "torrc"


def test_cli_follows_torrc_include_to_the_hardened_listener(lab, tor_dir):
    torrc = _torrc(tor_dir, f"HiddenServicePort 25 127.0.0.1:{lab.ports['hardened']}\n"
                        "HiddenServicePort 80 127.0.0.1:9\n")        # not Postfix: skipped
    done = subprocess.run([*CLI, "--torrc", str(torrc), "--postfix-config-dir", str(lab.pf.config_dir),
                           "--test-domain", TEST_DOMAIN, "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(done.stdout)
    assert document["exit_code"] == 0
    [report] = document["reports"]
    assert report["listener"]["virtual_port"] == 25
    assert report["listener"]["onion"] == other_onion()
    assert "50-mail.conf" in report["listener"]["source"]
    assert report["effective_policy"]["smtpd_relay_restrictions"]["value"] == "reject_unauth_destination"
    names = {p["name"] for p in report["probes"]}
    assert {"own_onion_sender", "percent_hack_own_onion"} <= names
    probe = next(p for p in report["probes"] if p["name"] == "third_party_sender")
    assert (probe["code"], probe["enhanced_code"], probe["verdict"]) == (554, "5.7.1", "denied")


def test_cli_exit_code_is_the_worst_listener(lab, tor_dir):
    torrc = _torrc(tor_dir, f"HiddenServicePort 25 127.0.0.1:{lab.ports['hardened']}\n"
                        f"HiddenServicePort 26 127.0.0.1:{lab.pf.smtp_port}\n")
    done = subprocess.run([*CLI, "--torrc", str(torrc), "--postfix-config-dir", str(lab.pf.config_dir),
                           "--test-domain", TEST_DOMAIN], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "OPEN_RELAY (exit 1)" in done.stdout and "SAFE (exit 0)" in done.stdout


def test_unix_socket_target_counts_as_loopback(lab, tor_dir):
    socket_path = lab.pf.root / "queue" / "private" / "onionsock"
    torrc = _torrc(tor_dir, f"HiddenServicePort 25 unix:{socket_path}\n")
    done = subprocess.run([*CLI, "--torrc", str(torrc), "--postfix-config-dir", str(lab.pf.config_dir),
                           "--test-domain", TEST_DOMAIN, "--json"], capture_output=True, text=True, timeout=60)
    [report] = json.loads(done.stdout)["reports"]
    assert done.returncode == 1, report["reasons"]
    assert report["target"] == f"unix:{socket_path}"
    assert report["listener"]["service"] == "onionsock/unix"
    assert report["client_address"] == "127.0.0.1 (unix socket)"
    assert "mynetworks_loopback" in {f["check"] for f in report["findings"] if f["severity"] == "critical"}
    assert "onionsock/smtpd" in lab.pf.log_text()
    assert_never_data_never_queued(lab.pf)


@pytest.mark.parametrize("args, code", [
    (["--listener", "127.0.0.1"], 64),                          # no port
    (["--listener", "127.0.0.1:1", "--torrc", "/x"], 64),        # both
    (["--torrc", "/nonexistent/torrc"], 64),
])
def test_cli_usage_errors(lab, args, code):
    done = subprocess.run([*CLI, "--postfix-config-dir", str(lab.pf.config_dir), *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stdout + done.stderr


@pytest.mark.parametrize("listener, code", [("open", 2), ("hardened", 3)])
def test_cli_static_only_is_risky_or_inconclusive_never_safe(lab, listener, code):
    port = lab.pf.smtp_port if listener == "open" else lab.ports[listener]
    before = lab.pf.log_text().count("connect from")
    done = subprocess.run([*CLI, "--postfix-config-dir", str(lab.pf.config_dir), "--static-only", "--json",
                           "--listener", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stdout + done.stderr
    [report] = json.loads(done.stdout)["reports"]
    assert report["probed"] is False and report["probes"] == []
    assert lab.pf.log_text().count("connect from") == before          # no connection was made


def test_cli_unreachable_listener_exits_69(lab):
    done = subprocess.run([*CLI, "--postfix-config-dir", str(lab.pf.config_dir),
                           "--listener", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 69, done.stdout + done.stderr


@pytest.fixture(scope="module", params=["onion", ".onion"])
def onion_relay_domains(request):
    """A separate instance whose main.cf has relay_domains = onion or .onion (relay_domains is read by
    trivial-rewrite, so it must be in main.cf, not a listener -o)."""
    require("postfix")
    port = free_port()
    pf = new_instance("og-audit-rd-", hostname="rd.lab.test", main_extra={"relay_domains": request.param,
                                                                          **NO_FLOW_DELAY},
                      master_extra=f"127.0.0.1:{port} inet n - n - - smtpd\n  {HARDENED}\n").start()
    wait_for(lambda: port_accepts(port), 10, "hardened listener", lambda: tail(pf.maillog))
    yield request.param, pf, port
    pf.stop()
    shutil.rmtree(pf.root, ignore_errors=True)


def test_relay_domains_onion_is_critical(onion_relay_domains):
    """``onion`` relays to every onion service (exit 1). ``.onion`` matches nothing while
    parent_domain_matches_subdomains lists relay_domains (the default), so it is risky, not open (exit 2)."""
    value, pf, port = onion_relay_domains
    report = audit_listener(f"127.0.0.1:{port}", AuditOptions(config_dir=pf.config_dir, test_domain=TEST_DOMAIN))
    assert Check.RELAY_DOMAINS_ONION in {f.check for f in report.critical}
    if value == "onion":
        assert report.exit_code == 1
        assert [p.spec.name for p in report.accepted] == ["other_onion"]
    else:
        assert report.exit_code == 2, report.reasons
        assert not report.accepted
    assert_never_data_never_queued(pf)


# --- DNS-dependent restrictions: Postfix and dnsmasq in a private net+mount namespace ----------------

DNS_LISTENERS = {
    "mx_backup": ("-o syslog_name=postfix/mxbackup -o mynetworks= "
                  "-o smtpd_relay_restrictions=permit_mx_backup,reject_unauth_destination"),
    "unknown_domain": ("-o syslog_name=postfix/unknown -o mynetworks= "
                       "-o smtpd_relay_restrictions=reject_unknown_recipient_domain,reject_unauth_destination"),
}


@pytest.fixture(scope="module")
def dns_lab():
    require("postfix", "dnsmasq", "unshare", "nsenter")
    root = public_tempdir("og-audit-ns-")
    ports = {name: free_port() for name in DNS_LISTENERS}
    extra = "".join(f"127.0.0.1:{ports[n]} inet n - n - - smtpd\n  {o}\n" for n, o in DNS_LISTENERS.items())
    pf = PostfixInstance(root=root, hostname="ns.lab.test", master_extra=extra).write()
    pf.postfix("check")
    ns = Namespace(root).start()
    try:
        started = ns.run(["postfix", "-c", str(pf.config_dir), "start"])
        assert started.returncode == 0, started.stderr
        for port in ports.values():
            wait_for(lambda: ns.port_accepts(port), 15, f"listener {port} in the namespace",
                     lambda: tail(pf.maillog))
        yield pf, ns, ports
    finally:
        ns.run(["postfix", "-c", str(pf.config_dir), "stop"])
        ns.stop()
        shutil.rmtree(root, ignore_errors=True)


def _audit_in_namespace(dns_lab, name: str) -> dict:
    pf, ns, ports = dns_lab
    done = ns.run([*CLI, "--listener", f"127.0.0.1:{ports[name]}", "--postfix-config-dir", str(pf.config_dir),
                   "--test-domain", TEST_DOMAIN, "--json"])
    document = json.loads(done.stdout or "{}")
    assert document.get("exit_code") == done.returncode, done.stderr
    return document["reports"][0]


def test_permit_mx_backup_is_risky_not_exploitable_now(dns_lab):
    report = _audit_in_namespace(dns_lab, "mx_backup")
    assert report["exit_code"] == 2, report["reasons"]
    finding = next(f for f in report["findings"] if f["check"] == "permit_mx_backup")
    assert finding["severity"] == "critical"
    assert not [p for p in report["probes"] if p["verdict"] == "accepted"]
    # smtpd really asked the namespace's DNS for the test domain's MX (and got NXDOMAIN)
    assert f"query[MX] {TEST_DOMAIN}" in (dns_lab[1].workdir / "dnsmasq.log").read_text()
    assert_never_data_never_queued(dns_lab[0])


def test_unresolvable_test_domain_is_inconclusive_never_denied(dns_lab):
    report = _audit_in_namespace(dns_lab, "unknown_domain")
    probe = next(p for p in report["probes"] if p["name"] == "third_party_sender")
    assert probe["enhanced_code"] in ("4.1.2", "5.1.2"), probe
    assert probe["verdict"] == "inconclusive"
    assert report["exit_code"] == 3
    assert_never_data_never_queued(dns_lab[0])
