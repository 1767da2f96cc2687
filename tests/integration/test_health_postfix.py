"""The queue and log readers against a live private Postfix, with the gateway's routing deciding.

The instance has an ``smtptor`` transport (Postfix's smtp with ``-o syslog_name=postfix/smtptor``, as
setup writes it) and routes by a static transport table: ``single.example.test`` (whose SRV record in
the test zone names an onion) to a closed loopback port, ``sent.example.test`` to an smtp-sink.
Everything else goes to the dead relayhost via plain smtp. The routing decision comes from
:class:`RouterRoutes` over the session's dnsmasq: ``single.example.test`` is onion mail,
``nx.example.test`` (no SRV) is not, ``x.servfail.test`` (SERVFAIL) is undecided.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onion_gateway.config import ServeSettings, parse_dns_server, parse_listen_address
from onion_gateway.errors import HealthSourceError
from onion_gateway.health.maillog import log_source, read_deliveries, read_journal, transport_syslog_names
from onion_gateway.health.queue import read_queue
from onion_gateway.health.report import HealthSettings, assess
from onion_gateway.health.routes import RouterRoutes
from onion_gateway.health.verdicts import HealthThresholds, Suggestion, check_delivery, check_queue
from onion_gateway.status import Verdict
from onion_gateway.tor import TorControl
from tests.conftest import require
from tests.support.onions import ONION_A
from tests.support.postfix import new_instance, route_over_smtptor, smtp_sink
from tests.support.procs import free_port, wait_for
from tests.support.tor import running_tor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(dns_server):
    require("postfix", "postqueue", "smtp-sink", "setpriv")
    sink_port, dead_port = free_port(), free_port()
    pf = new_instance("og-health-pf-", hostname="gw.lab.test", domains=["lab.test"])
    route_over_smtptor(pf, {"single.example.test": dead_port, "sent.example.test": sink_port})
    pf.write()
    try:
        with smtp_sink(sink_port):
            pf.start()
            with pf.smtp() as client:
                client.sendmail("alice@lab.test", ["bob@sent.example.test"], "Subject: ok\r\n\r\nout\r\n")
                client.sendmail("alice@lab.test", ["carol@single.example.test", "dave@single.example.test",
                                                   "erin@nx.example.test", "frank@x.servfail.test"],
                                "Subject: multi\r\n\r\nstuck\r\n")
            wait_for(lambda: pf.log_text().count("status=deferred") >= 4 and "status=sent" in pf.log_text(), 60,
                     "first delivery attempts", pf.log_text)
            wait_for(lambda: len(pf.queue_ids()) == 1, 30, "the deferred message in postqueue -j")
            settings = ServeSettings(dns_servers=(parse_dns_server(dns_server.address),), dns_timeout_seconds=2.0,
                                     postfix_config_dir=pf.config_dir)
            yield pf, settings
    finally:
        pf.stop()
        shutil.rmtree(pf.root, ignore_errors=True)


def test_router_decides_onion_clear_and_undecided(lab):
    _, settings = lab
    with RouterRoutes.from_settings(settings) as routes:
        assert routes("single.example.test") is True
        assert routes.onions("single.example.test") == (ONION_A,)
        assert routes("nx.example.test") is False
        assert routes("x.servfail.test") is None
        assert routes("lab.test") is False            # Postfix's own domain is never onion mail


def test_queue_view_of_the_live_instance(lab):
    pf, settings = lab
    with RouterRoutes.from_settings(settings) as routes:
        view = read_queue(pf.config_dir, routes, per_partner=True)
    assert (view.messages, view.recipients) == (1, 2)          # carol and dave
    assert view.other_recipients == 1                          # erin: no SRV record
    assert view.undecided_recipients == 1                      # frank: SERVFAIL now
    assert view.top_reason_count == 2 and "Connection refused" in view.top_reason
    assert [p.domain for p in view.partners] == ["single.example.test"]
    assert 0 < view.oldest_seconds < 300


def test_oldest_age_grows_while_mail_waits(lab):
    pf, _ = lab
    first = read_queue(pf.config_dir, lambda d: d == "single.example.test")
    time.sleep(1.1)
    second = read_queue(pf.config_dir, lambda d: d == "single.example.test")
    assert second.oldest_seconds >= first.oldest_seconds + 1.0


def test_queue_verdict_with_a_low_warning_threshold(lab):
    pf, _ = lab
    view = read_queue(pf.config_dir, lambda d: d == "single.example.test")
    assert check_queue(view, HealthThresholds(0, 3600)).verdict is Verdict.WARN
    assert check_queue(view, HealthThresholds()).verdict is Verdict.OK


def test_log_source_is_the_maillog_file_and_the_transports_syslog_name(lab):
    pf, _ = lab
    source = log_source(pf.config_dir)
    assert source.path == pf.maillog
    assert source.syslog_names == ("postfix/smtptor",)


def test_delivery_view_of_the_live_log(lab):
    pf, _ = lab
    view = read_deliveries(log_source(pf.config_dir), window_seconds=3600)
    assert view.sent == 1 and view.last_sent.recipient == "bob@sent.example.test"
    assert view.deferred >= 2
    assert {view.last_failed.recipient} <= {"carol@single.example.test", "dave@single.example.test"}
    # erin's and frank's deferrals went through plain smtp: not counted
    assert view.bounced == 0
    check = check_delivery(view, HealthThresholds(0, 3600))
    assert check.target == str(pf.maillog)
    assert check.verdict is Verdict.WARN                     # failing for more than 0 s: the warning threshold


def test_a_short_window_sees_nothing(lab):
    pf, _ = lab
    view = read_deliveries(log_source(pf.config_dir), window_seconds=3600, now=time.time() + 7200)
    assert (view.sent, view.deferred, view.last_sent) == (0, 0, None)


def test_transport_without_its_own_syslog_name_is_refused(lab):
    pf, _ = lab
    with pytest.raises(HealthSourceError, match="cannot be told apart"):
        transport_syslog_names(pf.config_dir, "relay")
    with pytest.raises(HealthSourceError, match="no nosuch/unix service"):
        transport_syslog_names(pf.config_dir, "nosuch")


def test_readers_change_nothing(lab):
    pf, settings = lab
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in pf.config_dir.iterdir() if p.is_file()}
    ids = pf.queue_ids()
    with RouterRoutes.from_settings(settings) as routes:
        read_queue(pf.config_dir, routes)
    read_deliveries(log_source(pf.config_dir), window_seconds=60)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in pf.config_dir.iterdir() if p.is_file()} == files
    assert pf.queue_ids() == ids


def run_as_nobody(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                           "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ, "HOME": "/"})


def test_non_root_user_gets_a_clear_error_for_an_alternate_instance(lab):
    pf, _ = lab
    done = run_as_nobody(
        "from pathlib import Path\n"
        "from onion_gateway.errors import HealthSourceError\n"
        "from onion_gateway.health.queue import read_queue\n"
        f"try:\n    read_queue(Path({str(pf.config_dir)!r}), lambda d: True)\n"
        "except HealthSourceError as exc:\n    print('ERR', exc)\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ERR cannot list the mail queue")
    assert "alternate_config_directories" in done.stdout


def test_unreadable_maillog_is_a_clear_error_for_a_user_without_access(lab, tmp_path):
    pf, _ = lab
    private = pf.root / "private-maillog"
    shutil.copy(pf.maillog, private)
    private.chmod(0o600)
    done = run_as_nobody(
        "from pathlib import Path\n"
        "from onion_gateway.errors import HealthSourceError\n"
        "from onion_gateway.health.maillog import read_maillog\n"
        f"try:\n    read_maillog(Path({str(private)!r}), ('postfix/smtptor',), 60)\n"
        "except HealthSourceError as exc:\n    print('ERR', exc)\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ERR cannot read the mail log {private}: Permission denied")


def test_journal_that_cannot_be_opened_is_a_clear_error(tmp_path):
    require("journalctl")
    with pytest.raises(HealthSourceError, match="journalctl failed"):
        read_journal(("postfix/smtptor",), 60, journal_directory=tmp_path / "none")


def test_a_dns_outage_costs_one_timeout_not_one_per_domain(lab):
    _, settings = lab
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blackhole:     # never answers
        blackhole.bind(("127.0.0.1", 0))
        dead = dataclasses.replace(settings, dns_servers=(blackhole.getsockname(),), dns_timeout_seconds=1.0)
        domains = [f"d{i}.example.test" for i in range(40)]
        started = time.monotonic()
        with RouterRoutes.from_settings(dead) as routes:
            routes.prime(domains)
            answers = [routes(d) for d in domains]
        elapsed = time.monotonic() - started
    assert answers == [None] * 40                     # DNS failed: undecided, never "not onion"
    assert elapsed < 10, f"{elapsed:.1f} s for 40 domains with a 1 s DNS timeout"


@pytest.fixture(scope="module")
def no_network_tor():
    with running_tor("og-health-pf-tor-") as proc:
        yield proc


def test_assess_names_tor_when_our_tor_cannot_build_circuits(lab, no_network_tor):
    pf, settings = lab
    health = HealthSettings(postfix_config_dir=pf.config_dir, thresholds=HealthThresholds(0, 3600),
                            fetch_timeout_seconds=2.0)
    with RouterRoutes.from_settings(settings) as routes, \
            TorControl(parse_listen_address(no_network_tor.control)) as control:
        report = assess(health, routes, control, no_network_tor.control)
    by_name = {c.name: c for c in report.checks}
    assert [c.name for c in report.checks] == ["tor_circuits", "smtptor_queue", "partner_queue", "smtptor_delivery"]
    assert by_name["tor_circuits"].verdict is Verdict.FAIL
    assert by_name["smtptor_queue"].verdict is Verdict.WARN
    assert by_name["smtptor_queue"].suggestion == Suggestion.RESTART_TOR.value
    assert by_name["partner_queue"].target == "single.example.test"
    assert by_name["smtptor_delivery"].suggestion == Suggestion.RESTART_TOR.value
    assert report.fetches == {}          # no point asking HSDirs without circuits
    assert report.queue.recipients == 2 and report.delivery.sent == 1


def test_assess_without_tor_and_with_an_unreadable_source(lab, tmp_path):
    pf, _ = lab
    health = HealthSettings(postfix_config_dir=pf.config_dir, log_file=tmp_path / "missing.log")
    report = assess(health, lambda d: d == "single.example.test")
    by_name = {c.name: c for c in report.checks}
    assert "tor_circuits" not in by_name
    assert by_name["smtptor_queue"].verdict is Verdict.OK          # 2 deferred, younger than 1800 s
    assert by_name["smtptor_delivery"].verdict is Verdict.WARN
    assert by_name["smtptor_delivery"].detail.startswith("cannot tell: cannot read the mail log")
    assert report.delivery is None and report.tor is None


# --- onion-gateway status (the CLI) ------------------------------------------------------------------------


def status_cli(*args: str) -> tuple[int, dict[str, list[str]], str]:
    """Run ``onion-gateway status ARGS`` in-process (click's runner).

    :returns: the exit code, ``{check name: [whole lines]}`` and the output (for messages).
    """
    from click.testing import CliRunner

    from onion_gateway.cli import main

    result = CliRunner().invoke(main, ["status", *args], catch_exceptions=False)
    lines: dict[str, list[str]] = {}
    for line in result.output.splitlines():
        if line.split()[:1] in (["ok"], ["warn"], ["fail"]):
            lines.setdefault(line.split()[1], []).append(line)
    return result.exit_code, lines, result.output


def lab_config(tmp_path: Path, settings: ServeSettings, health: str = "") -> Path:
    config = tmp_path / "og.toml"
    dns = "{}:{}".format(*settings.dns_servers[0])
    config.write_text(f'[serve]\ndns_servers = ["{dns}"]\ndns_timeout_seconds = 2.0\n'
                      f'postfix_config_dir = "{settings.postfix_config_dir}"\n' + health)
    return config


def test_status_fails_naming_tor_when_it_cannot_build_circuits(lab, no_network_tor, tmp_path):
    """status on the live instance with a Tor that has no circuits: tor_circuits fails from the control
    port, the deferred onion mail (over the --deferred-warn 0 threshold) is a warning whose suggestion
    is to restart tor, each check is one line, exit 1."""
    pf, settings = lab
    code, lines, output = status_cli("--config", str(lab_config(tmp_path, settings)), "--postfix-config-dir",
                                     str(pf.config_dir), "--tor-control", no_network_tor.control, "--no-audit",
                                     "--deferred-warn", "0", "--fetch-timeout", "2")
    assert code == 1, output
    assert [line.split()[0] for line in lines["tor_circuits"]] == ["fail"], output
    assert "circuit-established=0" in lines["tor_circuits"][0]
    assert lines["tor_circuits"][0].endswith(" -- " + Suggestion.RESTART_TOR.value)
    queue_line, = lines["smtptor_queue"]
    assert queue_line.startswith("warn ") and "1 message(s), 2 recipient(s) deferred" in queue_line
    assert queue_line.endswith(" -- " + Suggestion.RESTART_TOR.value)
    assert lines["partner_queue"][0].split()[2] == "single.example.test"
    assert "partner_onion" not in lines                    # no descriptor fetch without circuits
    assert lines["smtptor_delivery"][0].split()[2] == str(pf.maillog)


def test_status_thresholds_come_from_the_config_file_and_options_override(lab, tmp_path):
    """[health] deferred_warn_seconds = 0 makes the young deferred mail a warning; --deferred-warn 3600
    on the command line puts it back to ok. Without Tor the suggestion is to check that tor runs."""
    pf, settings = lab
    config = lab_config(tmp_path, settings, "[health]\ndeferred_warn_seconds = 0\ndeferred_fail_seconds = 7200\n")
    base = ["--config", str(config), "--postfix-config-dir", str(pf.config_dir), "--no-tor", "--no-audit"]
    code, lines, output = status_cli(*base)
    assert lines["smtptor_queue"][0].startswith("warn "), output
    assert lines["smtptor_queue"][0].endswith(" -- " + Suggestion.CHECK_TOR.value)
    assert "tor_circuits" not in lines
    code, lines, output = status_cli(*base, "--deferred-warn", "3600")
    assert lines["smtptor_queue"][0].startswith("ok "), output
    assert " -- " not in lines["smtptor_queue"][0]
    code, lines, output = status_cli(*base, "--no-health")
    assert not {"smtptor_queue", "smtptor_delivery", "partner_queue"} & set(lines), output


@pytest.mark.parametrize("health,message", [
    ("[health]\ndeferred_warn_secs = 5\n", "health.deferred_warn_secs: unknown setting"),
    ("[health]\ndeferred_warn_seconds = \"soon\"\n", "health.deferred_warn_seconds: expected a number"),
    ("[health]\ndeferred_warn_seconds = 100\ndeferred_fail_seconds = 10\n", "is below health.deferred_warn_seconds"),
])
def test_status_refuses_bad_health_settings_with_exit_78(lab, tmp_path, health, message):
    _, settings = lab
    code, _, output = status_cli("--config", str(lab_config(tmp_path, settings, health)), "--no-tor")
    assert code == 78, output
    assert message in output and "Traceback" not in output


def test_status_as_a_user_postfix_refuses_is_one_clear_line(lab):
    """As nobody (not allowed -c for an alternate instance), the queue check says why in one line."""
    pf, settings = lab
    config = lab_config(pf.root, settings)
    config.chmod(0o644)
    done = run_as_nobody(
        "import sys\nfrom onion_gateway.cli import main\n"
        f"sys.argv = ['onion-gateway', 'status', '--config', {str(config)!r}, '--postfix-config-dir', "
        f"{str(pf.config_dir)!r}, '--no-tor', '--no-audit']\nmain()\n")
    queue_lines = [line for line in done.stdout.splitlines() if line.split()[1:2] == ["smtptor_queue"]]
    assert len(queue_lines) == 1, done.stdout + done.stderr
    assert queue_lines[0].startswith("warn  smtptor_queue    deferred onion mail  cannot tell: cannot list the mail queue")
    assert "alternate_config_directories" in queue_lines[0]
    assert "Traceback" not in done.stderr


# --- the health gauges (onion_gateway.health.metrics) on the live instance -----------------------------------


def test_metrics_sample_of_the_live_instance(lab, no_network_tor):
    """compute_sample reads the same queue and log as status: 1 deferred onion message with 2 recipients,
    the smtp-sink delivery as the last one, and a Tor without circuits as 0."""
    from onion_gateway.health.metrics import compute_sample

    pf, settings = lab
    sample = compute_sample(settings, parse_listen_address(no_network_tor.control))
    assert sample.errors == {}
    assert (sample.queue.messages, sample.queue.recipients) == (1, 2)
    assert sample.delivery.last_sent.recipient == "bob@sent.example.test"
    assert sample.tor is not None and sample.tor.circuit_established is False


def test_health_gauges_of_the_live_instance_over_http(lab, no_network_tor):
    """register_health_metrics (the daemon's hook) on a real registry served over loopback HTTP by
    prometheus_client: the gauges of the live instance, and the oldest age grows between computations."""
    import threading
    import urllib.request
    from wsgiref.simple_server import make_server

    from prometheus_client import CollectorRegistry, make_wsgi_app

    from onion_gateway.health.metrics import register_health_metrics

    pf, settings = lab
    serve = dataclasses.replace(settings, health_metrics_interval_seconds=1.0,
                                health_tor_control=parse_listen_address(no_network_tor.control))
    registry = CollectorRegistry()
    collector = register_health_metrics(registry, serve)
    assert collector is not None
    server = make_server("127.0.0.1", 0, make_wsgi_app(registry))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

    def scrape() -> dict[str, float]:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("onion_gateway_")}

    try:
        deadline = time.monotonic() + 20
        while "onion_gateway_smtptor_deferred" not in (first := scrape()):   # the first computation
            assert time.monotonic() < deadline, first
            time.sleep(0.2)
        assert first["onion_gateway_smtptor_deferred"] == 1.0
        assert first["onion_gateway_smtptor_deferred_recipients"] == 2.0
        assert first["onion_gateway_tor_circuit_established"] == 0.0
        assert first['onion_gateway_health_source_up{source="queue"}'] == 1.0
        sent = [line for line in pf.log_text().splitlines() if "postfix/smtptor/smtp" in line and "status=sent" in line]
        assert sent and abs(first["onion_gateway_smtptor_last_delivery_timestamp_seconds"] - time.time()) < 3600
        time.sleep(1.2)
        second = scrape()
        assert second["onion_gateway_smtptor_oldest_deferred_seconds"] > first["onion_gateway_smtptor_oldest_deferred_seconds"]
    finally:
        server.shutdown()
        server.server_close()
