"""Where the daemon's Tor gauge asks, against real tors with ``DisableNetwork 1`` (no circuits, ever).

One tor has a control password (``HashedControlPassword``), one cookie authentication. The gauge asks
``[serve] health_tor_control`` with ``health_tor_control_password_file``, or, without
``health_tor_control``, the control address in setup's state record (``health_setup_state_dir``, by
default ``[setup] state_dir``). No Postfix is configured (its queue and log sources are simply down),
so these tests look at the Tor source only; a real ``onion-gateway serve`` shows the gauge on /metrics.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from onion_gateway.config import ServeSettings, parse_dns_server, parse_listen_address
from onion_gateway.health.metrics import TorTargetFinder, compute_with
from onion_gateway.setup.state import SetupRecord
from tests.support.daemon import ServeProcess
from tests.support.procs import free_port
from tests.support.tor import running_tor

pytestmark = pytest.mark.integration

PASSWORD = "s3cret gauge"


@pytest.fixture(scope="module")
def password_tor():
    with running_tor("og-gauge-pw-", password=PASSWORD) as proc:
        yield proc


@pytest.fixture(scope="module")
def cookie_tor():
    with running_tor("og-gauge-ck-") as proc:
        yield proc


@pytest.fixture
def base(tmp_path, dns_server) -> ServeSettings:
    """Daemon settings with no Postfix behind them and no setup record."""
    return ServeSettings(postfix_config_dir=tmp_path / "no-postfix", dns_servers=(parse_dns_server(dns_server.address),),
                         dns_timeout_seconds=1.0, health_setup_state_dir=tmp_path / "no-setup")


def write_record(state_dir: Path, tor_control: str) -> Path:
    """Setup's state record naming *tor_control* (SetupRecord.to_json under the manifest's ``listener`` key)."""
    record = SetupRecord(parse_listen_address("127.0.0.1:2525"), 25, None, None, "test",
                         tor_control=parse_listen_address(tor_control))
    state_dir.mkdir(mode=0o700, exist_ok=True)
    (state_dir / "manifest.json").write_text(json.dumps({"listener": record.to_json()}))
    return state_dir


def sample_of(serve: ServeSettings):
    return compute_with(serve, TorTargetFinder(serve, serve.health_setup_state_dir))


def test_the_password_file_opens_a_password_protected_control_port(base, password_tor, tmp_path):
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    serve = replace(base, health_tor_control=parse_listen_address(password_tor.control),
                             health_tor_control_password_file=tmp_path / "pw")
    sample = sample_of(serve)
    assert "tor" not in sample.errors, sample.errors
    assert sample.tor_configured and sample.tor is not None and sample.tor.circuit_established is False


def test_without_the_password_file_the_port_wants_a_password(base, password_tor):
    serve = replace(base, health_tor_control=parse_listen_address(password_tor.control))
    sample = sample_of(serve)
    assert sample.tor_configured and sample.tor is None
    assert "wants a password" in sample.errors["tor"]


@pytest.mark.parametrize("content,message", [(None, "cannot read the control password file"),
                                             ("wrong", "refused authentication")])
def test_a_missing_or_wrong_password_file_is_a_down_tor_source(base, password_tor, tmp_path, content, message):
    if content is not None:
        (tmp_path / "pw").write_text(content)
    serve = replace(base, health_tor_control=parse_listen_address(password_tor.control),
                             health_tor_control_password_file=tmp_path / "pw")
    sample = sample_of(serve)
    assert sample.tor_configured and sample.tor is None and message in sample.errors["tor"]


def test_the_record_names_the_control_port(base, cookie_tor, tmp_path):
    serve = replace(base, health_setup_state_dir=write_record(tmp_path / "st", cookie_tor.control))
    sample = sample_of(serve)
    assert "tor" not in sample.errors, sample.errors
    assert sample.tor_configured and sample.tor.circuit_established is False


def test_the_records_control_port_with_the_password_file(base, password_tor, tmp_path):
    (tmp_path / "pw").write_text(PASSWORD)
    serve = replace(base, health_setup_state_dir=write_record(tmp_path / "st", password_tor.control),
                             health_tor_control_password_file=tmp_path / "pw")
    sample = sample_of(serve)
    assert "tor" not in sample.errors, sample.errors
    assert sample.tor is not None and sample.tor.bootstrap_progress < 100


# --- the daemon ------------------------------------------------------------------------------------------------


def scrape_tor(metrics_port: int, deadline_seconds: float = 30.0) -> dict[str, float]:
    """The daemon's health source gauges and Tor gauge, once the first computation has finished."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        found = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith(("onion_gateway_health_source_up", "onion_gateway_tor_circuit_established"))}
        if 'onion_gateway_health_source_up{source="queue"}' in found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def run_daemon(config: Path, dns_server) -> tuple[ServeProcess, int]:
    metrics_port = free_port()
    proc = ServeProcess(["--config", str(config), "--dns-server", dns_server.address,
                         "--metrics-address", f"127.0.0.1:{metrics_port}"]).start()
    return proc, metrics_port


def test_a_set_up_host_gets_the_tor_gauge_from_setups_record(cookie_tor, dns_server, tmp_path):
    write_record(tmp_path / "setup-state", cookie_tor.control)
    config = tmp_path / "og.toml"
    config.write_text(f'[serve]\npostfix_config_dir = "{tmp_path / "no-postfix"}"\nexclude_postfix_domains = false\n'
                      'health_metrics_interval_seconds = 1\n[setup]\nstate_dir = "setup-state"\n')
    proc, port = run_daemon(config, dns_server)
    try:
        found = scrape_tor(port)
        assert found.get('onion_gateway_health_source_up{source="tor"}') == 1.0, proc.log()
        assert found["onion_gateway_tor_circuit_established"] == 0.0
        proc.wait_log(f"Tor gauge asks {cookie_tor.control}, from {tmp_path / 'setup-state' / 'manifest.json'}")
    finally:
        proc.stop()


def test_without_a_record_there_is_no_tor_gauge_and_one_log_line(dns_server, tmp_path):
    config = tmp_path / "og.toml"
    config.write_text(f'[serve]\npostfix_config_dir = "{tmp_path / "no-postfix"}"\nexclude_postfix_domains = false\n'
                      f'health_metrics_interval_seconds = 1\nhealth_setup_state_dir = "{tmp_path / "none"}"\n')
    proc, port = run_daemon(config, dns_server)
    try:
        first = scrape_tor(port)
        time.sleep(2.5)                                   # two more computations at the 1 s interval
        again = scrape_tor(port)
        assert 'onion_gateway_health_source_up{source="queue"}' in first
        assert not any("tor" in key for key in {**first, **again}), again
        assert proc.log().count("no Tor gauge") == 1, proc.log()
        assert proc.proc.poll() is None                   # and it runs on
    finally:
        proc.stop()
