"""``onion-gateway setup`` against a private Postfix instance and a real tor (DisableNetwork 1) on loopback.

Every path setup writes is redirected into the test's own directories (wrapper, torrc, torrc piece,
torsocks.conf, systemd unit, state directory, HiddenServiceDir); the wrapper sits outside Postfix's
daemon_directory and master.cf names it by a relative path, as documented in README.md ("Setting up a gateway").
The transport map is the real ``onion-gateway serve`` daemon of the session (DNS from the loopback dnsmasq).
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from onion_gateway.address import ListenAddress
from onion_gateway.audit.probe import ListenerSMTP, ProxyHeader
from onion_gateway.cli import main
from onion_gateway.onion import OnionCheck, check_onion
from tests.support.gateway import OWN_DOMAIN, Gateway, age_config, changed_paths, new_gateway, same_content
from tests.support.procs import free_port, tail

pytestmark = pytest.mark.integration

def test_dry_run_shows_every_change_and_changes_nothing(gateway):
    before = gateway.snapshot()
    out = gateway.setup("--dry-run").output
    assert f"+++ b{gateway.wrapper}" in out
    assert f"+transport_maps = {gateway.transport_maps}" in out
    assert "postconf -M 'smtptor/unix=smtptor unix - - n - - ../../../.." in out
    assert f"+{gateway.listener} inet" in out
    assert f"+%include {gateway.etc / 'onion-gateway.torrc'}" in out
    assert "Tor creates a new key" in out
    assert out.rstrip().endswith("dry run: nothing was changed")
    assert gateway.snapshot() == before
    assert not gateway.state_dir.exists() and not gateway.hs_dir.exists()


def test_dry_run_with_the_default_wrapper_location_targets_daemon_directory(gateway):
    args = [a for a in gateway.args("--dry-run") if a not in ("--wrapper-path", str(gateway.wrapper))]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    daemon_directory = gateway.pf.postconf("-h", "daemon_directory").strip()
    assert f"+++ b{daemon_directory}/smtp_tor" in result.output
    assert "postconf -M 'smtptor/unix=smtptor unix - - n - - smtp_tor -o" in result.output
    assert not Path(daemon_directory, "smtp_tor").exists()


def test_setup_result_reads_back_through_postfix_and_tor(gateway):
    out = gateway.setup("--yes").output
    address = gateway.address_line(out)
    assert check_onion(address) is OnionCheck.VALID
    assert f"_onion-mx._tcp.{OWN_DOMAIN}. 3600 IN SRV 10 5 25 {address}." in out
    assert f"_onion-mx._tcp.other.example.test. 3600 IN SRV 10 5 25 {address}." in out
    pf = gateway.pf
    assert pf.postconf("-n", "transport_maps").strip() == f"transport_maps = {gateway.transport_maps}"
    master = pf.postconf("-M", "smtptor/unix").split()
    assert master[:7] == ["smtptor", "unix", "-", "-", "n", "-", "-"]
    assert (Path(pf.postconf("-h", "daemon_directory").strip()) / master[7]).resolve() == gateway.wrapper
    service = pf.postconf("-P").splitlines()
    for expected in ["smtptor/unix/smtp_dns_support_level = disabled", "smtptor/unix/smtp_host_lookup = native",
                     "smtptor/unix/smtp_tls_security_level = none",
                     f"{gateway.listener}/inet/mynetworks =",
                     f"{gateway.listener}/inet/smtpd_relay_restrictions = reject_unauth_destination",
                     f"{gateway.listener}/inet/smtpd_recipient_restrictions =",
                     f"{gateway.listener}/inet/allow_untrusted_routing = no",
                     f"{gateway.listener}/inet/syslog_name = postfix/onion"]:
        assert expected in service
    pf.postfix("check")
    assert subprocess.run(["sh", "-n", str(gateway.wrapper)]).returncode == 0
    assert stat.S_IMODE(gateway.wrapper.stat().st_mode) == 0o755
    assert f"TorPort {gateway.tor.socks_port}" in (gateway.etc / "torsocks.conf").read_text()
    verify = subprocess.run(["tor", "--verify-config", "-f", str(gateway.tor.torrc), "--defaults-torrc",
                             str(gateway.tor.defaults)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout
    assert (gateway.hs_dir / "hostname").read_text().strip() == address
    assert stat.S_IMODE((gateway.hs_dir / "hs_ed25519_secret_key").stat().st_mode) == 0o600


def test_setup_writes_the_socket_unit_beside_the_service_and_rollback_removes_both(gateway, tmp_path):
    """Without the package's units setup writes both: systemd then holds the daemon's listeners while it
    restarts (Postfix's lookups wait in the accept queue instead of being refused)."""
    address = gateway.transport_map.split(":", 2)[2].rsplit(":", 1)[0]           # socketmap:inet:IP:PORT:onion
    config = tmp_path / "og.toml"
    config.write_text(f'[serve]\ntcp_table = ["127.0.0.1:{free_port()}"]\nsocketmap = ["{address}"]\n')
    gateway.setup("--config", str(config), "--yes")
    service, socket_unit = gateway.etc / "onion-gateway.service", gateway.etc / "onion-gateway.socket"
    service_lines, socket_lines = service.read_text().splitlines(), socket_unit.read_text().splitlines()
    assert "Wants=onion-gateway.socket" in service_lines
    assert any(line.startswith("ExecStart=") and line.endswith(f" serve --config {gateway.etc / 'onion-gateway.toml'}")
               for line in service_lines)
    streams = [line.split("=", 1)[1] for line in socket_lines if line.startswith("ListenStream=")]
    assert streams == [config.read_text().split('"')[1], address]           # the [serve] listeners, in order
    assert "Service=onion-gateway.service" in socket_lines
    if shutil.which("systemd-analyze"):
        done = subprocess.run(["systemd-analyze", "verify", str(socket_unit), str(service)], capture_output=True,
                              text=True, timeout=60)
        assert [line for line in done.stderr.splitlines() if "onion-gateway." in line] == [], done.stderr

    out = gateway.setup("--config", str(config), "--rollback", "--yes").output

    assert f"removed {socket_unit}" in out and f"removed {service}" in out
    assert not socket_unit.exists() and not service.exists()


def test_private_key_never_appears_in_output_or_state(gateway):
    result = CliRunner().invoke(main, gateway.args("--yes", "--log-level", "debug"), catch_exceptions=False)
    assert result.exit_code == 0
    secret = (gateway.hs_dir / "hs_ed25519_secret_key").read_bytes()[32:]     # after the 32-byte header
    import base64

    for form in (base64.b64encode(secret).decode(), secret.hex()):
        assert form[:24] not in result.output
        for path in gateway.state_dir.rglob("*"):
            if path.is_file():
                assert form[:24].encode() not in path.read_bytes()


def test_hardened_listener_refuses_relay_for_loopback_and_accepts_own_domain(gateway):
    gateway.pf.start()                   # running: setup must reload it to open the new listener
    gateway.setup("--yes")
    from tests.support.procs import port_accepts, wait_for

    wait_for(lambda: port_accepts(gateway.listener_port), 15, "the onion listener after reload",
             lambda: tail(gateway.pf.maillog))
    # the listener reads Tor's PROXY header (HiddenServiceExportCircuitID haproxy): speak it as Tor does
    with ListenerSMTP(ListenAddress.parse(gateway.listener), ProxyHeader(), local_hostname="client.lab.test",
                      timeout=30) as smtp:
        assert smtp.connect("127.0.0.1", gateway.listener_port)[0] == 220
        smtp.ehlo()
        assert smtp.mail("a@sender.example.test")[0] == 250
        code, message = smtp.rcpt("someone@nosuch.example.test")
        assert (code, message.split(b" ", 1)[0]) == (554, b"5.7.1"), message
        assert b"Relay access denied" in message
        assert smtp.rcpt(f"user@{OWN_DOMAIN}")[0] == 250
        smtp.rset()
    assert "postfix/onion/smtpd" in gateway.pf.log_text()
    assert "[fc00:dead:beef:4dad::1]" in gateway.pf.log_text()


def test_declining_the_plan_changes_nothing(gateway):
    before = gateway.snapshot()
    result = CliRunner().invoke(main, gateway.args(), input="n\n", catch_exceptions=False)
    assert result.exit_code == 1
    assert "Apply these changes? [y/N]" in result.output and "nothing was changed" in result.output
    assert gateway.snapshot() == before


def test_second_run_reports_nothing_and_touches_nothing(gateway):
    first = gateway.address_line(gateway.setup("--yes").output)
    before = gateway.snapshot()
    out = gateway.setup().output                       # no --yes: nothing to ask either
    assert out.startswith("nothing to change")
    assert gateway.address_line(out) == first
    assert gateway.snapshot() == before                # bytes, modes and mtimes


def test_a_run_with_nothing_to_change_adds_a_missing_listener_record(gateway):
    """A manifest from before setup recorded its listener gets the record, and nothing else changes."""
    import json

    from onion_gateway.audit import read_setup_state

    gateway.setup("--yes")
    manifest = gateway.state_dir / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["listener"]
    manifest.write_text(json.dumps(data))
    before = {k: v for k, v in gateway.snapshot().items() if k != str(manifest)}
    assert gateway.setup().output.startswith("nothing to change")
    assert str(read_setup_state(gateway.state_dir).listener) == gateway.listener
    assert {k: v for k, v in gateway.snapshot().items() if k != str(manifest)} == before


def test_onion_address_survives_a_tor_restart(gateway):
    address = gateway.address_line(gateway.setup("--yes").output)
    gateway.tor.restart()                              # same torrc: now with setup's %include
    from onion_gateway.address import parse_listen_address
    from onion_gateway.tor import TorControl

    with TorControl(parse_listen_address(gateway.tor.control)) as tor:
        assert tor.hidden_service_ports(gateway.hs_dir) == [(25, "127.0.0.1", gateway.listener_port)]
    out = gateway.setup().output
    assert out.startswith("nothing to change")
    assert gateway.address_line(out) == address


def test_rollback_restores_every_file_byte_for_byte(gateway):
    before = gateway.snapshot()
    gateway.setup("--yes")
    assert not same_content(gateway.snapshot(), before)
    out = gateway.setup("--rollback", "--yes").output
    assert "tor no longer serves" in out
    assert same_content(gateway.snapshot(), before)
    assert not gateway.state_dir.exists()
    assert gateway.pf.postconf("-n", "transport_maps") == ""
    from onion_gateway.address import parse_listen_address
    from onion_gateway.tor import TorControl

    with TorControl(parse_listen_address(gateway.tor.control)) as tor:
        assert tor.hidden_service_ports(gateway.hs_dir) is None
    # the key is kept: setting up again brings the same address back
    assert gateway.setup("--rollback", "--yes").output.strip() == "nothing to roll back"


def test_rollback_then_setup_again_reuses_the_address(gateway):
    first = gateway.address_line(gateway.setup("--yes").output)
    gateway.setup("--rollback", "--yes")
    assert gateway.address_line(gateway.setup("--yes").output) == first


def test_moving_the_listener_replaces_the_old_one(gateway):
    old_listener = gateway.listener
    gateway.setup("--yes")
    gateway.listener_port = free_port()
    out = gateway.setup("--yes").output
    assert f"postconf -MX '{old_listener}/inet'" in out
    services = gateway.pf.postconf("-M").split()
    assert gateway.listener in services and old_listener not in services
    assert f"HiddenServicePort 25 {gateway.listener}" in (gateway.etc / "onion-gateway.torrc").read_text().splitlines()
    from onion_gateway.audit import read_setup_state

    assert str(read_setup_state(gateway.state_dir).listener) == gateway.listener     # the audit follows the move


def test_existing_transport_maps_are_kept_after_ours(gateway):
    gateway.pf.postconf("-e", "transport_maps = hash:/etc/postfix/transport-not-there")
    age_config(gateway.pf.config_dir)
    before = gateway.snapshot()
    gateway.setup("--yes")
    assert gateway.pf.postconf("-h", "transport_maps").strip() == \
        f"{gateway.transport_maps}, hash:/etc/postfix/transport-not-there"
    gateway.setup("--rollback", "--yes")
    assert same_content(gateway.snapshot(), before)


def test_unix_control_socket_with_password_auth(serve):
    gw = new_gateway(serve.socketmap, password="lab-secret", unix_control=True)
    try:
        password_file = gw.root / "tor-password"
        password_file.write_text("lab-secret\n")
        args = gw.args("--tor-control", f"unix:{gw.tor.control_socket}")
        refused = CliRunner().invoke(main, [*args, "--yes"], catch_exceptions=False)
        assert refused.exit_code == 69 and "wants a password" in refused.output
        done = CliRunner().invoke(main, [*args, "--yes", "--tor-control-password-file", str(password_file)],
                                  catch_exceptions=False)
        assert done.exit_code == 0, done.output
        assert check_onion(gw.address_line(done.output)) is OnionCheck.VALID
    finally:
        gw.close()


def test_tor_control_unreachable_changes_nothing(gateway):
    before = gateway.snapshot()
    gateway.tor.stop()
    result = gateway.setup("--yes", expect=69)
    assert "cannot connect to Tor's control port" in result.output
    assert "nothing was changed" in result.output
    assert gateway.snapshot() == before
    assert not gateway.state_dir.exists() or not any(gateway.state_dir.iterdir())


def test_failure_midway_restores_everything(gateway, monkeypatch):
    """Tor goes away after Postfix was changed and checked: the onion step fails for real."""
    from onion_gateway.setup import apply as installer

    real_check = installer.postfix.check

    def check_then_lose_tor(config_dir):
        real_check(config_dir)
        gateway.tor.stop()

    monkeypatch.setattr(installer.postfix, "check", check_then_lose_tor)
    before = gateway.snapshot()
    result = gateway.setup("--yes", expect=1)
    assert "setup failed while setting up the onion service through Tor's control port" in result.output
    assert "Every change was undone" in result.output
    assert same_content(gateway.snapshot(), before), changed_paths(gateway.snapshot(), before)
    assert not (gateway.state_dir / "journal.json").exists()
    assert not (gateway.state_dir / "manifest.json").exists()


def test_a_file_changed_after_the_plan_is_not_overwritten(gateway):
    from onion_gateway.setup import apply as installer
    from onion_gateway.setup.plan import plan_setup
    from onion_gateway.setup.settings import setup_settings

    plan = plan_setup(setup_settings(None, gateway.options()))
    gateway.pf.postconf("-e", "biff = yes")          # the postmaster edits main.cf meanwhile
    before = gateway.snapshot()
    with pytest.raises(installer.SetupError, match="changed since the plan was made: .*main.cf"):
        installer.apply_plan(plan)
    assert gateway.snapshot() == before


def test_refuses_an_open_relay_listener(gateway):
    before = gateway.snapshot()
    result = gateway.setup("--yes", "--relay-restrictions", "permit_mynetworks,permit", expect=1)
    assert f"the listener {gateway.listener} would be an open relay" in result.output
    assert "permit_mynetworks" in result.output and "nothing was changed" in result.output
    assert gateway.snapshot() == before


def test_refuses_a_listener_the_old_own_check_let_through(gateway):
    """No permit_mynetworks, no bare permit, ends in reject_unauth_destination: open all the same (on the
    PROXY listener to any local process that sends a header claiming 127.0.0.1)."""
    before = gateway.snapshot()
    result = gateway.setup("--yes", "--relay-restrictions", "permit_inet_interfaces,reject_unauth_destination",
                           expect=1)
    assert f"the listener {gateway.listener} would be an open relay" in result.output
    assert f"PROXY header claiming 127.0.0.1, and then: permit_inet_interfaces" in result.output
    assert "[proxy_header_forgeable: smtpd_relay_restrictions = permit_inet_interfaces," in result.output
    assert "nothing was changed" in result.output
    assert gateway.snapshot() == before


def test_refuses_a_listener_that_inherits_an_open_setting_from_main_cf(gateway):
    """relay_domains is not the listener's to override: main.cf making every onion a relay domain stops setup."""
    gateway.pf.postconf("-e", "relay_domains = onion")
    age_config(gateway.pf.config_dir)
    before = gateway.snapshot()
    result = gateway.setup("--yes", expect=1)
    assert f"the listener {gateway.listener} would be an open relay" in result.output
    assert "[relay_domains_onion: relay_domains = onion (set in main.cf)]" in result.output
    assert gateway.snapshot() == before                # main.cf/master.cf byte-identical, mtimes too
    assert not gateway.state_dir.exists() and not gateway.hs_dir.exists()


def test_masked_recipient_permit_is_applied_with_a_note(gateway):
    dry = gateway.setup("--dry-run", "--recipient-restrictions", "permit_inet_interfaces").output
    assert "note: relay audit of the listener" in dry and "masked for now" in dry
    result = gateway.setup("--yes", "--recipient-restrictions", "permit_inet_interfaces")
    assert "note: relay audit of the listener" in result.output and "masked for now" in result.output
    assert f"{gateway.listener}/inet/smtpd_recipient_restrictions = permit_inet_interfaces" in \
        gateway.pf.postconf("-P").splitlines()


def test_refuses_without_torsocks(gateway):
    config = _config(gateway, 'torsocks = "no-such-torsocks"')
    before = gateway.snapshot()
    result = gateway.setup("--yes", "--config", str(config), expect=1)
    assert "no-such-torsocks not found: install torsocks" in result.output
    assert gateway.snapshot() == before


def test_refuses_postfix_older_than_3_5(gateway, monkeypatch):
    """A real 3.4 cannot be installed next to 3.7: the version is the one injected fault."""
    from onion_gateway.setup import apply as installer

    monkeypatch.setattr(installer.postfix, "mail_version", lambda config_dir=None: (3, 4, 14))
    before = gateway.snapshot()
    result = gateway.setup("--yes", expect=1)
    assert "Postfix 3.4.14 is too old: onion-gateway needs 3.5 or later" in result.output
    assert gateway.snapshot() == before


def _config(gateway: Gateway, setup_lines: str) -> Path:
    path = gateway.etc / "setup.toml"
    path.write_text(f"[setup]\n{setup_lines}\n")
    return path


CRASH = textwrap.dedent("""
    import os, sys
    from onion_gateway import postfix
    from onion_gateway.setup import apply as installer
    from onion_gateway.setup.plan import plan_setup
    from onion_gateway.setup.settings import setup_settings
    def crash(config_dir):
        os._exit(9)                       # killed between the Postfix changes and postfix check
    postfix.check = crash
    settings = setup_settings(None, dict(arg.split("=", 1) for arg in sys.argv[1:]))
    installer.apply_plan(plan_setup(settings))
""")


def test_interrupted_run_is_repaired_at_next_start(gateway):
    before = gateway.snapshot()
    options = gateway.options()
    crashed = subprocess.run([sys.executable, "-c", CRASH, *(f"{k}={v}" for k, v in options.items())],
                             capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 9, crashed.stderr
    assert (gateway.state_dir / "journal.json").exists()
    assert not same_content(gateway.snapshot(), before)        # the run really changed files
    out = gateway.setup("--dry-run", expect=1).output           # a dry run refuses to plan over it
    assert "interrupted run" in out
    out = gateway.setup("--rollback", "--yes").output                    # any real start repairs it first
    assert "master.cf: removed the service smtptor/unix" in out
    assert same_content(gateway.snapshot(), before), changed_paths(gateway.snapshot(), before)
    assert not (gateway.state_dir / "journal.json").exists()


def test_next_setup_after_an_interruption_repairs_then_completes(gateway):
    options = gateway.options()
    crashed = subprocess.run([sys.executable, "-c", CRASH, *(f"{k}={v}" for k, v in options.items())],
                             capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 9, crashed.stderr
    out = gateway.setup("--yes").output
    assert "repaired an interrupted run: master.cf: removed the service" in out
    assert check_onion(gateway.address_line(out)) is OnionCheck.VALID
    gateway.pf.postfix("check")
