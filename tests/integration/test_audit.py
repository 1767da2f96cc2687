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

from onion_gateway.audit import AuditOptions, ClientCertificate, audit_listener
from onion_gateway.audit.policy import Check, Severity
from onion_gateway.audit.probe import Verdict, other_onion
from tests.conftest import require
from tests.support.netns import Namespace
from tests.support.postfix import PostfixInstance, new_instance
from tests.support.procs import free_port, port_accepts, public_tempdir, tail, wait_for
from tests.support.tlsca import make_test_ca
from tests.support.tor import TorProcess

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
    (tor / "hs").mkdir(mode=0o700)                   # as Tor demands, so that tor --dump-config answers
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
    assert report["listener"]["discovered_by"] == "tor --dump-config"
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


@pytest.fixture
def running_tor(lab, tor_dir):
    """A real tor (DisableNetwork 1) whose onion service leads to the hardened listener and a web port."""
    require("tor")
    proc = TorProcess(tor_dir / "tor").write()
    hs = tor_dir / "hs"
    hs.mkdir(mode=0o700)
    with proc.torrc.open("a") as torrc:
        torrc.write(f"HiddenServiceDir {hs}\nHiddenServicePort 25 127.0.0.1:{lab.ports['hardened']}\n"
                    "HiddenServicePort 80 127.0.0.1:9\n")
    proc.start()
    wait_for(lambda: (hs / "hostname").exists(), 15, "the onion service's hostname file", lambda: tail(proc.log))
    yield proc, (hs / "hostname").read_text().strip()
    proc.stop()


def test_cli_asks_a_running_tor_for_its_onion_services(lab, running_tor):
    proc, onion = running_tor
    done = subprocess.run([*CLI, "--tor-control", proc.control, "--postfix-config-dir", str(lab.pf.config_dir),
                           "--test-domain", TEST_DOMAIN, "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    [report] = json.loads(done.stdout)["reports"]                  # port 80 is no Postfix: skipped
    assert report["listener"]["discovered_by"] == "GETCONF HiddenServiceOptions"
    assert report["listener"]["onion"] == onion
    assert report["target"] == f"127.0.0.1:{lab.ports['hardened']}"


@pytest.mark.parametrize("args, code", [
    (["--listener", "127.0.0.1"], 64),                          # no port
    (["--listener", "127.0.0.1:1", "--torrc", "/x"], 64),        # both
    (["--torrc", "/nonexistent/torrc"], 64),
    (["--tor-control", f"127.0.0.1:{free_port()}"], 64),            # no Tor there
    (["--tor-control", "127.0.0.1:1", "--listener", "127.0.0.1:2"], 64),
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


# --- issue 13: no open relay missed, no false alarm --------------------------------------------------
#
# One more instance (inet_protocols = all, so smtpd accepts Tor's IPv6 PROXY header), one listener per
# case. Every case is also tried by swaks, which stops after RCPT: the listener really relays, or not.

def _issue13_listeners(etc: Path, tls: Path) -> dict[str, str]:
    tls_opts = (f"-o smtpd_tls_security_level=may -o smtpd_tls_cert_file={tls}/server.pem "
                f"-o smtpd_tls_key_file={tls}/server.key -o smtpd_tls_CAfile={tls}/ca.pem "
                "-o smtpd_tls_ask_ccert=yes -o mynetworks=")
    return {
        "tls_all": (f"-o syslog_name=postfix/tlsall {tls_opts} "
                    "-o smtpd_relay_restrictions=permit_tls_all_clientcerts,reject_unauth_destination"),
        "tls_listed": (f"-o syslog_name=postfix/tlslisted {tls_opts} -o relay_clientcerts=texthash:{etc}/relay_certs "
                       "-o smtpd_relay_restrictions=permit_tls_clientcerts,reject_unauth_destination"),
        "client_regexp": ("-o syslog_name=postfix/cregexp -o mynetworks= "
                          f"-o smtpd_relay_restrictions=check_client_access,regexp:{etc}/clients.regexp,"
                          "reject_unauth_destination"),
        "client_pcre": ("-o syslog_name=postfix/cpcre -o mynetworks= "
                        f"-o smtpd_relay_restrictions=check_client_access,pcre:{etc}/clients.pcre,"
                        "reject_unauth_destination"),
        "client_class": ("-o syslog_name=postfix/cclass -o mynetworks= -o smtpd_restriction_classes=trusted "
                         "-o trusted=permit "
                         f"-o smtpd_relay_restrictions=check_client_access,texthash:{etc}/clients.class,"
                         "reject_unauth_destination"),
        "client_list": ("-o syslog_name=postfix/clist -o mynetworks= "
                        f"-o smtpd_relay_restrictions=check_client_access,texthash:{etc}/clients.list,"
                        "reject_unauth_destination"),
        "sender_partner": ("-o syslog_name=postfix/partner -o mynetworks= "
                           f"-o smtpd_relay_restrictions=check_sender_access,texthash:{etc}/partner_senders,"
                           "reject_unauth_destination"),
        # main.cf's mynetworks = 127.0.0.0/8 stays; the client table refuses loopback first
        "client_reject": ("-o syslog_name=postfix/creject "
                          "-o smtpd_relay_restrictions=permit_auth_destination,"
                          f"check_client_access,cidr:{etc}/tor_clients.cidr,permit_mynetworks,"
                          "reject_unauth_destination"),
        "helo_localhost": f"{HARDENED.replace('postfix/onion', 'postfix/helo')} "
                          f"-o smtpd_helo_restrictions=check_helo_access,texthash:{etc}/helo_access",
        # PROXY listeners look no name up (as setup's does): smtpd would ask the system resolver for the
        # PTR of the forged fc00:dead:beef:4dad:: addresses, and tests ask only DNS servers on loopback
        "proxy": (f"{HARDENED.replace('postfix/onion', 'postfix/proxy')} -o smtpd_upstream_proxy_protocol=haproxy "
                  "-o smtpd_peername_lookup=no"),
        "proxy_trusting": ("-o syslog_name=postfix/proxytrust -o smtpd_upstream_proxy_protocol=haproxy "
                           "-o smtpd_peername_lookup=no "
                           "-o mynetworks=127.0.0.0/8 "
                           "-o smtpd_relay_restrictions=permit_mynetworks,reject_unauth_destination"),
    }


TABLES = {
    "clients.regexp": "/^127\\./ OK\n",
    "clients.pcre": "/^localhost$/ OK\n",
    "clients.class": "127.0.0.1 trusted\n",
    "clients.list": "127.0.0.1 permit_auth_destination, permit\n",
    "partner_senders": "partner.example OK\n",
    "tor_clients.cidr": "127.0.0.0/8 REJECT onion clients may not relay\n",
    "helo_access": "localhost REJECT\n",
}


class Lab13(Lab):
    """The issue-13 instance: ``ports`` per listener, ``shared`` the port two services share, ``ca`` the CA."""

    def __init__(self, pf, ports, shared, ca):
        super().__init__(pf, ports)
        self.shared = shared
        self.ca = ca

    def audit(self, name: str, **options):
        port = self.shared if name == "shared" else self.ports[name]
        options.setdefault("test_domain", TEST_DOMAIN)
        return audit_listener(f"127.0.0.1:{port}", AuditOptions(config_dir=self.pf.config_dir, **options))

    def swaks(self, name: str, *args: str, sender: str = "audit@relay-target.example",
              helo: str = "client.lab.test") -> subprocess.CompletedProcess:
        """One swaks session that stops after RCPT TO a foreign recipient (never DATA)."""
        port = self.shared if name == "shared" else self.ports[name]
        return subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--from", sender,
                               "--to", f"relay-test@{TEST_DOMAIN}", "--helo", helo, "--quit-after", "RCPT",
                               "--timeout", "20", *args], capture_output=True, text=True, timeout=60)


def relayed(done: subprocess.CompletedProcess) -> bool:
    """swaks got a 2xx reply to RCPT TO the foreign recipient (exit 0 after --quit-after RCPT)."""
    assert "RCPT TO:<relay-test@" in done.stdout, done.stdout + done.stderr
    assert not re.search(r"^ ?[~-]> (DATA|BDAT)", done.stdout, re.M)
    return done.returncode == 0


@pytest.fixture(scope="module")
def lab13():
    require("postfix", "postconf", "postmap", "postqueue", "swaks", "openssl")
    root = public_tempdir("og-audit13-")
    tls = root / "tls"
    tls.mkdir()
    ca = make_test_ca(tls)
    listeners = _issue13_listeners(root / "etc", tls)
    ports = {name: free_port() for name in [*listeners, "proxy_postscreen"]}
    shared = free_port()
    extra = "".join(f"127.0.0.1:{ports[n]} inet n - n - - smtpd\n  {o}\n" for n, o in listeners.items())
    # the same port twice: hardened on 127.0.0.1, and host-less (inet_interfaces) with main.cf's open policy
    extra += (f"127.0.0.1:{shared} inet n - n - - smtpd\n  {HARDENED.replace('postfix/onion', 'postfix/shard')}\n"
              f"{shared} inet n - n - - smtpd\n  -o syslog_name=postfix/hostless\n"
              # postscreen receives Tor's PROXY header and hands the connection to a hardened smtpd
              f"127.0.0.1:{ports['proxy_postscreen']} inet n - n - 1 postscreen\n"
              "  -o postscreen_upstream_proxy_protocol=haproxy -o postscreen_greet_wait=1s "
              "-o smtpd_service_name=smtpd13\n"
              f"smtpd13 pass - - n - - smtpd\n  {HARDENED.replace('postfix/onion', 'postfix/pspass')}"
              " -o smtpd_peername_lookup=no\n"
              "tlsproxy unix - - n - 0 tlsproxy\ndnsblog unix - - n - 0 dnsblog\n"
              "tlsmgr unix - - n 1000? 1 tlsmgr\n")
    pf = PostfixInstance(root=root, hostname="i13.lab.test", master_extra=extra,
                         main_extra={**NO_FLOW_DELAY, "inet_protocols": "all"})
    pf.write()
    for name, text in TABLES.items():
        (pf.config_dir / name).write_text(text)
    (pf.config_dir / "relay_certs").write_text(f"{ca.fingerprint('client')} audit-client\n")
    pf.start()
    for port in [*ports.values(), shared]:
        wait_for(lambda: port_accepts(port), 10, f"listener {port}", lambda: tail(pf.maillog))
    yield Lab13(pf, ports, shared, ca)
    pf.stop()
    shutil.rmtree(root, ignore_errors=True)


def _client_cert(lab13) -> ClientCertificate:
    return ClientCertificate(str(lab13.ca.cert("client")), str(lab13.ca.key("client")))


@pytest.mark.parametrize("name", ["tls_all", "tls_listed"])
def test_tls_client_certificate_relay_is_flagged_and_proved(lab13, name):
    static = lab13.audit(name)
    assert static.exit_code == 2, static.reasons                   # no certificate given: never SAFE
    finding = next(f for f in static.critical if f.check is Check.TLS_CLIENTCERT)
    assert "permit_tls" in finding.title and "smtpd_tls_CAfile" in finding.value
    proved = lab13.audit(name, client_cert=_client_cert(lab13))
    assert proved.exit_code == 1, proved.reasons
    assert proved.client_address == "127.0.0.1 (TLS client certificate)"
    assert "third_party_sender" in {p.spec.name for p in proved.accepted}
    assert not relayed(lab13.swaks(name, "--tls"))
    assert relayed(lab13.swaks(name, "--tls", "--tls-cert", str(lab13.ca.cert("client")),
                               "--tls-key", str(lab13.ca.key("client"))))
    assert_never_data_never_queued(lab13.pf)


def test_client_certificate_on_a_listener_without_tls_is_not_presented(lab13):
    report = lab13.audit("client_reject", client_cert=_client_cert(lab13))
    assert report.exit_code == 0, report.reasons
    assert report.client_address == "127.0.0.1"


def test_cli_presents_the_client_certificate(lab13):
    done = subprocess.run([*CLI, "--postfix-config-dir", str(lab13.pf.config_dir), "--test-domain", TEST_DOMAIN,
                           "--listener", f"127.0.0.1:{lab13.ports['tls_all']}",
                           "--client-cert", str(lab13.ca.cert("client")),
                           "--client-key", str(lab13.ca.key("client"))], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "permit_tls_all_clientcerts: any client presenting a certificate" in done.stdout


def test_two_services_on_one_port_are_both_analysed(lab13):
    report = lab13.audit("shared")
    assert report.exit_code == 1, report.reasons
    assert len(report.listener["services"]) == 2
    shared = next(f for f in report.findings if f.check is Check.SHARED_LISTENER)
    assert shared.severity is Severity.CRITICAL and "may relay" in shared.title
    mynet = next(f for f in report.critical if f.check is Check.MYNETWORKS_LOOPBACK)
    assert mynet.source.startswith(f"{lab13.shared}/inet: ")       # the host-less service is the open one
    assert report.accepted
    sessions = [relayed(lab13.swaks("shared")) for _ in range(16)]
    assert True in sessions and False in sessions                   # swaks meets both services
    assert_never_data_never_queued(lab13.pf)


@pytest.mark.parametrize("name, answer", [
    ("client_regexp", "OK"), ("client_pcre", "OK"), ("client_class", "trusted"),
    ("client_list", "permit_auth_destination, permit"),
])
def test_client_table_patterns_and_restriction_answers_are_resolved(lab13, name, answer):
    done = subprocess.run([*CLI, "--postfix-config-dir", str(lab13.pf.config_dir), "--static-only", "--json",
                           "--listener", f"127.0.0.1:{lab13.ports[name]}"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr          # a finding, not "cannot tell"
    [static] = json.loads(done.stdout)["reports"]
    finding = next(f for f in static["findings"] if f["check"] == "access_map_ok")
    assert finding["severity"] == "critical" and answer in finding["value"]
    report = lab13.audit(name)
    assert report.exit_code == 1, report.reasons
    assert relayed(lab13.swaks(name))
    assert_never_data_never_queued(lab13.pf)


def test_sender_table_keys_are_probed(lab13):
    report = lab13.audit("sender_partner")
    assert report.exit_code == 1, report.reasons
    [probe] = report.accepted
    assert (probe.spec.name, probe.spec.mail_from) == ("table_sender_1", "<audit@partner.example>")
    finding = next(f for f in report.critical if f.check is Check.ACCESS_MAP_OK)
    assert "partner.example OK" in finding.value
    assert relayed(lab13.swaks("sender_partner", sender="someone@partner.example"))
    assert not relayed(lab13.swaks("sender_partner"))
    assert_never_data_never_queued(lab13.pf)


def test_client_table_reject_ahead_of_permit_mynetworks_is_safe(lab13):
    report = lab13.audit("client_reject")
    assert report.exit_code == 0, (report.reasons, report.findings)
    assert not report.findings
    assert report.control_passed
    probe = next(p for p in report.probes if p.spec.name == "third_party_sender")
    assert "onion clients may not relay" in probe.reply.text
    done = lab13.swaks("client_reject")
    assert not relayed(done) and "onion clients may not relay" in done.stdout
    assert_never_data_never_queued(lab13.pf)


def test_helo_check_rejecting_localhost_is_probed_with_a_second_helo(lab13):
    report = lab13.audit("helo_localhost")
    assert report.exit_code == 0, report.reasons
    assert report.listener["helo"] == f"probe.{TEST_DOMAIN} (HELO localhost was refused)"
    probe = next(p for p in report.probes if p.spec.name == "third_party_sender")
    assert probe.verdict is Verdict.DENIED and "Relay access denied" in probe.reply.text
    assert "Helo command rejected" in lab13.swaks("helo_localhost", helo="localhost").stdout
    done = lab13.swaks("helo_localhost", helo=f"probe.{TEST_DOMAIN}")
    assert not relayed(done) and "Relay access denied" in done.stdout
    assert_never_data_never_queued(lab13.pf)


PROXY_SWAKS = ["--proxy-version", "1", "--proxy-family", "TCP6", "--proxy-source", "fc00:dead:beef:4dad::1",
               "--proxy-source-port", "12345", "--proxy-dest", "::1", "--proxy-dest-port", "25"]


@pytest.mark.parametrize("name", ["proxy", "proxy_postscreen"])
def test_proxy_protocol_listener_is_probed_as_tor_presents_clients(lab13, name):
    report = lab13.audit(name, timeout_seconds=10)
    assert report.exit_code == 0, report.reasons
    assert report.client_address == "fc00:dead:beef:4dad::1 (PROXY header)"
    assert report.policy.client_address == "fc00:dead:beef:4dad::1"
    finding = next(f for f in report.findings if f.check is Check.PROXY_FORGEABLE)
    assert finding.severity is Severity.INFO and "mynetworks is empty" in finding.title
    assert "connect from unknown[fc00:dead:beef:4dad::1]" in lab13.pf.log_text()
    if name == "proxy_postscreen":           # postscreen takes the header and hands the client to smtpd13
        assert report.listener["via"] == "postscreen -> smtpd13/pass"
        assert "postscreen_upstream_proxy_protocol" in report.policy.source("smtpd_upstream_proxy_protocol")
    done = lab13.swaks(name, *PROXY_SWAKS)
    assert not relayed(done) and "Relay access denied" in done.stdout
    assert_never_data_never_queued(lab13.pf)


def test_proxy_header_forged_by_a_local_process_is_an_open_relay(lab13):
    report = lab13.audit("proxy_trusting", timeout_seconds=10)
    assert report.exit_code == 1, report.reasons
    finding = next(f for f in report.critical if f.check is Check.PROXY_FORGEABLE)
    assert "mynetworks = 127.0.0.0/8" in finding.value
    assert [p.spec.name for p in report.accepted] == ["proxy_forged_trusted"]     # Tor's own address is refused
    assert not relayed(lab13.swaks("proxy_trusting", *PROXY_SWAKS))
    forged = ["--proxy-version", "1", "--proxy-family", "TCP4", "--proxy-source", "127.0.0.1",
              "--proxy-source-port", "12345", "--proxy-dest", "127.0.0.1", "--proxy-dest-port", "25"]
    assert relayed(lab13.swaks("proxy_trusting", *forged))
    assert_never_data_never_queued(lab13.pf)
