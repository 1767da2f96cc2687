"""Issue 11, day one on a real host: setup -> daemon -> status -> audit -> rollback as one safe path.

Each test names the issue item it proves. Everything runs against a private Postfix instance and a real
tor (DisableNetwork 1) on loopback (tests/support/gateway.py); the daemon is the real ``onion-gateway
serve`` of the session fixture.
"""

from __future__ import annotations

import json
import os
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
from tests.support.gateway import OWN_DOMAIN, new_gateway, same_content
from tests.support.procs import free_port

pytestmark = pytest.mark.integration

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def gateway(serve):
    require("postfix", "postconf", "tor", "torsocks")
    gw = new_gateway(serve.socketmap)
    yield gw
    gw.close()


def _as_nobody(*args: str, cwd: Path = Path("/")) -> subprocess.CompletedProcess:
    return subprocess.run([*NOBODY, sys.executable, "-m", "onion_gateway", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})


# --- item 3: --rollback honours --dry-run and asks unless --yes -----------------------------------------

def test_item3_rollback_dry_run_shows_and_changes_nothing(gateway):
    gateway.setup("--yes")
    after_setup = gateway.snapshot()
    out = gateway.setup("--rollback", "--dry-run").output
    assert f"would restore {gateway.pf.config_dir / 'main.cf'}" in out
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
