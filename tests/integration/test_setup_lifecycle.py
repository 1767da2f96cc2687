"""Issue 11, day one on a real host: setup -> daemon -> status -> audit -> rollback as one safe path.

Each test names the issue item it proves. Everything runs against a private Postfix instance and a real
tor (DisableNetwork 1) on loopback (tests/support/gateway.py); the daemon is the real ``onion-gateway
serve`` of the session fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from onion_gateway.cli import main
from tests.conftest import require
from tests.support.gateway import new_gateway, same_content

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

