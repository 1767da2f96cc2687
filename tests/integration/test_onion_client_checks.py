"""main.cf's client-address checks against onion clients, on a real Postfix with its own DNS.

Tor's PROXY header presents each onion client as a per-circuit ``fc00:dead:beef:4dad::<circuit>``
address: no reverse DNS, never on a DNS list. A listener that inherits main.cf's
``reject_unknown_reverse_client_hostname`` defers every onion delivery; setup's listener leaves such
checks out (:func:`onion_gateway.setup.onionpath.listener_client_checks`) and looks no name up
(``smtpd_peername_lookup = no``), while the circuit address is still logged and in Received:.

The instance runs in a private network namespace (tests/support/netns.py) whose dnsmasq answers
NXDOMAIN for ip6.arpa and the DNS list zone, so nothing reaches the system resolver; the clients (swaks,
with a PROXY v1 header as Tor sends it) run inside too. Only own-domain mail is sent, delivered locally.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from onion_gateway.render import MasterCf, render
from onion_gateway.setup.onionpath import listener_client_checks
from onion_gateway.setup.plan import master_entries
from tests.conftest import require
from tests.support.netns import Namespace
from tests.support.postfix import PostfixInstance
from tests.support.procs import free_port, public_tempdir, tail, wait_for

pytestmark = pytest.mark.integration

RBL_ZONE = "zen.example.test"            # inside dnsmasq's NXDOMAIN zone "test"
MAIN_CF = {
    # the shape of many anti-spam guides (Postfix SMTPD_ACCESS_README, workaround.org's ISPmail guide)
    # (the DNS list first: a listener that inherits both asks it, then defers)
    "smtpd_client_restrictions": f"permit_mynetworks, reject_rbl_client {RBL_ZONE}, "
                                 "reject_unknown_reverse_client_hostname",
    "smtpd_helo_required": "yes",
    "smtpd_helo_restrictions": "permit_mynetworks, reject_invalid_helo_hostname, reject_unknown_client_hostname",
}


def circuit(n: int) -> str:
    """The address Tor's PROXY header gives circuit *n* (HiddenServiceExportCircuitID haproxy)."""
    return f"fc00:dead:beef:4dad::{n:x}"


def reverse_name(address: str) -> str:
    """The ip6.arpa name of an IPv6 *address* (RFC 3596), as smtpd's PTR query and a DNSBL query use it."""
    import ipaddress

    return ipaddress.ip_address(address).reverse_pointer.removesuffix(".ip6.arpa")


def listener_entry(port: int, client_checks: tuple[tuple[str, str], ...]) -> str:
    """setup's rendered PROXY listener on 127.0.0.1:*port*, as ``postconf -M`` takes it."""
    text = render(MasterCf(transport="smtptor", command="smtp_tor", tls_level="none", listener=f"127.0.0.1:{port}",
                           proxy_protocol=True, connection_count_limit=30, connection_rate_limit=3600,
                           client_checks=client_checks))
    return dict(master_entries(text))[f"127.0.0.1:{port}/inet"]


@pytest.fixture(scope="module")
def lab():
    """``(pf, ns, {"inherited": port, "setup": port})``: the listener as rendered before this fix (main.cf's
    lists inherited) and setup's, in a running instance inside the namespace."""
    require("postfix", "postconf", "dnsmasq", "unshare", "nsenter", "swaks")
    root = public_tempdir("og-clientchecks-")
    pf = PostfixInstance(root=root, hostname="mx.lab.test", main_extra=dict(MAIN_CF)).write()
    ports = {"inherited": free_port(), "setup": free_port()}
    overrides, _notes = listener_client_checks(pf.config_dir)
    for name, checks in (("inherited", ()), ("setup", overrides)):
        entry = listener_entry(ports[name], checks).replace("syslog_name=postfix/onion", f"syslog_name=postfix/{name}")
        pf.postconf("-M", f"127.0.0.1:{ports[name]}/inet={entry}")
    pf.postfix("check")
    ns = Namespace(root, nxdomain_zones=["example", "onion", "test", "invalid", "ip6.arpa"]).start()
    try:
        started = ns.run(["postfix", "-c", str(pf.config_dir), "start"])
        assert started.returncode == 0, started.stderr
        for port in ports.values():
            wait_for(lambda: ns.port_accepts(port), 15, f"listener {port} in the namespace", lambda: tail(pf.maillog))
        yield pf, ns, ports
    finally:
        ns.run(["postfix", "-c", str(pf.config_dir), "stop"])
        ns.stop()
        shutil.rmtree(root, ignore_errors=True)


def onion_client(lab, listener: str, n: int, *, data: bool = False) -> str:
    """swaks inside the namespace as onion client *n* (PROXY v1 header from its circuit address) to an
    own-domain recipient; stops after RCPT unless *data*. :returns: swaks' transcript."""
    _pf, ns, ports = lab
    args = ["swaks", "--server", f"127.0.0.1:{ports[listener]}", "--to", "rcpt@lab.test",
            "--from", "sender@sender.example", "--helo", "client.example", "--timeout", "30",
            "--proxy-version", "1", "--proxy-family", "TCP6", "--proxy-source", circuit(n),
            "--proxy-source-port", "12345", "--proxy-dest", "::1", "--proxy-dest-port", "25",
            "--header", f"Subject: onion client {n}"]
    if not data:
        args += ["--quit-after", "RCPT"]
    return ns.run(args).stdout


def dns_log(lab) -> str:
    return (lab[1].workdir / "dnsmasq.log").read_text(errors="replace")


def test_an_inherited_reverse_dns_check_defers_every_onion_client(lab):
    """The listener with main.cf's lists (as before setup left them out, or hand-made): RCPT to our own
    domain gets 450, and smtpd asked the DNS list about the circuit address."""
    transcript = onion_client(lab, "inherited", 1)
    assert "<** 450 4.7.1 Client host rejected: cannot find your reverse hostname, [fc00:dead:beef:4dad::1]" \
        in transcript, transcript
    wait_for(lambda: f"query[A] {reverse_name(circuit(1))}.{RBL_ZONE}" in dns_log(lab), 10, "the DNSBL query",
             lambda: dns_log(lab)[-2000:])


def test_setups_listener_takes_onion_mail_and_keeps_the_circuit_address(lab):
    """setup's listener accepts the message; the circuit address is in the log and in Received:."""
    pf = lab[0]
    transcript = onion_client(lab, "setup", 2, data=True)
    assert "<-  250 2.1.5 Ok" in transcript and "<** " not in transcript, transcript
    assert f"connect from unknown[{circuit(2)}]" in pf.log_text()

    def delivered() -> list[Path]:
        inbox = pf.mailbox / "new"
        return [p for p in inbox.iterdir() if "onion client 2" in p.read_text(errors="replace")] \
            if inbox.is_dir() else []

    wait_for(lambda: bool(delivered()), 30, "delivery to the own domain", lambda: tail(pf.maillog))
    message = delivered()[0].read_text(errors="replace")
    assert f"Received: from client.example (unknown [IPv6:{circuit(2)}])" in message, message


def test_setups_listener_sends_no_dns_query_about_a_circuit_address(lab):
    """Neither a PTR query (``smtpd_peername_lookup = no``) nor a DNS list query for its clients; the
    HELO check main.cf's list keeps still applies."""
    transcript = onion_client(lab, "setup", 3)
    assert "<-  250 2.1.5 Ok" in transcript, transcript
    onion_client(lab, "inherited", 4)                   # a query that is logged after ours, if any were
    wait_for(lambda: reverse_name(circuit(4)) in dns_log(lab), 10, "the inherited listener's DNSBL query",
             lambda: dns_log(lab)[-2000:])
    log = dns_log(lab)
    for n in (2, 3):
        assert reverse_name(circuit(n)) not in log, log[-2000:]


def test_the_helo_checks_main_cf_keeps_still_apply_on_setups_listener(lab):
    """Only the client-address checks are left out: reject_invalid_helo_hostname still refuses."""
    _pf, ns, ports = lab
    done = ns.run(["swaks", "--server", f"127.0.0.1:{ports['setup']}", "--to", "rcpt@lab.test",
                   "--from", "sender@sender.example", "--helo", "bad..helo", "--quit-after", "RCPT",
                   "--proxy-version", "1", "--proxy-family", "TCP6", "--proxy-source", circuit(5),
                   "--proxy-source-port", "12345", "--proxy-dest", "::1", "--proxy-dest-port", "25"])
    assert "<** 501 5.5.2 <bad..helo>: Helo command rejected: Invalid name" in done.stdout, done.stdout
