"""All of onion delivery health in one call: read the queue, the log and Tor, and judge them.

:func:`assess` is what ``status`` (and, off the event loop, the metrics collector) calls. Like the other
status checks it never raises for what it inspects. A source it cannot read becomes a ``warn`` check
that says why (health unknown), and a Tor control port that fails becomes ``tor_circuits: fail``.
Checks, in order::

    tor_circuits       when a control connection is given
    smtptor_queue
    partner_queue      one per partner domain with deferred onion mail
    partner_onion      one per onion of those partners, only when our Tor can send
    smtptor_delivery

:func:`status_checks` is the call ``onion-gateway status`` makes (through
:func:`onion_gateway.status.run_status`): it builds the routing decision and opens the Tor control
connection from the status settings, then runs :func:`assess`. :func:`health_settings` reads the
config file's ``[health]`` table (the thresholds) and the command line's overrides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onion_gateway.config import layered
from onion_gateway.errors import ConfigError, HealthSourceError, TorError
from onion_gateway.health.maillog import DeliveryView, log_source, read_deliveries
from onion_gateway.health.queue import OnionRoutePredicate, QueueView, read_queue
from onion_gateway.health.tor_health import (DEFAULT_FETCH_TIMEOUT_SECONDS, DescriptorFetch, TorSendingState,
                                             fetch_descriptors, probe_onions, sending_state)
from onion_gateway.health.verdicts import (HealthThresholds, Suggestion, check_delivery, check_partner_onion,
                                           check_partner_queue, check_queue, check_tor_sending)
from onion_gateway.status import Check, Verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthSettings:
    """What :func:`assess` reads and how it judges.

    :param postfix_config_dir: the Postfix configuration directory, ``None`` for the default instance.
    :param transport: the onion transport's master.cf service name.
    :param thresholds: warning/failure ages and the log window (seconds).
    :param log_file: a log file to read instead of ``maillog_file`` / the journal, or ``None``.
    :param fetch_timeout_seconds: the bounded wait for all partner descriptor fetches together (seconds).
    :param per_partner: also judge each partner domain (``partner_queue``, ``partner_onion``).
    """

    postfix_config_dir: Path | None = None
    transport: str = "smtptor"
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)
    log_file: Path | None = None
    fetch_timeout_seconds: float = DEFAULT_FETCH_TIMEOUT_SECONDS
    per_partner: bool = True


@dataclass(frozen=True)
class HealthReport:
    """The checks and the figures behind them (for metrics).

    :param checks: the :class:`~onion_gateway.status.Check` list, in the module's order.
    :param queue: the queue view, ``None`` when the queue could not be read.
    :param delivery: the delivery view, ``None`` when the log could not be read.
    :param tor: our Tor's sending state, ``None`` without a control connection or when it failed.
    :param fetches: partner descriptor fetches by onion (empty when none were made).
    """

    checks: tuple[Check, ...]
    queue: QueueView | None
    delivery: DeliveryView | None
    tor: TorSendingState | None
    fetches: Mapping[str, DescriptorFetch]


def assess(settings: HealthSettings, is_onion_route: OnionRoutePredicate, control: Any = None,
           control_target: str = "tor control port",
           onions_of: Callable[[str], tuple[str, ...]] | None = None, now: float | None = None) -> HealthReport:
    """Read the queue, the log and (if given) Tor, and judge onion delivery health.

    :param settings: the :class:`HealthSettings`.
    :param is_onion_route: ``domain -> True | False | None``; normally a
        :class:`~onion_gateway.health.routes.RouterRoutes`.
    :param control: an authenticated stem Controller or an entered TorControl, or ``None`` to skip Tor.
    :param control_target: how to name the control port in the report (``"127.0.0.1:9051"``).
    :param onions_of: ``domain -> onions`` its route names; default ``is_onion_route.onions`` when it
        has one (RouterRoutes), else no descriptor fetches.
    :param now: the current time (Unix time, seconds), default now.
    :returns: the :class:`HealthReport` (never raises for what it inspects).
    """
    now = time.time() if now is None else now
    thresholds = settings.thresholds
    checks: list[Check] = []

    tor: TorSendingState | None = None
    if control is not None:
        try:
            tor = sending_state(control)
            checks.append(check_tor_sending(tor, control_target))
        except TorError as exc:
            checks.append(Check("tor_circuits", control_target, Verdict.FAIL, one_line(exc),
                                Suggestion.CHECK_TOR.value))

    queue: QueueView | None = None
    try:
        queue = read_queue(settings.postfix_config_dir, is_onion_route, per_partner=settings.per_partner, now=now)
    except HealthSourceError as exc:
        checks.append(Check("smtptor_queue", "deferred onion mail", Verdict.WARN, f"cannot tell: {one_line(exc)}"))

    onions_of = onions_of or getattr(is_onion_route, "onions", None)
    partner_onions = {p.domain: tuple(onions_of(p.domain)) for p in queue.partners} if queue and onions_of else {}
    fetches: dict[str, DescriptorFetch] = {}
    wanted = sorted({o for onions in partner_onions.values() for o in onions})
    if wanted and tor is not None and tor.can_send:
        try:
            fetches = fetch_descriptors(control, wanted, settings.fetch_timeout_seconds)
            fetches = probe_onions(control, fetches, getattr(is_onion_route, "port", None),
                                   settings.fetch_timeout_seconds)
        except TorError as exc:
            log.warning("partner descriptor fetches failed: %s", exc)

    if queue is not None:
        checks.append(check_queue(queue, thresholds, tor, fetches or None))
        for partner in queue.partners:
            onions = partner_onions.get(partner.domain, ())
            checks.append(check_partner_queue(partner, thresholds, tor, fetches or None, onions))
            checks.extend(check_partner_onion(partner.domain, fetches[o], tor) for o in onions if o in fetches)

    delivery: DeliveryView | None = None
    try:
        source = log_source(settings.postfix_config_dir, settings.transport, settings.log_file)
        delivery = read_deliveries(source, thresholds.log_window_seconds, now)
        checks.append(check_delivery(delivery, thresholds, tor, fetches or None))
    except HealthSourceError as exc:
        checks.append(Check("smtptor_delivery", str(settings.log_file or "mail log"), Verdict.WARN,
                            f"cannot tell: {one_line(exc)}"))
    return HealthReport(tuple(checks), queue, delivery, tor, fetches)


def one_line(exc: BaseException) -> str:
    """The exception's text on one line (postqueue's and journalctl's stderr can span several)."""
    return " ".join(str(exc).split())


# --- settings from the config file and the command line ------------------------------------------------------

HEALTH_KEYS = ("deferred_warn_seconds", "deferred_fail_seconds", "log_window_seconds", "log_file",
               "fetch_timeout_seconds")
MAX_FETCH_TIMEOUT_SECONDS = 300.0


def health_settings(file_table: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None,
                    base_dir: Path | None = None) -> HealthSettings:
    """Build :class:`HealthSettings` from the config file's ``[health]`` table and command-line values.

    Keys (all optional; the defaults are :class:`~onion_gateway.health.verdicts.HealthThresholds`')::

        [health]
        deferred_warn_seconds = 1800.0    # deferred onion mail older than this: warn
        deferred_fail_seconds = 14400.0   # ... older than this: fail
        log_window_seconds = 86400.0      # how far back the log is read
        log_file = "/var/log/mail.log"    # read this instead of maillog_file / the journal
        fetch_timeout_seconds = 30.0      # bounded wait for the partner descriptor fetches together

    :param file_table: the ``[health]`` table, or ``None``.
    :param overrides: command-line values with the same keys; ``None`` values are ignored.
    :param base_dir: directory a relative ``log_file`` is taken from (the config file's).
    :returns: the settings (Postfix directory and transport are filled in by the caller).
    :raises ConfigError: for an unknown key or a bad value, named ``health.<key>``.
    """
    merged = layered("health", HEALTH_KEYS, file_table, overrides)
    numbers: dict[str, float] = {}
    for key in ("deferred_warn_seconds", "deferred_fail_seconds", "log_window_seconds", "fetch_timeout_seconds"):
        if key in merged:
            value = merged[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"health.{key}: expected a number of seconds, got {value!r}")
            numbers[key] = float(value)
    fetch = numbers.pop("fetch_timeout_seconds", DEFAULT_FETCH_TIMEOUT_SECONDS)
    if not 0 < fetch <= MAX_FETCH_TIMEOUT_SECONDS:
        raise ConfigError(f"health.fetch_timeout_seconds: must be above 0 and at most "
                          f"{MAX_FETCH_TIMEOUT_SECONDS:g} seconds, got {fetch:g}")
    log_file = merged.get("log_file")
    if log_file is not None:
        if not isinstance(log_file, (str, Path)) or not str(log_file):
            raise ConfigError(f"health.log_file: expected a file name, got {log_file!r}")
        log_file = Path(log_file)
        if not log_file.is_absolute() and base_dir is not None:
            log_file = base_dir / log_file
    return HealthSettings(thresholds=HealthThresholds(**numbers), log_file=log_file, fetch_timeout_seconds=fetch)


# --- what status runs ----------------------------------------------------------------------------------------


def status_checks(status: Any) -> list[Check]:
    """The health checks of one ``onion-gateway status`` run.

    Reads the queue and the log of ``status.postfix_config_dir``, decides onion mail with the routing of
    ``status.serve`` (pinning off) and asks the Tor at ``status.tor_control`` (the same control port
    and Postfix directory the other status checks use, wherever they came from: flags, the config file
    or setup's state record). Read-only.

    :param status: a :class:`onion_gateway.status.StatusSettings` whose ``health`` is a :class:`HealthSettings`.
    :returns: the checks (see the module docstring); a control port that cannot be opened becomes
        ``tor_circuits: fail`` (suggestion: check that tor runs); routing that cannot be built
        (bad routing files) becomes a ``smtptor_queue`` warning. Never raises for what it inspects.
    """
    from onion_gateway.health.routes import RouterRoutes

    settings = dataclasses.replace(status.health, postfix_config_dir=status.postfix_config_dir,
                                   transport=status.serve.transport)
    checks: list[Check] = []
    try:
        routes = RouterRoutes.from_settings(status.serve)
    except ConfigError as exc:
        return [Check("smtptor_queue", "deferred onion mail", Verdict.WARN, f"cannot tell: routing: {one_line(exc)}",
                      "fix the [serve] routing settings (onion-gateway lookup shows the error)")]
    with routes, contextlib.ExitStack() as stack:
        control = None
        target = "tor control port"
        if status.tor_control is not None:
            target = str(status.tor_control) if not isinstance(status.tor_control, tuple) else \
                "{}:{}".format(*status.tor_control)
            try:
                control = stack.enter_context(open_control(status.tor_control, status.tor_password,
                                                            status.timeout_seconds))
            except (TorError, ConfigError) as exc:
                checks.append(Check("tor_circuits", target, Verdict.FAIL, one_line(exc),
                                    Suggestion.CHECK_TOR.value))
        report = assess(settings, routes, control, target)
        checks.extend(report.checks)
    return checks


@contextlib.contextmanager
def open_control(address: Any, password: str | None, timeout_seconds: float,
                 password_file: Path | None = None) -> Iterator[Any]:
    """An authenticated control connection to *address*, closed after the ``with`` block.

    :param address: ``(host, port)``, a :class:`~onion_gateway.address.ListenAddress` or its text
        (``HOST:PORT`` or ``unix:PATH``).
    :param password: the control password, or ``None`` for cookie/no authentication (or *password_file*).
    :param timeout_seconds: connect budget on TCP (seconds).
    :param password_file: a file holding the control password, read now; used when *password* is ``None``.
    :returns: (yields) a stem Controller or an entered TorControl, as :mod:`.tor_health` takes them.
    :raises TorError: when the password file cannot be read, Tor cannot be reached or refuses
        authentication.
    :raises ConfigError: for address text that is no listen address.
    """
    from onion_gateway import tor
    from onion_gateway.address import ListenAddress, parse_listen_address

    if password is None and password_file is not None:
        password = tor.read_password_file(password_file)
    if isinstance(address, str):
        address = parse_listen_address(address, "tor_control")
    elif isinstance(address, tuple):
        address = ListenAddress(host=address[0], port=address[1])
    controller = tor.connect(address, password, timeout_seconds)   # the one control connection (TCP or unix)
    try:
        yield controller
    finally:
        controller.close()
