"""Issue 11, day one on a real host: setup -> daemon -> status -> audit -> rollback as one safe path.

Each test names the issue item it proves. Everything runs against a private Postfix instance and a real
tor (DisableNetwork 1) on loopback (tests/support/gateway.py); the daemon is the real ``onion-gateway
serve`` of the session fixture.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from onion_gateway.cli import main
from tests.conftest import require
from tests.support.daemon import ServeProcess
from tests.support.gateway import OWN_DOMAIN, changed_paths, new_gateway, same_content, stock_debian
from tests.support.procs import free_port

pytestmark = pytest.mark.integration

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _as_nobody(*args: str, cwd: Path = Path("/")) -> subprocess.CompletedProcess:
    return subprocess.run([*NOBODY, sys.executable, "-m", "onion_gateway", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})


# --- item 3: --rollback honours --dry-run and asks unless --yes -----------------------------------------

def test_item3_rollback_dry_run_shows_and_changes_nothing(gateway):
    gateway.setup("--yes")
    after_setup = gateway.snapshot()
    out = gateway.setup("--rollback", "--dry-run").output
    assert "would remove transport_maps from main.cf" in out
    assert "would remove the service smtptor/unix from master.cf" in out
    assert f"would remove {gateway.wrapper}" in out
    assert out.rstrip().endswith("dry run: nothing was changed")
    assert gateway.snapshot() == after_setup
    assert (gateway.state_dir / "manifest.json").exists()


def test_item3_rollback_asks_and_a_no_changes_nothing(gateway):
    gateway.setup("--yes")
    after_setup = gateway.snapshot()
    result = CliRunner().invoke(main, gateway.args("--rollback"), input="n\n")
    assert result.exit_code == 1, result.output
    assert "Roll back these changes?" in result.output and "nothing was changed" in result.output
    assert gateway.snapshot() == after_setup
    result = CliRunner().invoke(main, gateway.args("--rollback"), input="y\n")
    assert result.exit_code == 0, result.output
    assert not (gateway.state_dir / "manifest.json").exists()


# --- item 11: a non-root user gets one line and exit 77, never a traceback --------------------------------

def _locked_dir(gateway) -> Path:
    locked = gateway.root / "locked"
    locked.mkdir(mode=0o700)
    return locked


def test_item11_setup_dry_run_as_non_root_is_one_line_and_77(gateway):
    require("setpriv")
    args = gateway.args("--dry-run", "--state-dir", str(_locked_dir(gateway) / "state"),
                        "--hidden-service-dir", str(gateway.root / "locked" / "hs"))
    done = _as_nobody(*args)
    assert done.returncode == 77, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onion-gateway setup: permission denied: ")
    assert "needs root" in lines[0]


def test_item11_audit_of_an_unreadable_state_dir_as_non_root_is_one_line_and_77(gateway):
    require("setpriv")
    state = gateway.root / "state-of-root"
    state.mkdir()
    manifest = state / "manifest.json"
    manifest.write_text(json.dumps({"listener": {"listener": gateway.listener}}))
    manifest.chmod(0o600)
    done = _as_nobody("audit-open-relay", "--state-dir", str(state))
    assert done.returncode == 77, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("onion-gateway audit-open-relay: permission denied: ")



# --- items 1, 2 and the first-day test: never a window without mail flow ---------------------------------

FOREIGN_ONION_RCPT = "someone@single.example.test"      # the session zone publishes an onion SRV for it


class RcptProbe:
    """Sends RCPT TO an own-domain address every 100 ms on a fresh connection; keeps every reply code."""

    def __init__(self, port: int, rcpt: str, interval_seconds: float = 0.1) -> None:
        self.port, self.rcpt, self.interval = port, rcpt, interval_seconds
        self.replies: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RcptProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.replies.append((time.monotonic(), *rcpt_reply(self.port, self.rcpt)))
            self._stop.wait(self.interval)

    def failures(self) -> list[tuple[float, int, str]]:
        return [r for r in self.replies if r[1] != 250]


def rcpt_reply(port: int, rcpt: str) -> tuple[int, str]:
    """One SMTP session up to RCPT TO (never DATA): ``(code, text)``; connection trouble is code 0."""
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="probe.lab.test", timeout=10) as client:
            client.ehlo()
            client.mail("probe@lab.test")
            code, text = client.rcpt(rcpt)
            client.rset()
            return code, text.decode(errors="replace")
    except (OSError, smtplib.SMTPException) as exc:
        return 0, repr(exc)


def _own_daemon(dns_server, pf) -> ServeProcess:
    return ServeProcess(["--dns-server", dns_server.address, "--dns-timeout", "2",
                         "--postfix-config-dir", str(pf.config_dir), "--exclude-domains", OWN_DOMAIN])


def test_item1_setup_refuses_while_the_daemon_does_not_answer_and_changes_nothing(dns_server):
    require("postfix", "postconf", "tor", "torsocks")
    gw = new_gateway(f"socketmap:inet:127.0.0.1:{free_port()}:onion")      # nothing listens there
    try:
        before = gw.snapshot()
        result = gw.setup("--yes", expect=1)
        assert "the lookup daemon does not answer at " + gw.transport_map in result.output
        assert f"serve --config {gw.etc / 'onion-gateway.toml'}" in result.output
        assert "nothing was changed" in result.output
        assert gw.snapshot() == before
        assert gw.pf.postconf("-n", "transport_maps") == ""
    finally:
        gw.close()


def test_under_systemd_setup_plans_to_start_the_socket_unit_before_the_service(monkeypatch):
    """The lab has no systemd PID 1, so only the plan is checked: systemctl itself is never run here."""
    require("postfix", "postconf", "tor", "torsocks")
    from onion_gateway.setup import plan as planning
    from onion_gateway.setup.settings import setup_settings

    gw = new_gateway(f"socketmap:inet:127.0.0.1:{free_port()}:onion")      # nothing listens there
    try:
        monkeypatch.setattr(planning, "systemd_running", lambda: True)
        made = planning.plan_setup(setup_settings(gw.options()))
        assert made.blocker is None
        assert made.start_units == ("onion-gateway.socket", "onion-gateway.service")
        assert {(c.what, c.path) for c in made.files} >= {("systemd unit", gw.etc / "onion-gateway.service"),
                                                           ("systemd socket unit", gw.etc / "onion-gateway.socket")}
    finally:
        gw.close()


def test_items_1_2_first_day_mail_flows_through_setup_daemon_stop_and_rollback(dns_server):
    """An own-domain RCPT every 100 ms sees no 4xx during setup, a daemon stop/start and rollback;
    with the daemon stopped the own domain gets 250 and a domain with an onion SRV record gets 4xx."""
    require("postfix", "postconf", "tor", "torsocks")
    daemon = None
    gw = new_gateway("")
    try:
        daemon = _own_daemon(dns_server, gw.pf).start()
        gw.transport_map = daemon.socketmap
        gw.pf.start()
        with RcptProbe(gw.pf.smtp_port, f"postmaster@{OWN_DOMAIN}") as probe:
            gw.setup("--yes")
            time.sleep(0.5)
            daemon.stop()
            time.sleep(0.5)
            assert rcpt_reply(gw.pf.smtp_port, f"postmaster@{OWN_DOMAIN}")[0] == 250
            code, text = rcpt_reply(gw.pf.smtp_port, FOREIGN_ONION_RCPT)
            assert 400 <= code < 500, (code, text)               # deferred, never sent around Tor
            daemon = ServeProcess(daemon.args, daemon.tcp_port, daemon.socketmap_port).start()
            deadline = time.monotonic() + 30
            while rcpt_reply(gw.pf.smtp_port, FOREIGN_ONION_RCPT)[0] != 250:
                assert time.monotonic() < deadline, "foreign mail still deferred 30 s after the daemon came back"
                time.sleep(0.5)
            gw.setup("--rollback", "--yes")
            time.sleep(0.5)
        assert len(probe.replies) > 20
        assert probe.failures() == [], probe.failures()[:5]
        assert gw.pf.postconf("-n", "transport_maps") == ""
    finally:
        if daemon is not None:
            daemon.stop()
        gw.close()


# --- item 7: Postfix list syntax parsed as Postfix parses it ------------------------------------------------

NESTED = "inline:{ b.example.test=error:gone, { a.example.test = smtp:[192.0.2.1] } }"


def test_item7_a_nested_inline_transport_map_survives_setup_and_still_answers(gateway):
    gateway.pf.postconf("-e", f"transport_maps = {NESTED}")
    gateway.setup("--yes")
    value = gateway.pf.postconf("-h", "transport_maps").strip()
    assert value == f"{gateway.transport_maps}, {NESTED}"
    done = subprocess.run(["postmap", "-c", str(gateway.pf.config_dir), "-q", "a.example.test", NESTED],
                          capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "smtp:[192.0.2.1]", done.stderr
    gateway.pf.start()
    assert rcpt_reply(gateway.pf.smtp_port, f"postmaster@{OWN_DOMAIN}")[0] == 250
    assert rcpt_reply(gateway.pf.smtp_port, "x@b.example.test")[0] != 451


# --- item 4: rollback reverses setup's changes and keeps every later edit ----------------------------------

def test_item4_rollback_keeps_edits_made_after_setup(gateway):
    gateway.setup("--yes")
    extra_port = free_port()
    gateway.pf.postconf("-e", "message_size_limit = 12345678")
    gateway.pf.postconf("-M", f"127.0.0.1:{extra_port}/inet=127.0.0.1:{extra_port} inet n - n - - smtpd")
    with open(gateway.tor.torrc, "a", encoding="utf-8") as fh:
        fh.write("ConnectionPadding auto\n")
    transport_maps = gateway.pf.postconf("-h", "transport_maps").strip()
    gateway.pf.postconf("-e", f"transport_maps = {transport_maps}, hash:{gateway.pf.config_dir}/later")
    gateway.wrapper.write_text(gateway.wrapper.read_text() + "# the postmaster's note\n")

    out = gateway.setup("--rollback", "--yes").output

    assert gateway.pf.postconf("-n", "message_size_limit").strip() == "message_size_limit = 12345678"
    assert gateway.pf.postconf("-M", f"127.0.0.1:{extra_port}/inet").strip()
    assert gateway.pf.postconf("-h", "transport_maps").strip() == f"hash:{gateway.pf.config_dir}/later"
    assert not gateway.pf.postconf("-M", "smtptor/unix").strip()
    assert not gateway.pf.postconf("-M", f"{gateway.listener}/inet").strip()
    torrc = gateway.tor.torrc.read_text()
    assert "ConnectionPadding auto" in torrc and "%include" not in torrc
    kept = gateway.wrapper.with_name(gateway.wrapper.name + ".onion-gateway-kept")
    assert not gateway.wrapper.exists() and "# the postmaster's note" in kept.read_text()
    assert f"your version is kept as {kept}" in out


# --- item 5: a kill at every journal step of apply and commit is repaired by the next run -------------------

def _fork_with_fault(step: int, action) -> int:
    """Run *action* in a child armed to SIGKILL itself at journal step *step*; return its wait status."""
    from onion_gateway.setup import journal

    pid = os.fork()
    if pid == 0:                                             # child: never returns into pytest
        code = 0
        try:
            os.environ[journal.FAULT_ENV] = str(step)
            journal._fault_count = 0
            action()
        except BaseException:                                # noqa: BLE001 - report through the exit code
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def test_item5_a_kill_at_every_journal_step_is_repaired(gateway):
    from onion_gateway.setup import apply as installer
    from onion_gateway.setup import journal
    from onion_gateway.setup.plan import plan_setup
    from onion_gateway.setup.settings import setup_settings

    settings = setup_settings(None, gateway.options())
    before = gateway.snapshot()
    plan = plan_setup(settings)
    steps_log = gateway.pf.root / "steps.log"                # outside what the snapshot covers
    os.environ[journal.FAULT_LOG_ENV] = str(steps_log)
    try:
        assert _fork_with_fault(0, lambda: installer.apply_plan(plan)) == 0
    finally:
        del os.environ[journal.FAULT_LOG_ENV]
    steps = steps_log.read_text().splitlines()
    assert len(steps) > 20 and steps[-1].endswith("journal unlinked")
    installer.rollback(settings)
    assert same_content(gateway.snapshot(), before), changed_paths(gateway.snapshot(), before)

    for step in range(1, len(steps) + 1):
        status = _fork_with_fault(step, lambda: installer.apply_plan(plan))
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (step, status)
        installer.rollback(settings)                         # the next start: repair (+ undo a finished run)
        assert same_content(gateway.snapshot(), before), (steps[step - 1], changed_paths(gateway.snapshot(), before))
        assert not settings.state_dir.exists(), steps[step - 1]


def test_item5_a_kill_inside_recovery_is_repaired_by_the_next_run(gateway):
    from onion_gateway.setup import apply as installer
    from onion_gateway.setup.plan import plan_setup
    from onion_gateway.setup.settings import setup_settings

    settings = setup_settings(None, gateway.options())
    before = gateway.snapshot()
    plan = plan_setup(settings)
    status = _fork_with_fault(24, lambda: installer.apply_plan(plan))   # mid-way through the postconf steps
    assert os.WIFSIGNALED(status)
    for step in (1, 2, 3, 5, 8):                             # recovery killed at its own steps, again and again
        _fork_with_fault(step, lambda: installer.recover_interrupted(settings))
    assert installer.recover_interrupted(settings)
    assert same_content(gateway.snapshot(), before), changed_paths(gateway.snapshot(), before)


# --- item 6: trust nothing setup did not create -------------------------------------------------------------

def test_item6_a_state_dir_others_can_write_is_refused_changing_nothing(gateway):
    shared = gateway.root / "shared"
    shared.mkdir()
    shared.chmod(0o777)                                      # world-writable, no sticky bit
    before = gateway.snapshot()
    result = gateway.setup("--yes", "--state-dir", str(shared / "state"), expect=1)
    assert f"its parent {shared} can be changed by others" in result.output
    assert gateway.snapshot() == before and not (shared / "state").exists()


def test_a_state_dir_inside_the_daemons_state_directory_is_refused_changing_nothing(gateway):
    # systemd chowns the unit's StateDirectory (/var/lib/onion-gateway) to the daemon's dynamic user at
    # every start: records of root's there would be the daemon's to rewrite
    before = gateway.snapshot()
    result = gateway.setup("--yes", "--state-dir", "/var/lib/onion-gateway/setup", expect=78)
    assert "is inside /var/lib/onion-gateway, the daemon's StateDirectory" in result.output
    assert gateway.snapshot() == before and not Path("/var/lib/onion-gateway/setup").exists()


def test_item6_a_planted_manifest_symlink_is_never_followed(gateway):
    gateway.setup("--yes")
    victim = gateway.root / "victim"
    victim.write_text("precious\n")
    crafted = gateway.root / "crafted.json"
    crafted.write_text(json.dumps({      # both the old manifest shape ("files") and the journal's ("changes")
        "files": [{"path": str(victim), "backup": None}],
        "changes": [{"type": "file", "path": str(victim), "before": None, "after": "0" * 64}]}))
    manifest = gateway.state_dir / "manifest.json"
    manifest.unlink()
    manifest.symlink_to(crafted)
    result = CliRunner().invoke(main, gateway.args("--rollback", "--yes"))
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert victim.read_text() == "precious\n"


# --- item 8: a listener address a master.cf service already uses is refused --------------------------------

@pytest.mark.parametrize("service_name", ["{host}:{port}", "{port}"])
def test_item8_a_listener_port_already_in_master_cf_is_refused(gateway, service_name):
    name = service_name.format(host="127.0.0.1", port=gateway.listener_port)
    gateway.pf.postconf("-M", f"{name}/inet={name} inet n - y - - smtpd -o smtpd_tls_security_level=may")
    before = gateway.snapshot()
    result = gateway.setup("--yes", expect=1)
    assert f"would share its port with the master.cf service {name}/inet (smtpd)" in result.output
    assert "nothing was changed" in result.output
    assert gateway.snapshot() == before


# --- item 9 / "setup verifies the real listener": the live relay audit after reload ------------------------

def test_item9_relay_domains_as_a_regexp_table_matching_onion_is_caught_live_and_undone(gateway):
    table = gateway.pf.config_dir / "relay_domains.regexp"
    table.write_text("/\\.onion$/ OK\n")
    gateway.pf.postconf("-e", f"relay_domains = regexp:{table}")
    gateway.pf.start()
    before = gateway.snapshot()
    result = gateway.setup("--yes", expect=1)
    assert "the live relay audit of " + gateway.listener + " found an open relay" in result.output
    assert "Every change was undone" in result.output
    assert same_content(gateway.snapshot(), before), changed_paths(gateway.snapshot(), before)
    assert gateway.pf.postconf("-n", "transport_maps") == ""


# --- item 10: status with no flags checks what setup built (unix: control socket included) -------------------

def test_item10_status_reads_setup_record_and_the_unix_control_socket(serve, dns_server):
    require("postfix", "postconf", "tor", "torsocks")
    gw = new_gateway(serve.socketmap, unix_control=True)
    try:
        gw.pf.start()
        options = {"tor_control": f"unix:{gw.tor.control_socket}"}
        out = CliRunner().invoke(main, [*gw.args("--yes"), "--tor-control", options["tor_control"]],
                                 catch_exceptions=False).output
        address = gw.address_line(out)
        result = CliRunner().invoke(main, ["status", "--state-dir", str(gw.state_dir),
                                           "--dns-server", dns_server.address, "--timeout", "3",
                                           "--test-domain", "nosuch.example.test"])
        lines = {tuple(line.split()[:3]) for line in result.output.splitlines()}
        tor_line = next(line for line in result.output.splitlines() if " tor_control " in line)
        assert f"unix:{gw.tor.control_socket}  tor 0." in tor_line, result.output     # DisableNetwork: 0 %
        assert any(l[1] == "onion_service" and l[2] == address for l in lines), result.output
        assert ("ok", "map_listener", "socketmap") in lines, result.output
        assert any(l[:2] == ("ok", "transport_maps") for l in lines), result.output
        audit = next(line for line in result.output.splitlines() if " relay_audit " in line)
        assert audit.split()[2] == gw.listener and "open_relay" not in audit, result.output   # the recorded listener
        assert any(l[1] == "srv_record" and l[2] == f"_onion-mx._tcp.{OWN_DOMAIN}." for l in lines), result.output
    finally:
        gw.close()


def test_item10_status_without_config_uses_the_daemon_config_setup_recorded(dns_server, tmp_path):
    """Bare ``status`` on a set-up host asks the resolver of the daemon's own config file (the record's
    serve_config), not the system resolver: the SRV check finds the record on the loopback dnsmasq."""
    from tests.support.onions import ONION_A

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = tmp_path / "og.toml"
    config.write_text(f'[serve]\ndns_servers = ["{dns_server.address}"]\n')
    (state / "manifest.json").write_text(json.dumps({"listener": {
        "listener": "127.0.0.1:2525", "onion_address": ONION_A, "domains": ["single.example.test"],
        "serve_config": str(config)}}))
    result = CliRunner().invoke(main, ["status", "--state-dir", str(state), "--no-tor", "--no-postfix",
                                       "--timeout", "3"])
    srv = [line for line in result.output.splitlines() if " srv_record " in line]
    assert len(srv) == 1 and srv[0].startswith("ok ") and ONION_A in srv[0], result.output


# --- item 13: the gateway's own onion is excluded; lookup never writes daemon state ------------------------

def test_item13_lookup_excludes_the_recorded_own_onion_and_writes_no_pins(dns_server, tmp_path):
    from tests.support.onions import ONION_A

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    pins = tmp_path / "pins.json"
    config = tmp_path / "og.toml"
    config.write_text(f'[serve]\npins_file = "{pins}"\nexclude_postfix_domains = false\n'
                      f'[setup]\nstate_dir = "{state}"\n')
    args = ["lookup", "--config", str(config), "--dns-server", dns_server.address]
    before = CliRunner().invoke(main, [*args, f"postmaster@{ONION_A}"])
    assert before.exit_code == 0, before.output                       # not yet known as ours: routed
    (state / "manifest.json").write_text(json.dumps({"listener": {"listener": "127.0.0.1:2525",
                                                                  "onion_address": ONION_A}}))
    after = CliRunner().invoke(main, [*args, f"postmaster@{ONION_A}"])
    assert after.exit_code == 1, after.output                          # setup's record: never to ourselves
    found = CliRunner().invoke(main, [*args, "single.example.test"])
    assert found.exit_code == 0, found.output
    assert not pins.exists() and not pins.with_name(pins.name + ".lock").exists()


# --- item 12: symlinks stay links; onion services with unix:/IPv6 targets on the running Tor -----------------

def test_item12_setup_works_beside_onions_with_unix_and_ipv6_targets_and_keeps_them(gateway):
    from onion_gateway.config import parse_listen_address
    from onion_gateway.tor import TorControl

    unix_dir, v6_dir = gateway.tor.data_dir / "other-unix", gateway.tor.data_dir / "other-v6"
    socket_path = gateway.root / "www.sock"
    with TorControl(parse_listen_address(gateway.tor.control)) as tor:
        tor.set_hidden_service(unix_dir, 80, f"unix:{socket_path}", 0)
        tor.set_hidden_service(v6_dir, 26, "::1", 2526)
    gateway.setup("--yes")
    with TorControl(parse_listen_address(gateway.tor.control)) as tor:
        assert tor.hidden_service_ports(unix_dir) == [(80, f"unix:{socket_path}", 0)]
        assert tor.hidden_service_ports(v6_dir) == [(26, "::1", 2526)]
        assert tor.hidden_service_ports(gateway.hs_dir) == [(25, "127.0.0.1", gateway.listener_port)]
    gateway.setup("--rollback", "--yes")
    with TorControl(parse_listen_address(gateway.tor.control)) as tor:
        assert tor.hidden_service_ports(unix_dir) == [(80, f"unix:{socket_path}", 0)]
        assert tor.hidden_service_ports(gateway.hs_dir) is None


def test_item12_symlinked_main_cf_master_cf_and_torrc_stay_links_through_setup_and_rollback(gateway):
    links = {}
    for link in (gateway.tor.torrc, gateway.pf.config_dir / "main.cf", gateway.pf.config_dir / "master.cf"):
        real = gateway.root / f"real-{link.name}"
        real.write_bytes(link.read_bytes())
        os.utime(real, (real.stat().st_mtime - 10,) * 2)
        link.unlink()
        link.symlink_to(real)
        links[link] = real
    gateway.setup("--yes")
    assert all(link.is_symlink() for link in links), [str(link) for link in links if not link.is_symlink()]
    assert "%include" in links[gateway.tor.torrc].read_text()
    assert "transport_maps" in links[gateway.pf.config_dir / "main.cf"].read_text()
    assert "smtptor" in links[gateway.pf.config_dir / "master.cf"].read_text()
    gateway.setup("--rollback", "--yes")
    assert all(link.is_symlink() for link in links)
    assert "%include" not in links[gateway.tor.torrc].read_text()
    assert "transport_maps" not in links[gateway.pf.config_dir / "main.cf"].read_text()


def test_item12_a_torrc_piece_inside_an_included_directory_is_not_included_twice(gateway):
    torrc_d = gateway.etc / "torrc.d"
    torrc_d.mkdir()
    (torrc_d / "00-other").write_text("ConnectionPadding auto\n")
    with open(gateway.tor.torrc, "a", encoding="utf-8") as fh:
        fh.write(f"%include {torrc_d}/\n")
    result = gateway.setup("--yes", "--torrc-piece", str(torrc_d / "onion-gateway"))
    assert "no %include line added" in result.output
    assert gateway.tor.torrc.read_text().count("%include") == 1
    assert (torrc_d / "onion-gateway").exists()


# --- the first-day test: Debian's stock main.cf/master.cf ("Internet Site"), mail flow never interrupted --------

def test_first_day_on_stock_debian_no_4xx_for_own_mail_through_setup_daemon_and_rollback(dns_server):
    require("postfix", "postconf", "postalias", "tor", "torsocks")
    daemon = None
    gw = new_gateway("")
    try:
        stock_debian(gw, free_port())
        daemon = _own_daemon(dns_server, gw.pf).start()
        gw.transport_map = daemon.socketmap
        gw.pf.start()
        own = f"root@{OWN_DOMAIN}"
        assert rcpt_reply(gw.pf.smtp_port, own)[0] == 250
        with RcptProbe(gw.pf.smtp_port, own) as probe:
            gw.setup("--yes")
            daemon.stop()
            time.sleep(0.5)
            assert rcpt_reply(gw.pf.smtp_port, own)[0] == 250                  # own domain: local delivery
            code, text = rcpt_reply(gw.pf.smtp_port, FOREIGN_ONION_RCPT)
            assert 400 <= code < 500, (code, text)                            # onion SRV domain: deferred
            daemon = ServeProcess(daemon.args, daemon.tcp_port, daemon.socketmap_port).start()
            time.sleep(0.5)
            gw.setup("--rollback", "--yes")
            time.sleep(0.5)
        assert len(probe.replies) > 20
        assert [r for r in probe.replies if 400 <= r[1] < 500] == []
        assert probe.failures() == [], probe.failures()[:5]
    finally:
        if daemon is not None:
            daemon.stop()
        gw.close()
