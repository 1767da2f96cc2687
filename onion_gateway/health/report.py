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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onion_gateway.errors import HealthSourceError, TorError
from onion_gateway.health.maillog import DeliveryView, log_source, read_deliveries
from onion_gateway.health.queue import OnionRoutePredicate, QueueView, read_queue
from onion_gateway.health.tor_health import (DEFAULT_FETCH_TIMEOUT_SECONDS, DescriptorFetch, TorSendingState,
                                             fetch_descriptors, sending_state)
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
            checks.append(Check("tor_circuits", control_target, Verdict.FAIL, str(exc), Suggestion.CHECK_TOR.value))

    queue: QueueView | None = None
    try:
        queue = read_queue(settings.postfix_config_dir, is_onion_route, per_partner=settings.per_partner, now=now)
    except HealthSourceError as exc:
        checks.append(Check("smtptor_queue", "deferred onion mail", Verdict.WARN, f"cannot tell: {exc}"))

    onions_of = onions_of or getattr(is_onion_route, "onions", None)
    partner_onions = {p.domain: tuple(onions_of(p.domain)) for p in queue.partners} if queue and onions_of else {}
    fetches: dict[str, DescriptorFetch] = {}
    wanted = sorted({o for onions in partner_onions.values() for o in onions})
    if wanted and tor is not None and tor.can_send:
        try:
            fetches = fetch_descriptors(control, wanted, settings.fetch_timeout_seconds)
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
                            f"cannot tell: {exc}"))
    return HealthReport(tuple(checks), queue, delivery, tor, fetches)
