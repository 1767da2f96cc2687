"""The gateway's lifecycle on Postfix configurations postmasters run, not only the ones we wrote.

Each test lays one widespread shape over Debian's stock "Internet Site" main.cf/master.cf
(tests/support/realconfigs.py; the master.cf/main.cf text with its source is in
tests/data/real-configs/), starts the private instance, and drives setup -> audit-open-relay ->
status -> setup --rollback: setup succeeds (or refuses with a clear message), the audit's verdict is
right, status is sane and rollback restores every file. tor runs with ``DisableNetwork 1``; the audit
probes talk to loopback only and never send DATA.
"""

from __future__ import annotations

import json
import smtplib
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from onion_gateway.cli import main
from tests.conftest import require
from tests.support.gateway import Gateway, age_config, changed_paths, new_gateway, same_content, stock_debian
from tests.support.procs import free_port
from tests.support.realconfigs import add_main, add_master, debian_with_port25, start_postfix

pytestmark = pytest.mark.integration

# answered NXDOMAIN by the session DNS: the daemon's lookups for it end quickly (tests/integration/conftest.py)
TEST_DOMAIN = "nosuch.example.test"


@pytest.fixture
def real_gateway(serve):
    """A lab gateway whose instance is rewritten by the test before it starts."""
    require("postfix", "postconf", "postalias", "tor", "torsocks")
    gw = new_gateway(serve.socketmap)
    yield gw
    gw.close()


def audit(gw: Gateway, *args: str) -> tuple[int, list[dict], str]:
    """``audit-open-relay --json`` against *gw*'s instance: ``(exit code, reports, output)``."""
    result = CliRunner().invoke(main, ["audit-open-relay", "--test-domain", TEST_DOMAIN, "--timeout", "10",
                                       "--postfix-config-dir", str(gw.pf.config_dir), "--json", *args],
                                catch_exceptions=False)
    return result.exit_code, json.loads(result.output)["reports"], result.output


def findings(report: dict, check: str) -> list[dict]:
    """The findings of one *check* (``findings[].check``) in a JSON report."""
    return [f for f in report["findings"] if f["check"] == check]


@dataclass
class Lifecycle:
    """What setup, the audit of the torrc, status and rollback said."""

    setup_output: str
    audit_code: int
    reports: list[dict]
    audit_output: str
    status_lines: list[str]
    status_output: str


def lifecycle(gw: Gateway, dns_server, between=None) -> Lifecycle:
    """setup --yes -> audit-open-relay --torrc -> status -> (*between*(gw)) -> setup --rollback --yes;
    asserts that rollback restores every file setup could touch."""
    before = gw.snapshot()
    setup_output = gw.setup("--yes").output
    code, reports, audit_output = audit(gw, "--torrc", str(gw.tor.torrc))
    status = CliRunner().invoke(main, ["status", "--state-dir", str(gw.state_dir), "--dns-server",
                                       dns_server.address, "--timeout", "3", "--test-domain", TEST_DOMAIN])
    if between is not None:
        between(gw)
    gw.setup("--rollback", "--yes")
    assert same_content(gw.snapshot(), before), changed_paths(gw.snapshot(), before)
    return Lifecycle(setup_output, code, reports, audit_output, status.output.splitlines(), status.output)


def assert_sane(run: Lifecycle, gw: Gateway) -> None:
    """The audit found exactly setup's listener safe; status checked it and found no open relay."""
    assert run.audit_code == 0, run.audit_output
    assert [r["target"] for r in run.reports] == [gw.listener], run.audit_output
    assert not [f for f in run.reports[0]["findings"] if f["severity"] == "critical"], run.audit_output
    relay = [line for line in run.status_lines if " relay_audit " in line]
    assert relay and all(line.split()[0] == "ok" and gw.listener in line for line in relay), run.status_output
    assert any(line.split()[:2] == ["ok", "transport_maps"] for line in run.status_lines), run.status_output


def listener_option(gw: Gateway, name: str) -> str:
    """The listener's own ``-o name=value`` in master.cf (``""`` if it sets none)."""
    out = gw.pf.postconf("-P", f"{gw.listener}/inet/{name}").strip()
    return out.split("=", 1)[1].strip() if out else ""


# --- 1. postscreen on port 25, milters on main.cf and on the "smtpd pass" service ---------------------------

RSPAMD = "inet:127.0.0.1:11332"        # rspamd's proxy worker in milter mode (rspamd.com/doc/integration.html)
OPENDKIM = "inet:127.0.0.1:8891"       # Debian's opendkim package, as its README.Debian suggests for postfix


def postscreen_gateway(gw: Gateway, pass_options: str = "") -> None:
    """Debian + postscreen on port 25 + the rspamd milter on main.cf; *pass_options*: ``-o`` lines of
    the ``smtpd pass`` service."""
    host = debian_with_port25(gw, "postscreen")
    add_master(gw, "postscreen.master.cf", HOST=host, PASS_OPTIONS=pass_options)
    add_main(gw, "postscreen.main.cf", MILTER_PORT=RSPAMD.rpartition(":")[2])


def test_postscreen_with_milters_on_main_cf_setup_audit_status_rollback(real_gateway, dns_server):
    """The listener inherits main.cf's milter like the pass smtpd: no parity finding, listener safe."""
    gw = real_gateway
    postscreen_gateway(gw)
    start_postfix(gw)
    run = lifecycle(gw, dns_server)
    assert_sane(run, gw)
    assert findings(run.reports[0], "inspection_parity") == [], run.audit_output


def test_an_onion_pointed_at_postscreen_on_port_25_is_an_open_relay(real_gateway):
    """Debian's port-25 smtpd trusts mynetworks (loopback): through postscreen, Tor's 127.0.0.1 relays."""
    gw = real_gateway
    postscreen_gateway(gw)
    start_postfix(gw)
    code, reports, out = audit(gw, "--listener", f"{gw.port25_host}:25")
    assert code == 1, out
    assert reports[0]["listener"]["via"] == "postscreen -> smtpd/pass", out
    assert "mynetworks_loopback" in {f["check"] for f in reports[0]["findings"] if f["severity"] == "critical"}


def test_postscreen_pass_service_milters_are_copied_to_the_listener(real_gateway, dns_server):
    """Milters set on ``smtpd pass`` only (where postscreen hands port-25 clients) are the port-25
    inspection: setup copies them to the listener; without them the audit names ``smtpd/pass``."""
    gw = real_gateway
    both = f"{OPENDKIM},{RSPAMD}"
    postscreen_gateway(gw, f"  -o smtpd_milters={both}")
    start_postfix(gw)

    def without_the_copy(gw: Gateway) -> None:
        assert listener_option(gw, "smtpd_milters") == both
        gw.pf.postconf("-PX", f"{gw.listener}/inet/smtpd_milters")
        code, reports, out = audit(gw, "--listener", gw.listener, "--static-only")
        parity = findings(reports[0], "inspection_parity")
        assert [f["value"] for f in parity] == [f"smtpd_milters: port 25 = {both}; onion listener = {RSPAMD}"], out
        assert parity[0]["source"] == f"master.cf {gw.listener}/inet vs smtpd/pass", out
        gw.pf.postconf("-P", f"{gw.listener}/inet/smtpd_milters={both}")

    run = lifecycle(gw, dns_server, without_the_copy)
    assert_sane(run, gw)
    assert findings(run.reports[0], "inspection_parity") == [], run.audit_output


# --- 2. submission on its own port, Dovecot SASL enabled globally in main.cf ---------------------------------

def ehlo_auth(host: str, port: int, proxy: bool = False) -> str | None:
    """The AUTH mechanisms an smtpd offers in its EHLO reply in the clear, or ``None``.

    :param proxy: send the PROXY header Tor sends first (setup's listener expects one).
    """
    from onion_gateway.address import ListenAddress
    from onion_gateway.audit.probe import ListenerSMTP, ProxyHeader

    with ListenerSMTP(ListenAddress.parse(f"{host}:{port}"), ProxyHeader() if proxy else None,
                      local_hostname="client.lab.test", timeout=15) as client:
        client.connect(host, port)
        client.ehlo()
        auth = client.esmtp_features.get("auth")
        return auth.strip() if auth is not None else None


def sasl_config(gw: Gateway, tls_auth_only: str = "") -> None:
    """Debian + submission + Dovecot SASL in main.cf (*tls_auth_only*: an extra main.cf line or "")."""
    from tests.support.tlsca import make_test_ca

    (gw.root / "tls").mkdir()
    ca = make_test_ca(gw.root / "tls", server_name="rx.lab.test")
    debian_with_port25(gw)
    add_main(gw, "sasl-submission.main.cf", CERT=str(ca.cert("server")), KEY=str(ca.key("server")),
             TLS_AUTH_ONLY=tls_auth_only)
    gw.submission_port = free_port()
    add_master(gw, "sasl-submission.master.cf", SUBMISSION_PORT=str(gw.submission_port))
    gw.tls_auth_only = bool(tls_auth_only)


@pytest.fixture(params=["", "smtpd_tls_auth_only = yes"], ids=["auth-in-clear", "tls-auth-only"])
def sasl_gateway(real_gateway, request):
    """Debian + submission + ``smtpd_sasl_auth_enable = yes`` in main.cf, with a running Dovecot auth;
    once more with ``smtpd_tls_auth_only = yes`` in main.cf too (Linode's "Configure Email with
    Postfix, Dovecot, and MySQL" sets both there): AUTH then shows only after STARTTLS.
    ``gw.tls_auth_only`` says which."""
    from tests.support.dovecot import DovecotAuth

    require("dovecot")
    gw = real_gateway
    sasl_config(gw, request.param)
    start_postfix(gw)                     # creates queue/private, where Dovecot puts its socket
    dovecot = DovecotAuth(gw.pf.root / "queue" / "private" / "auth", {"alice@own.example.test": "secret"}).start()
    yield gw
    dovecot.stop()


def test_sasl_in_main_cf_the_listener_offers_no_auth_and_port_25_still_does(sasl_gateway, dns_server):
    """Onion clients are anonymous and many (one per circuit): AUTH on the listener would be a password
    guessing oracle. setup switches it off there; the port-25 smtpd keeps it (the backend answers)."""
    gw = sasl_gateway
    # Dovecot answers (the control): AUTH in the clear, or only after STARTTLS
    assert ehlo_auth(gw.port25_host, 25) == (None if gw.tls_auth_only else "PLAIN LOGIN")

    def live_listener(gw: Gateway) -> None:
        assert listener_option(gw, "smtpd_sasl_auth_enable") == "no"
        assert ehlo_auth("127.0.0.1", gw.listener_port, proxy=True) is None

    run = lifecycle(gw, dns_server, live_listener)
    assert_sane(run, gw)
    assert findings(run.reports[0], "sasl_auth_offered") == [], run.audit_output


def test_a_listener_offering_auth_is_reported_static_and_live(sasl_gateway):
    """A listener that inherits ``smtpd_sasl_auth_enable = yes`` is a finding twice: from its effective
    setting (no connection needed) and from AUTH in its EHLO reply."""
    gw = sasl_gateway
    gw.setup("--yes")
    gw.pf.postconf("-PX", f"{gw.listener}/inet/smtpd_sasl_auth_enable")       # as a hand-made listener has it
    gw.pf.reload()
    code, reports, out = audit(gw, "--listener", gw.listener)
    sasl = findings(reports[0], "sasl_auth_offered")
    live = "AUTH PLAIN LOGIN (after STARTTLS)" if gw.tls_auth_only else "AUTH PLAIN LOGIN"
    assert sorted(f["value"] for f in sasl) == [live, "smtpd_sasl_auth_enable = yes"], out
    assert all(f["severity"] == "warning" for f in sasl), out
    assert {f["source"] for f in sasl} == {"main.cf", "EHLO reply"}, out
    assert code == 0, out                    # a warning: the relay probes are still refused
    code, reports, out = audit(gw, "--listener", gw.listener, "--static-only")
    assert [f["value"] for f in findings(reports[0], "sasl_auth_offered")] == ["smtpd_sasl_auth_enable = yes"], out


def test_with_dovecot_down_the_listener_still_receives_onion_mail(real_gateway, dns_server):
    """Every smtpd with SASL on dies at startup when the Dovecot socket is missing ("fatal: no SASL
    authentication mechanisms"); setup's listener, with SASL off, keeps receiving onion mail."""
    gw = real_gateway
    sasl_config(gw)
    start_postfix(gw)

    def port25_dies_listener_greets(gw: Gateway) -> None:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            ehlo_auth(gw.port25_host, 25)
        assert ehlo_auth("127.0.0.1", gw.listener_port, proxy=True) is None
        assert "fatal: no SASL authentication mechanisms" in gw.pf.log_text()

    run = lifecycle(gw, dns_server, port25_dies_listener_greets)
    assert_sane(run, gw)                 # the live audit's control recipient was accepted on the listener


def test_an_onion_pointed_at_submission_is_no_relay_but_offers_auth(sasl_gateway):
    """An onion for the users' submission port (as some providers publish one). It requires TLS
    (``smtpd_tls_security_level=encrypt``), so the probes STARTTLS first: every relay attempt is refused,
    the control too (``permit_sasl_authenticated, reject``: nothing without a login), so the verdict is
    inconclusive, never safe; and the AUTH it offers after STARTTLS is named."""
    gw = sasl_gateway
    code, reports, out = audit(gw, "--listener", f"127.0.0.1:{gw.submission_port}")
    assert code == 3, out
    report = reports[0]
    assert report["control"]["verdict"] == "denied", out
    verdicts = {p["name"]: p["verdict"] for p in report["probes"]}
    assert "accepted" not in verdicts.values(), out
    assert verdicts["third_party_sender"] == verdicts["percent_hack_literal"] == "denied", out      # after STARTTLS
    assert [f["value"] for f in findings(report, "sasl_auth_offered") if f["source"] == "EHLO reply"] == \
        ["AUTH PLAIN LOGIN (after STARTTLS)"], out


# --- 3. amavisd-new: content_filter on main.cf, the reinjection smtpd on 127.0.0.1:10025 --------------------

def amavis_gateway(gw: Gateway, reinject_port: int) -> str:
    """Debian + amavisd-new's README.postfix; amavisd itself is not running (no probe sends DATA, so no
    message is ever queued for it). :returns: the main.cf content_filter."""
    debian_with_port25(gw)
    add_main(gw, "amavis.main.cf", AMAVIS_PORT=str(free_port()))
    add_master(gw, "amavis.master.cf", REINJECT_PORT=str(reinject_port))
    return gw.pf.postconf("-h", "content_filter").strip()


def test_amavis_the_listener_keeps_the_content_filter_and_the_audit_ignores_10025(real_gateway, dns_server):
    """The listener inherits main.cf's content_filter (onion mail goes through amavis like the rest);
    the audit of the torrc reports setup's listener only, not the reinjection smtpd that trusts loopback."""
    gw = real_gateway
    reinject = free_port()
    content_filter = amavis_gateway(gw, reinject)
    start_postfix(gw)

    def filtered(gw: Gateway) -> None:
        assert listener_option(gw, "content_filter") == ""              # not overridden: inherited
        assert listener_option(gw, "receive_override_options") == ""
        policy = audit(gw, "--listener", gw.listener, "--static-only")[1][0]
        assert findings(policy, "inspection_parity") == []

    run = lifecycle(gw, dns_server, filtered)
    assert_sane(run, gw)
    assert content_filter.startswith("smtp-amavis:[127.0.0.1]:")
    assert f"127.0.0.1:{reinject}" not in run.audit_output
    assert gw.listener != f"127.0.0.1:{reinject}"


def test_amavis_setup_refuses_the_reinjection_port_as_its_listener(real_gateway):
    """README.postfix's own port, 10025, given as the listener: refused, nothing changed (not started)."""
    gw = real_gateway
    amavis_gateway(gw, 10025)
    before = gw.snapshot()
    result = gw.setup("--yes", "--listener", "127.0.0.1:10025", expect=1)
    assert "would share its port with the master.cf service 127.0.0.1:10025/inet (smtpd)" in result.output
    assert "nothing was changed" in result.output
    assert gw.snapshot() == before


def test_an_onion_pointed_at_the_amavis_reinjection_port_is_an_open_relay(real_gateway):
    """The reinjection smtpd permits mynetworks = 127.0.0.0/8, where every Tor client comes from."""
    gw = real_gateway
    reinject = free_port()
    amavis_gateway(gw, reinject)
    start_postfix(gw)
    torrc = gw.root / "amavis-onion.torrc"
    (gw.root / "hs").mkdir(mode=0o700)
    torrc.write_text(f"HiddenServiceDir {gw.root / 'hs'}\nHiddenServicePort 25 127.0.0.1:{reinject}\n")
    code, reports, out = audit(gw, "--torrc", str(torrc))
    assert code == 1, out
    assert [r["target"] for r in reports] == [f"127.0.0.1:{reinject}"], out
    assert reports[0]["outcome"] == "open_relay", out
    critical = {f["check"] for f in reports[0]["findings"] if f["severity"] == "critical"}
    assert "mynetworks_loopback" in critical, out
    assert gw.pf.queue_ids() == []                                # RCPT only, never DATA


# --- 4. older and terser relay policies ----------------------------------------------------------------------

def port25_audit(gw: Gateway) -> tuple[int, dict, str]:
    """The live audit of the port-25 service, as if an onion pointed there: ``(code, report, output)``."""
    code, reports, out = audit(gw, "--listener", f"{gw.port25_host}:25")
    return code, reports[0], out


def test_postfix_2x_relay_policy_in_recipient_restrictions(real_gateway, dns_server):
    """No smtpd_relay_restrictions and no compatibility_level: the port-25 smtpd relays for loopback
    (an onion pointed there is open), setup's listener overrides both lists and is safe."""
    gw = real_gateway
    debian_with_port25(gw)
    gw.pf.postconf("-X", "smtpd_relay_restrictions", "compatibility_level")
    add_main(gw, "postfix-2.x.main.cf")
    start_postfix(gw)
    code, port25, out = port25_audit(gw)
    assert code == 1, out
    assert "mynetworks_loopback" in {f["check"] for f in port25["findings"] if f["severity"] == "critical"}, out
    assert findings(port25, "empty_relay_restrictions"), out

    run = lifecycle(gw, dns_server)
    assert_sane(run, gw)
    listener = run.reports[0]
    assert findings(listener, "empty_relay_restrictions") == [], run.audit_output
    assert [f["severity"] for f in findings(listener, "compatibility_level")] == ["info"], run.audit_output


def test_mynetworks_style_host_with_mynetworks_unset(real_gateway, dns_server):
    """mynetworks derived from mynetworks_style = host still holds 127.0.0.1: the audit computes it like
    Postfix does (port 25 open for an onion), and setup's listener, with mynetworks=, is safe."""
    gw = real_gateway
    debian_with_port25(gw)
    gw.pf.postconf("-X", "mynetworks")
    add_main(gw, "mynetworks-style-host.main.cf")
    start_postfix(gw)
    code, port25, out = port25_audit(gw)
    assert code == 1, out
    assert port25["effective_policy"]["mynetworks"]["value"] == "127.0.0.1/32", out
    assert "mynetworks_loopback" in {f["check"] for f in port25["findings"] if f["severity"] == "critical"}, out

    run = lifecycle(gw, dns_server)
    assert_sane(run, gw)


# --- 5. greylisting and SPF policy services in main.cf's recipient restrictions -------------------------------

def test_policy_services_of_port_25_are_named_on_the_listener_but_do_not_fail_it(real_gateway, dns_server):
    """postgrey and policyd-spf after reject_unauth_destination: setup's listener (its own empty
    recipient list) does not ask them -- SPF would judge every onion client as loopback -- and the
    audit says so as a parity warning while the verdict stays safe and status ok."""
    gw = real_gateway
    postgrey = free_port()
    debian_with_port25(gw)
    add_main(gw, "policy-services.main.cf", POSTGREY_PORT=str(postgrey))
    add_master(gw, "policy-services.master.cf")
    start_postfix(gw)
    run = lifecycle(gw, dns_server)
    assert_sane(run, gw)
    parity = findings(run.reports[0], "inspection_parity")
    assert [f["value"] for f in parity] == [f"check_policy_service inet:127.0.0.1:{postgrey}, "
                                            "unix:private/policyd-spf"], run.audit_output
    assert parity[0]["severity"] == "warning"
    note = next(line for line in run.setup_output.splitlines() if line.startswith("note: relay audit"))
    assert "[inspection_parity: check_policy_service" in note, run.setup_output


# --- 6. Debian's real interface defaults: inet_interfaces = all, inet_protocols = all (never started) --------

def test_debian_listening_on_all_interfaces_setup_and_static_audit(real_gateway):
    """Debian's "Internet Site" as installed: ``inet_interfaces = all``, ``inet_protocols = all`` and a
    host-less ``smtp inet`` service. Never started (a test binds loopback only), so static analysis:
    setup's listener is bound to loopback and safe; an onion at 127.0.0.1:25 would reach the port-25
    smtpd, which also listens beyond loopback and trusts 127.0.0.0/8."""
    gw = real_gateway
    stock_debian(gw, free_port())
    gw.pf.postconf("-e", "inet_interfaces = all", "inet_protocols = all")
    (gw.pf.config_dir / "master.cf").write_text(Path("/usr/share/postfix/master.cf.dist").read_text())
    age_config(gw.pf.config_dir)
    before = gw.snapshot()
    gw.setup("--yes")
    code, reports, out = audit(gw, "--torrc", str(gw.tor.torrc), "--static-only")
    assert code == 3, out                                             # static only: at best inconclusive
    assert [r["target"] for r in reports] == [gw.listener], out
    assert not [f for f in reports[0]["findings"] if f["severity"] == "critical" or f["check"] == "all_interfaces"]
    code, reports, out = audit(gw, "--listener", "127.0.0.1:25", "--static-only")
    assert code == 2, out                                             # risky
    checks = {f["check"]: f["severity"] for f in reports[0]["findings"]}
    assert checks["mynetworks_loopback"] == "critical" and checks["all_interfaces"] == "warning", out
    gw.setup("--rollback", "--yes")
    assert same_content(gw.snapshot(), before), changed_paths(gw.snapshot(), before)


# --- 7. HELO restrictions in main.cf, inherited by the listener ------------------------------------------------

def test_helo_restrictions_inherited_by_the_listener_do_not_blind_the_audit(real_gateway, dns_server):
    """The listener inherits ``reject_non_fqdn_helo_hostname`` (mynetworks is empty there): the audit's
    first HELO, ``localhost``, is refused, and the whole run is repeated with a fully qualified one; the
    verdict is safe, not inconclusive."""
    gw = real_gateway
    debian_with_port25(gw)
    add_main(gw, "helo-required.main.cf")
    start_postfix(gw)
    run = lifecycle(gw, dns_server)
    assert_sane(run, gw)
    assert run.reports[0]["listener"]["helo"] == f"probe.{TEST_DOMAIN} (HELO localhost was refused)", run.audit_output


# --- 8. client-address checks in main.cf: reverse DNS required, a DNSBL ------------------------------------------

def test_client_address_checks_are_left_out_of_the_listener_and_a_hand_made_one_is_named(real_gateway, dns_server):
    """Onion clients are Tor circuit addresses without reverse DNS. setup's listener repeats main.cf's client
    and HELO lists without the reverse-DNS and DNSBL checks (a note for each) and the audit's control is
    accepted. A listener that inherits reject_unknown_reverse_client_hostname (as a hand-made one does)
    defers the control recipient: the audit names the check as the likely cause, and status shows it.
    (``smtpd_peername_lookup = no`` stays on it: no test asks the system resolver.)"""
    gw = real_gateway
    debian_with_port25(gw)
    add_main(gw, "client-checks.main.cf")
    start_postfix(gw)
    status_output = []

    def hand_made(gw: Gateway) -> None:
        assert listener_option(gw, "smtpd_client_restrictions") == "permit_mynetworks"
        assert listener_option(gw, "smtpd_helo_restrictions") == \
            "permit_mynetworks, reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname"
        assert listener_option(gw, "smtpd_peername_lookup") == "no"
        option = f"{gw.listener}/inet/smtpd_client_restrictions"
        # as a hand-made listener inherits it (without the DNS list: no test asks the system resolver)
        gw.pf.postconf("-P", f"{option}=permit_mynetworks,reject_unknown_reverse_client_hostname")
        gw.pf.reload()
        code, reports, out = audit(gw, "--listener", gw.listener)
        assert code == 3, out
        [finding] = findings(reports[0], "client_address_check")
        assert finding["severity"] == "warning", out
        assert finding["value"] == "smtpd_client_restrictions: reject_unknown_reverse_client_hostname", out
        assert reports[0]["control"]["verdict"] == "denied" and "450 4.7.1" in out, out
        status = CliRunner().invoke(main, ["status", "--state-dir", str(gw.state_dir), "--dns-server",
                                           dns_server.address, "--timeout", "3", "--test-domain", TEST_DOMAIN])
        status_output.append(status.output)
        gw.pf.postconf("-P", f"{option}=permit_mynetworks")

    run = lifecycle(gw, dns_server, hand_made)
    assert_sane(run, gw)
    assert findings(run.reports[0], "client_address_check") == [], run.audit_output
    notes = [line for line in run.setup_output.splitlines() if "does not inherit" in line]
    assert [n.split("'")[1] for n in notes] == ["reject_unknown_reverse_client_hostname",
                                                "reject_rbl_client zen.spamhaus.org",
                                                "reject_unknown_client_hostname"], run.setup_output
    [relay] = [line for line in status_output[0].splitlines() if " relay_audit " in line]
    assert relay.split()[0] == "fail" and "no reverse DNS" in relay and \
        "reject_unknown_reverse_client_hostname" in relay, status_output[0]


# --- 9. FILTER_README's advanced content filter: content_filter + no_address_mappings on port 25 -----------------

def test_the_listener_takes_the_filter_and_its_receive_override_options_from_port_25(real_gateway, dns_server):
    """The port-25 smtpd filters with ``receive_override_options=no_address_mappings`` (the after-filter
    smtpd maps addresses): setup copies both onto the listener, or onion mail would be alias-expanded
    (and BCC'd) twice; no parity finding, rollback restores everything."""
    gw = real_gateway
    host = debian_with_port25(gw)
    filter_port = free_port()
    add_master(gw, "filter-readme.master.cf", REINJECT_PORT=str(free_port()))
    for option in (f"content_filter=scan:[127.0.0.1]:{filter_port}", "receive_override_options=no_address_mappings"):
        gw.pf.postconf("-P", f"{host}:smtp/inet/{option}")
    age_config(gw.pf.config_dir)
    start_postfix(gw)

    def copied(gw: Gateway) -> None:
        assert listener_option(gw, "content_filter") == f"scan:[127.0.0.1]:{filter_port}"
        assert listener_option(gw, "receive_override_options") == "no_address_mappings"

    run = lifecycle(gw, dns_server, copied)
    assert_sane(run, gw)
    assert findings(run.reports[0], "inspection_parity") == [], run.audit_output
