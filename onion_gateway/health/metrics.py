"""Onion delivery health as Prometheus gauges: a prometheus_client custom collector for the daemon's /metrics.

What a scrape shows (all gauges; docs/health.md, "Metrics")::

    onion_gateway_smtptor_deferred                          deferred onion messages      (postqueue -j)
    onion_gateway_smtptor_deferred_recipients               deferred onion recipients    (postqueue -j)
    onion_gateway_smtptor_oldest_deferred_seconds           age of the oldest one, 0 when none
    onion_gateway_smtptor_last_delivery_timestamp_seconds   Unix time of the latest status=sent over smtptor
                                                            seen in the log; 0 when none was seen
    onion_gateway_tor_circuit_established                   1 when GETINFO status/circuit-established says 1,
                                                            0 when it says 0 or Tor does not answer
    onion_gateway_health_source_up{source}                  1 when the source could be read at the last
                                                            computation, 0 when not; source = queue | log | tor

A gauge whose source could not be read is left out (its ``health_source_up`` is 0); the Tor gauge is
there only when a control address is configured (``health_tor_control``) or setup recorded one
(:class:`TorTargetFinder`). The figures come from the same readers as ``status``
(:mod:`.queue`, :mod:`.maillog`, :mod:`.tor_health`), never from HSFETCH: descriptor fetches cost up to
8 HSDir requests per onion and are left to ``status``.

Cost and timing: the readers run ``postqueue -j``, read the log and may ask DNS (the routing decision),
so :class:`HealthCollector` computes in a worker thread, at most once per ``interval_seconds``, and a
scrape waits for a computation that is due at most ``wait_seconds``. A scrape on an asyncio event loop
thread (the daemon's own HTTP server) never waits: it shows the last figures and the worker's result
appears at the next scrape. Before the first computation finished, the health gauges are absent.

The latest delivery time is remembered across computations, so it stays known after it leaves the log
window (while the daemon runs).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onion_gateway.address import ListenAddress
from onion_gateway.config import ServeSettings
from onion_gateway.errors import OnionGatewayError
from onion_gateway.health.maillog import DeliveryView, log_source, read_deliveries
from onion_gateway.health.queue import QueueView, read_queue
from onion_gateway.health.tor_health import TorSendingState, sending_state
from onion_gateway.health.verdicts import DEFAULT_LOG_WINDOW_SECONDS
from onion_gateway.setup.state import DEFAULT_STATE_DIR, read_setup_state

log = logging.getLogger(__name__)

DEFAULT_WAIT_SECONDS = 2.0
SOURCES = ("queue", "log", "tor")


@dataclass(frozen=True)
class HealthSample:
    """One computation of the health figures.

    :param taken_at: when it finished (Unix time, seconds).
    :param queue: the queue view, ``None`` when the queue could not be read.
    :param delivery: the delivery view, ``None`` when the log could not be read.
    :param tor: our Tor's state; ``None`` when no control address is configured or Tor did not answer.
    :param errors: ``{source: one line}`` for each source that could not be read.
    :param tor_configured: a control address is configured (the Tor gauge is shown).
    """

    taken_at: float
    queue: QueueView | None = None
    delivery: DeliveryView | None = None
    tor: TorSendingState | None = None
    errors: dict[str, str] = field(default_factory=dict)
    tor_configured: bool = False


def compute_sample(serve: ServeSettings, tor_control: Any = None,
                   log_window_seconds: float = DEFAULT_LOG_WINDOW_SECONDS,
                   tor_password_file: Path | None = None) -> HealthSample:
    """Read the queue, the log and (if configured) Tor once. Blocking: call it off the event loop.

    :param serve: the daemon's settings: ``postfix_config_dir`` (``None``: the default instance),
        ``transport`` and the routing that decides which deferred recipients are onion mail (pinning off).
    :param tor_control: Tor's control address (a ListenAddress or ``(host, port)``), or ``None``.
    :param log_window_seconds: how far back the log is read (seconds).
    :param tor_password_file: the control password file (read now), or ``None`` for cookie/no auth.
    :returns: the :class:`HealthSample`; never raises for what it reads (errors are in ``errors``).
    """
    from onion_gateway.health.report import one_line, open_control
    from onion_gateway.health.routes import RouterRoutes

    errors: dict[str, str] = {}
    queue = delivery = tor = None
    try:
        with RouterRoutes.from_settings(serve) as routes:
            queue = read_queue(serve.postfix_config_dir, routes)
    except OnionGatewayError as exc:
        errors["queue"] = one_line(exc)
    try:
        delivery = read_deliveries(log_source(serve.postfix_config_dir, serve.transport), log_window_seconds)
    except OnionGatewayError as exc:
        errors["log"] = one_line(exc)
    if tor_control is not None:
        try:
            with open_control(tor_control, None, DEFAULT_WAIT_SECONDS * 2, tor_password_file) as control:
                tor = sending_state(control)
        except OnionGatewayError as exc:
            errors["tor"] = one_line(exc)
    for source, text in errors.items():
        log.info("health metrics: cannot read the %s: %s", source, text)
    for problem in delivery.problems if delivery is not None else ():
        log.info("health metrics: %s", problem)
    return HealthSample(time.time(), queue, delivery, tor, errors, tor_control is not None)


@dataclass(frozen=True)
class TorTarget:
    """The control port the Tor gauge asks.

    :param address: Tor's control address.
    :param password_file: the control password file, ``None`` for cookie or no authentication.
    :param origin: where the address came from, for the log (``health_tor_control`` or setup's record).
    """

    address: ListenAddress
    password_file: Path | None
    origin: str


class TorTargetFinder:
    """Where the Tor gauge asks: ``[serve] health_tor_control``, else the control address setup recorded.

    Setup's record (:func:`onion_gateway.setup.state.read_setup_state`, the record ``status`` reads when
    run with no flags) names Tor's control address but no password file: with a password-protected
    control port, ``health_tor_control_password_file`` supplies it. The record is read until it is found
    and then kept: the daemon finds it at start while still root, and a setup that writes it after the
    daemon started (setup starts the daemon before it records) is picked up at a later computation.
    Each change of outcome is logged once (``no Tor gauge: ...``), not at every computation.

    :param serve: the daemon's settings.
    :param state_dir: setup's state directory.
    """

    def __init__(self, serve: ServeSettings, state_dir: Path = DEFAULT_STATE_DIR) -> None:
        self.serve = serve
        self.state_dir = Path(state_dir)
        self._found: TorTarget | None = None
        self._said: str | None = None

    def find(self) -> TorTarget | None:
        """The control port to ask now, or ``None`` (no Tor gauge). Never raises."""
        serve = self.serve
        if serve.health_tor_control is not None:
            return TorTarget(serve.health_tor_control, serve.health_tor_control_password_file, "health_tor_control")
        if self._found is not None:
            return self._found
        from onion_gateway.health.report import one_line

        try:
            record = read_setup_state(self.state_dir)
        except OnionGatewayError as exc:
            self._say(f"health metrics: no Tor gauge: health_tor_control is not set and setup's record cannot be "
                      f"read: {one_line(exc)}")
            return None
        if record.tor_control is None:
            self._say(f"health metrics: no Tor gauge: health_tor_control is not set and {record.source} names "
                      "no Tor control address")
            return None
        self._found = TorTarget(record.tor_control, serve.health_tor_control_password_file, record.source)
        self._say(f"health metrics: Tor gauge asks {record.tor_control}, from {record.source}")
        return self._found

    def _say(self, text: str) -> None:
        if text != self._said:
            log.info("%s", text)
            self._said = text


def compute_with(serve: ServeSettings, finder: TorTargetFinder) -> HealthSample:
    """One computation of the daemon's gauges: :func:`compute_sample` with the control port *finder* names."""
    target = finder.find()
    if target is None:
        return compute_sample(serve)
    return compute_sample(serve, target.address, tor_password_file=target.password_file)


class HealthCollector:
    """A prometheus_client custom collector of the health gauges, computed in a worker thread.

    :param compute: returns a :class:`HealthSample` (blocking; run in a worker thread), normally
        ``lambda: compute_sample(serve, tor_control)``.
    :param interval_seconds: compute at most once per this many seconds (started at the first scrape
        after it elapsed, or at :meth:`start`).
    :param wait_seconds: the longest a scrape waits for a computation that is due (seconds); a scrape
        on an event loop thread does not wait.
    """

    def __init__(self, compute: Callable[[], HealthSample], interval_seconds: float,
                 wait_seconds: float = DEFAULT_WAIT_SECONDS) -> None:
        self._compute = compute
        self.interval_seconds = interval_seconds
        self.wait_seconds = wait_seconds
        self._lock = threading.Lock()
        self._sample: HealthSample | None = None
        self._last_delivery = 0.0
        self._started_at: float | None = None       # time.monotonic() of the last computation's start
        self._done = threading.Event()
        self._done.set()
        self.computations = 0                        # how many computations were started

    def start(self) -> None:
        """Start the first computation now (so the first scrape finds figures)."""
        self._refresh_if_due()

    def _refresh_if_due(self) -> threading.Event | None:
        """Start a computation when none runs and the interval elapsed; return the event to wait on."""
        with self._lock:
            now = time.monotonic()
            if not self._done.is_set():
                return self._done
            if self._started_at is not None and now - self._started_at < self.interval_seconds:
                return None
            self._started_at = now
            self._done = threading.Event()
            self.computations += 1
            done = self._done
        threading.Thread(target=self._run, args=(done,), name="health-metrics", daemon=True).start()
        return done

    def _run(self, done: threading.Event) -> None:
        try:
            sample = self._compute()
        except Exception:                      # a bug must not kill the metrics: keep the last figures
            log.exception("health metrics computation failed")
            sample = None
        with self._lock:
            if sample is not None:
                self._sample = sample
                if sample.delivery is not None and sample.delivery.last_sent is not None:
                    self._last_delivery = max(self._last_delivery, sample.delivery.last_sent.timestamp)
            done.set()

    def describe(self) -> list:
        """No fixed description: the families present depend on what could be read (prometheus_client
        then does not call :meth:`collect` at registration)."""
        return []

    def collect(self) -> Iterator[Any]:
        """Yield the gauges of the latest computation (prometheus_client collector protocol).

        Starts a computation when one is due and waits for it at most ``wait_seconds`` (not at all on
        an event loop thread); otherwise shows the previous figures.
        """
        from prometheus_client.core import GaugeMetricFamily

        pending = self._refresh_if_due()
        if pending is not None and not _on_event_loop():
            pending.wait(self.wait_seconds)
        with self._lock:
            sample, last_delivery = self._sample, self._last_delivery
        if sample is None:
            return
        up = GaugeMetricFamily("onion_gateway_health_source_up",
                               "1 when the onion delivery health source was read at the last computation",
                               labels=["source"])
        for source in SOURCES:
            if source != "tor" or sample.tor_configured:
                up.add_metric([source], 0.0 if source in sample.errors else 1.0)
        yield up
        if sample.queue is not None:
            queue = sample.queue
            yield GaugeMetricFamily("onion_gateway_smtptor_deferred",
                                    "Deferred messages with a recipient routed to the onion transport",
                                    value=queue.messages)
            yield GaugeMetricFamily("onion_gateway_smtptor_deferred_recipients",
                                    "Deferred recipients routed to the onion transport", value=queue.recipients)
            yield GaugeMetricFamily("onion_gateway_smtptor_oldest_deferred_seconds",
                                    "Age of the oldest deferred onion message (seconds; 0 when none)",
                                    value=queue.oldest_seconds)
        if sample.delivery is not None or last_delivery:
            yield GaugeMetricFamily("onion_gateway_smtptor_last_delivery_timestamp_seconds",
                                    "Unix time of the latest delivery over the onion transport seen in "
                                    "Postfix's log (0: none seen)", value=last_delivery)
        if sample.tor_configured:
            established = sample.tor is not None and sample.tor.circuit_established
            yield GaugeMetricFamily("onion_gateway_tor_circuit_established",
                                    "1 when Tor says it can build circuits (status/circuit-established), "
                                    "0 when not or when its control port does not answer",
                                    value=1.0 if established else 0.0)


def _on_event_loop() -> bool:
    """True when called from a thread that runs an asyncio event loop (never block it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def register_health_metrics(registry: Any, serve: ServeSettings) -> HealthCollector | None:
    """The daemon's hook: add the health gauges to its metrics *registry* and start the first computation.

    Configured by ``[serve]`` keys: ``health_metrics_interval_seconds`` (0 turns the gauges off),
    ``health_tor_control`` (Tor's control address; none: the one in the record in
    ``health_setup_state_dir``, if any, see :class:`TorTargetFinder`), ``health_tor_control_password_file``,
    and ``postfix_config_dir`` / ``transport`` / the routing settings, as the daemon uses them.

    :param registry: a ``prometheus_client.CollectorRegistry``.
    :param serve: the daemon's settings.
    :returns: the registered collector, or ``None`` when the interval is 0.
    """
    interval = serve.health_metrics_interval_seconds
    if interval <= 0:
        return None
    finder = TorTargetFinder(serve, serve.health_setup_state_dir or DEFAULT_STATE_DIR)
    finder.find()                        # now, while the daemon may still be root (the record is root's)
    collector = HealthCollector(lambda: compute_with(serve, finder), interval)
    registry.register(collector)
    collector.start()
    log.info("health metrics: computed at most every %g s from %s%s", interval,
             serve.postfix_config_dir or "the default Postfix instance",
             f" and Tor at {serve.health_tor_control}" if serve.health_tor_control else "")
    return collector
