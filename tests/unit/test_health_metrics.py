"""The health gauges collector, scraped through a real prometheus_client registry and HTTP server on loopback.

The computation is injected (a function returning a :class:`HealthSample`) so that a slow or failing
computation can be produced on demand; the live readers behind it are tested in
tests/integration/test_health_postfix.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app

from onion_gateway.config import ServeSettings, parse_listen_address, serve_settings
from onion_gateway.errors import ConfigError
from onion_gateway.health.maillog import DeliveryEvent, DeliveryView
from onion_gateway.health.metrics import (HealthCollector, HealthSample, TorTargetFinder, compute_with,
                                          register_health_metrics)
from onion_gateway.health.queue import QueueView
from onion_gateway.health.tor_health import TorSendingState
from onion_gateway.setup.state import SetupRecord

SENT_AT = 1_796_086_978.0


def queue(messages=2, recipients=3, oldest=2460.0) -> QueueView:
    return QueueView(messages, recipients, oldest, "connect to x.onion: Connection refused", recipients, 0, 0, (),
                     SENT_AT + 3000)


def delivery(last_sent: float | None = SENT_AT) -> DeliveryView:
    event = DeliveryEvent(last_sent, "sent", "ABC", "a@p.test", "x.onion[127.0.0.1]:25", "250 ok") \
        if last_sent is not None else None
    return DeliveryView(86400.0, SENT_AT + 3000, 1 if event else 0, 0, 0, event, None, None, "/var/log/x")


TOR_OK = TorSendingState(100, "done", "Done", True, "up")
TOR_DOWN = TorSendingState(100, "done", "Done", False, "down")


class Http:
    """A real prometheus_client WSGI app on 127.0.0.1:<free port>, serving *registry*."""

    def __init__(self, registry: CollectorRegistry) -> None:
        class Quiet(WSGIRequestHandler):
            def log_message(self, *args) -> None:
                pass
        self.server = make_server("127.0.0.1", 0, make_wsgi_app(registry), handler_class=Quiet)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def scrape(self) -> dict[str, float]:
        """``{sample line name with labels: value}`` of /metrics."""
        url = f"http://127.0.0.1:{self.server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("onion_gateway_")}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served():
    """``(registry, http)``; closed after the test."""
    registry = CollectorRegistry()
    http = Http(registry)
    yield registry, http
    http.close()


def test_gauges_show_the_computed_figures(served):
    registry, http = served
    registry.register(HealthCollector(lambda: HealthSample(time.time(), queue(), delivery(), TOR_OK, {}, True), 60))
    assert http.scrape() == {
        'onion_gateway_health_source_up{source="queue"}': 1.0,
        'onion_gateway_health_source_up{source="log"}': 1.0,
        'onion_gateway_health_source_up{source="tor"}': 1.0,
        "onion_gateway_smtptor_deferred": 2.0,
        "onion_gateway_smtptor_deferred_recipients": 3.0,
        "onion_gateway_smtptor_oldest_deferred_seconds": 2460.0,
        "onion_gateway_smtptor_last_delivery_timestamp_seconds": SENT_AT,
        "onion_gateway_tor_circuit_established": 1.0,
    }


def test_a_source_that_cannot_be_read_leaves_its_gauges_out(served):
    registry, http = served
    sample = HealthSample(time.time(), None, None, None, {"queue": "denied", "log": "denied", "tor": "refused"}, True)
    registry.register(HealthCollector(lambda: sample, 60))
    assert http.scrape() == {
        'onion_gateway_health_source_up{source="queue"}': 0.0,
        'onion_gateway_health_source_up{source="log"}': 0.0,
        'onion_gateway_health_source_up{source="tor"}': 0.0,
        "onion_gateway_tor_circuit_established": 0.0,          # Tor does not answer: cannot send
    }


def test_without_a_tor_control_address_there_is_no_tor_gauge_and_no_delivery_is_0(served):
    registry, http = served
    registry.register(HealthCollector(lambda: HealthSample(time.time(), queue(0, 0, 0.0), delivery(None)), 60))
    scraped = http.scrape()
    assert 'onion_gateway_health_source_up{source="tor"}' not in scraped
    assert "onion_gateway_tor_circuit_established" not in scraped
    assert scraped["onion_gateway_smtptor_deferred"] == 0.0
    assert scraped["onion_gateway_smtptor_oldest_deferred_seconds"] == 0.0
    assert scraped["onion_gateway_smtptor_last_delivery_timestamp_seconds"] == 0.0


def test_tor_without_circuits_is_0(served):
    registry, http = served
    registry.register(HealthCollector(lambda: HealthSample(time.time(), queue(), delivery(), TOR_DOWN, {}, True), 60))
    assert http.scrape()["onion_gateway_tor_circuit_established"] == 0.0


def test_computed_at_most_once_per_interval(served):
    registry, http = served
    calls = []

    def compute() -> HealthSample:
        calls.append(time.monotonic())
        return HealthSample(time.time(), queue(messages=len(calls)))

    collector = HealthCollector(compute, interval_seconds=0.5)
    registry.register(collector)
    first = [http.scrape()["onion_gateway_smtptor_deferred"] for _ in range(10)]
    assert first == [1.0] * 10 and len(calls) == 1
    time.sleep(0.6)
    assert http.scrape()["onion_gateway_smtptor_deferred"] == 2.0
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.5


def test_a_slow_computation_does_not_hold_the_scrape_beyond_the_wait(served):
    """While the worker is stuck, a scrape returns after wait_seconds with the previous figures (none at
    first); the worker's result shows at the next scrape."""
    registry, http = served
    release = threading.Event()
    results = iter([queue(messages=1), queue(messages=7)])

    def compute() -> HealthSample:
        view = next(results)
        if view.messages == 7:
            release.wait(30)
        return HealthSample(time.time(), view)

    collector = HealthCollector(compute, interval_seconds=0.0, wait_seconds=0.3)
    registry.register(collector)
    assert http.scrape()["onion_gateway_smtptor_deferred"] == 1.0
    started = time.monotonic()
    scraped = http.scrape()                   # starts the stuck computation, waits 0.3 s, shows the old figures
    assert time.monotonic() - started < 5
    assert scraped["onion_gateway_smtptor_deferred"] == 1.0
    assert collector.computations == 2
    http.scrape()                              # still running: no second worker
    assert collector.computations == 2
    release.set()
    deadline = time.monotonic() + 10
    while http.scrape()["onion_gateway_smtptor_deferred"] != 7.0:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_scrape_on_an_event_loop_never_waits():
    """The daemon's own HTTP server renders /metrics on its event loop: the collector must not block it."""
    release = threading.Event()

    def compute() -> HealthSample:
        release.wait(30)
        return HealthSample(time.time(), queue(messages=4))

    registry = CollectorRegistry()
    registry.register(HealthCollector(compute, interval_seconds=60, wait_seconds=20))

    async def scrape() -> tuple[float, bytes]:
        started = time.monotonic()
        text = generate_latest(registry)
        return time.monotonic() - started, text

    try:
        elapsed, text = asyncio.run(scrape())
    finally:
        release.set()
    assert elapsed < 5                      # not the 20 s wait
    assert b"onion_gateway_smtptor_deferred" not in text


def test_the_last_delivery_is_remembered_after_it_leaves_the_window(served):
    registry, http = served
    samples = iter([HealthSample(time.time(), delivery=delivery(SENT_AT)),
                    HealthSample(time.time(), delivery=delivery(None))])
    registry.register(HealthCollector(lambda: next(samples), interval_seconds=0.0))
    assert http.scrape()["onion_gateway_smtptor_last_delivery_timestamp_seconds"] == SENT_AT
    assert http.scrape()["onion_gateway_smtptor_last_delivery_timestamp_seconds"] == SENT_AT


def test_a_failing_computation_keeps_the_previous_figures(served):
    registry, http = served
    samples = iter([HealthSample(time.time(), queue(messages=5))])
    registry.register(HealthCollector(lambda: next(samples), interval_seconds=0.0))
    assert http.scrape()["onion_gateway_smtptor_deferred"] == 5.0
    assert http.scrape()["onion_gateway_smtptor_deferred"] == 5.0     # StopIteration logged, figures kept


def test_register_is_off_with_interval_0():
    settings = serve_settings({"health_metrics_interval_seconds": 0})
    assert register_health_metrics(CollectorRegistry(), settings) is None


@pytest.mark.parametrize("key,value,message", [
    ("health_metrics_interval_seconds", 0.5, "expected 0 (off) or 1 to 86400 seconds"),
    ("health_metrics_interval_seconds", "60", "expected 0 (off) or 1 to 86400 seconds"),
    ("health_tor_control", "nowhere", "serve.health_tor_control"),
])
def test_bad_health_metric_settings_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        serve_settings({key: value})


def test_health_metric_settings_defaults_and_values():
    assert ServeSettings().health_metrics_interval_seconds == 60.0 and ServeSettings().health_tor_control is None
    settings = serve_settings({"health_metrics_interval_seconds": 15, "health_tor_control": "unix:/run/tor/control"})
    assert settings.health_metrics_interval_seconds == 15.0
    assert str(settings.health_tor_control) == "unix:/run/tor/control"


# --- where the Tor gauge asks: health_tor_control, else setup's record ---------------------------------------


def test_tor_gauge_settings_take_files_relative_to_the_config_file(tmp_path):
    settings = serve_settings({"health_tor_control": "127.0.0.1:9051", "health_tor_control_password_file": "pw",
                               "health_setup_state_dir": "state"}, base_dir=tmp_path)
    assert settings.health_tor_control_password_file == tmp_path / "pw"
    assert settings.health_setup_state_dir == tmp_path / "state"
    assert ServeSettings().health_tor_control_password_file is None and ServeSettings().health_setup_state_dir is None


def test_the_daemon_looks_for_setups_record_where_the_setup_table_keeps_it(tmp_path):
    from onion_gateway.cli.common import serve_settings_from

    config = tmp_path / "og.toml"
    config.write_text('[serve]\n[setup]\nstate_dir = "setup-state"\n')
    assert serve_settings_from(config, {}).health_setup_state_dir == tmp_path / "setup-state"
    config.write_text('[serve]\nhealth_setup_state_dir = "/elsewhere"\n[setup]\nstate_dir = "setup-state"\n')
    assert serve_settings_from(config, {}).health_setup_state_dir == Path("/elsewhere")
    config.write_text('[serve]\n')
    assert serve_settings_from(config, {}).health_setup_state_dir is None       # setup's default


def write_record(state_dir: Path, tor_control: str | None) -> None:
    """A state record as setup writes it (SetupRecord.to_json under the manifest's ``listener`` key)."""
    record = SetupRecord(parse_listen_address("127.0.0.1:2525"), 25, None, None, "test",
                         tor_control=parse_listen_address(tor_control) if tor_control else None)
    state_dir.mkdir(exist_ok=True)
    (state_dir / "manifest.json").write_text(json.dumps({"listener": record.to_json()}))


def test_health_tor_control_wins_over_the_record(tmp_path):
    write_record(tmp_path, "unix:/run/tor/control")
    serve = ServeSettings(health_tor_control=parse_listen_address("127.0.0.1:9051"),
                          health_tor_control_password_file=tmp_path / "pw")
    target = TorTargetFinder(serve, tmp_path).find()
    assert (str(target.address), target.password_file, target.origin) == ("127.0.0.1:9051", tmp_path / "pw",
                                                                         "health_tor_control")


def test_the_record_names_the_control_port_and_the_password_file_is_the_setting(tmp_path):
    write_record(tmp_path, "unix:/run/tor/control")
    serve = ServeSettings(health_tor_control_password_file=tmp_path / "pw")
    target = TorTargetFinder(serve, tmp_path).find()
    assert (str(target.address), target.password_file) == ("unix:/run/tor/control", tmp_path / "pw")
    assert "manifest.json" in target.origin


@pytest.mark.parametrize("state", ["absent", "garbage", "no tor_control"])
def test_no_usable_record_is_no_tor_gauge_and_one_log_line(tmp_path, caplog, state):
    if state == "garbage":
        (tmp_path / "manifest.json").write_text("{not json")
    elif state == "no tor_control":
        write_record(tmp_path, None)
    finder = TorTargetFinder(ServeSettings(), tmp_path)
    with caplog.at_level(logging.INFO, logger="onion_gateway.health.metrics"):
        assert [finder.find() for _ in range(3)] == [None, None, None]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("health metrics: no Tor gauge: health_tor_control is not set")


def test_a_record_written_after_the_start_is_picked_up_and_kept(tmp_path, caplog):
    # setup starts the daemon before it writes the record; later the daemon may no longer be root
    finder = TorTargetFinder(ServeSettings(), tmp_path)
    assert finder.find() is None
    write_record(tmp_path, "127.0.0.1:9051")
    with caplog.at_level(logging.INFO, logger="onion_gateway.health.metrics"):
        assert str(finder.find().address) == "127.0.0.1:9051"
        (tmp_path / "manifest.json").unlink()
        assert str(finder.find().address) == "127.0.0.1:9051"
    assert [r.getMessage() for r in caplog.records] == [
        f"health metrics: Tor gauge asks 127.0.0.1:9051, from {tmp_path / 'manifest.json'} (setup record)"]


def test_without_a_tor_target_the_sample_has_no_tor_gauge(tmp_path):
    serve = ServeSettings(postfix_config_dir=tmp_path / "no-postfix", dns_servers=(("127.0.0.1", 9),))
    sample = compute_with(serve, TorTargetFinder(serve, tmp_path))
    assert sample.tor_configured is False and "tor" not in sample.errors
