"""Verdicts on onion delivery health, as :class:`onion_gateway.status.Check` values.

Thresholds are ages in seconds (:class:`HealthThresholds`); an age *over* a threshold trips it, an age
equal to it does not::

    check             target                 OK                        WARN                  FAIL
    smtptor_queue     deferred onion mail    none, or oldest <= warn   warn < oldest <= fail  oldest > fail
    partner_queue     one partner domain     (same thresholds, that partner's oldest deferred message)
    smtptor_delivery  the log source         last attempt went out     failing > warn        failing > fail
                                             (or nothing attempted)    ("failing" = since the first deferral
                                                                        after the last success)
    tor_circuits      the control port       bootstrapped, circuits    --                    not bootstrapped
                                                                                             or no circuits
    partner_onion     domain + onion         descriptor fetched        our Tor cannot tell   not fetched

Each non-OK check carries one suggestion (:attr:`Check.suggestion`, the :class:`Suggestion` text), chosen from
what the control port said, never from the deferral text: no circuits -> restart tor; circuits but a
partner's descriptor cannot be fetched -> check the partner's SRV record / onion service; Tor fine and
descriptors fetched, yet mail stays deferred -> check the wrapper (torsocks, the smtptor service).
docs/health.md says what each verdict means for the postmaster.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from onion_gateway.errors import ConfigError
from onion_gateway.health.maillog import DeliveryView
from onion_gateway.health.queue import PartnerQueue, QueueView
from onion_gateway.health.tor_health import DescriptorFetch, FetchOutcome, TorSendingState
from onion_gateway.status import Check, Verdict

DEFAULT_DEFERRED_WARN_SECONDS = 1800.0
DEFAULT_DEFERRED_FAIL_SECONDS = 14400.0
DEFAULT_LOG_WINDOW_SECONDS = 86400.0


@dataclass(frozen=True)
class HealthThresholds:
    """When deferred onion mail becomes a warning or a failure.

    :param deferred_warn_seconds: deferred onion mail (or a failing streak) older than this is a warning.
    :param deferred_fail_seconds: ... older than this is a failure (at least *deferred_warn_seconds*).
    :param log_window_seconds: how far back the delivery view reads the log (seconds).
    :raises ConfigError: for a negative value or a failure threshold below the warning one, naming the
        setting as ``health.<name>``.
    """

    deferred_warn_seconds: float = DEFAULT_DEFERRED_WARN_SECONDS
    deferred_fail_seconds: float = DEFAULT_DEFERRED_FAIL_SECONDS
    log_window_seconds: float = DEFAULT_LOG_WINDOW_SECONDS

    def __post_init__(self) -> None:
        for name in ("deferred_warn_seconds", "deferred_fail_seconds", "log_window_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"health.{name}: must be a number of seconds >= 0, not {value!r}")
        if self.deferred_fail_seconds < self.deferred_warn_seconds:
            raise ConfigError(f"health.deferred_fail_seconds ({self.deferred_fail_seconds:g}) is below "
                              f"health.deferred_warn_seconds ({self.deferred_warn_seconds:g})")


def age_verdict(age_seconds: float, thresholds: HealthThresholds) -> Verdict:
    """``FAIL`` when *age_seconds* > the failure threshold, ``WARN`` when > the warning one, else ``OK``."""
    if age_seconds > thresholds.deferred_fail_seconds:
        return Verdict.FAIL
    if age_seconds > thresholds.deferred_warn_seconds:
        return Verdict.WARN
    return Verdict.OK


class Suggestion(enum.Enum):
    """The one-line advice attached to a non-OK verdict."""

    RESTART_TOR = "restart tor (our Tor cannot build circuits), then run: postqueue -f"
    CHECK_TOR = "check that tor runs and bootstraps (tor_circuits), restart it if not"
    CHECK_PARTNER = ("check the partner's SRV record (_onion-mx._tcp.<domain>) and ask them whether their "
                     "onion service runs; our Tor is fine")
    CHECK_WRAPPER = ("check the wrapper: the smtptor service's command, torsocks and its config "
                     "(Tor and the partners' onions answer, yet mail stays deferred)")


def suggest(tor: TorSendingState | None, fetches: Mapping[str, DescriptorFetch] | None,
            onions: Sequence[str] = ()) -> Suggestion:
    """Pick the suggestion for deferred onion mail from what Tor's control port said.

    :param tor: our Tor's state, or ``None`` when it could not be asked.
    :param fetches: descriptor fetches by onion, or ``None`` when none were made.
    :param onions: the onions concerned (all of *fetches* when empty).
    :returns: ``RESTART_TOR`` when our Tor cannot send; ``CHECK_TOR`` when it could not be asked;
        ``CHECK_PARTNER`` when a concerned onion's descriptor was not fetched; else ``CHECK_WRAPPER``.
    """
    if tor is None:
        return Suggestion.CHECK_TOR
    if not tor.can_send:
        return Suggestion.RESTART_TOR
    concerned = [fetches[o] for o in (onions or list(fetches or {})) if fetches and o in fetches]
    if any(not f.fetched for f in concerned):
        return Suggestion.CHECK_PARTNER
    return Suggestion.CHECK_WRAPPER


def format_seconds(seconds: float) -> str:
    """``"7260 s (2 h 1 min)"``; ``"45 s"`` below a minute."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    hours, rest = divmod(whole, 3600)
    minutes = rest // 60
    human = f"{hours} h {minutes} min" if hours else f"{minutes} min"
    return f"{whole} s ({human})"


def _check(name: str, target: str, verdict: Verdict, detail: str, suggestion: Suggestion,
           domain: str | None = None) -> Check:
    """A :class:`Check` whose suggestion is set only when the verdict is not OK (``<domain>`` filled in
    when the check is about one partner *domain*)."""
    text = suggestion.value.replace("<domain>", domain) if domain else suggestion.value
    return Check(name, target, verdict, detail, "" if verdict is Verdict.OK else text)


def check_queue(view: QueueView, thresholds: HealthThresholds, tor: TorSendingState | None = None,
                fetches: Mapping[str, DescriptorFetch] | None = None) -> Check:
    """The ``smtptor_queue`` verdict: how old is the oldest deferred onion mail?

    :param view: the queue view.
    :param thresholds: the age thresholds.
    :param tor: our Tor's state (for the suggestion), ``None`` if unknown.
    :param fetches: partner descriptor fetches (for the suggestion), ``None`` if none.
    :returns: the :class:`Check`, target ``"deferred onion mail"``.
    """
    undecided = (f"; {view.undecided_recipients} recipient(s) undecided (routing failed now)"
                 if view.undecided_recipients else "")
    if view.recipients == 0:
        return Check("smtptor_queue", "deferred onion mail", Verdict.OK, "none deferred" + undecided)
    verdict = age_verdict(view.oldest_seconds, thresholds)
    detail = (f"{view.messages} message(s), {view.recipients} recipient(s) deferred, oldest "
              f"{format_seconds(view.oldest_seconds)}; most common reason ({view.top_reason_count}x): "
              f"{view.top_reason or '-'}{undecided}")
    return _check("smtptor_queue", "deferred onion mail", verdict, detail, suggest(tor, fetches))


def check_partner_queue(partner: PartnerQueue, thresholds: HealthThresholds, tor: TorSendingState | None = None,
                        fetches: Mapping[str, DescriptorFetch] | None = None,
                        onions: Sequence[str] = ()) -> Check:
    """The ``partner_queue`` verdict for one partner domain.

    :param partner: the partner's figures from :attr:`QueueView.partners`.
    :param thresholds: the age thresholds.
    :param tor: our Tor's state, ``None`` if unknown.
    :param fetches: descriptor fetches by onion, ``None`` if none.
    :param onions: the partner's onions (what its route names), to pick the suggestion.
    """
    verdict = age_verdict(partner.oldest_seconds, thresholds)
    detail = (f"{partner.messages} message(s), {partner.recipients} recipient(s) deferred, oldest "
              f"{format_seconds(partner.oldest_seconds)}: {partner.top_reason or '-'}")
    return _check("partner_queue", partner.domain, verdict, detail, suggest(tor, fetches, onions), partner.domain)


def check_delivery(view: DeliveryView, thresholds: HealthThresholds, tor: TorSendingState | None = None,
                   fetches: Mapping[str, DescriptorFetch] | None = None) -> Check:
    """The ``smtptor_delivery`` verdict: has mail stopped leaving over the onion transport?

    :param view: the delivery view of the log window.
    :param thresholds: the age thresholds (applied to how long deliveries have been failing).
    :param tor: our Tor's state, ``None`` if unknown.
    :param fetches: partner descriptor fetches, ``None`` if none.
    :returns: the :class:`Check`, target the log source; rotated log files the window needed but that could
        not be read are named in the detail, and turn "no onion delivery attempted" into a warning.
    """
    counts = (f"{view.sent} sent, {view.deferred} deferred, {view.bounced} bounced in the last "
              f"{format_seconds(view.window_seconds)}")
    if view.last_sent is not None:
        counts += f"; last sent {format_seconds(view.taken_at - view.last_sent.timestamp)} ago"
    last = view.last_failed
    if last is not None:
        counts += (f"; last failure {format_seconds(max(0.0, view.taken_at - last.timestamp))} ago: "
                   f"{last.reason or last.status}")
    unread = "".join(f"; {problem}" for problem in view.problems)   # rotated logs the window needed
    if view.failing_since is None:
        if view.last_sent is None and view.last_failed is None:
            # nothing seen: with a rotated log unread, that is not known to be nothing
            return Check("smtptor_delivery", view.source, Verdict.WARN if unread else Verdict.OK,
                         "no onion delivery attempted in the last " + format_seconds(view.window_seconds) + unread)
        return Check("smtptor_delivery", view.source, Verdict.OK, counts + unread)
    failing = max(0.0, view.taken_at - view.failing_since)
    verdict = age_verdict(failing, thresholds)
    detail = f"deliveries failing for {format_seconds(failing)}; {counts}{unread}"
    return _check("smtptor_delivery", view.source, verdict, detail, suggest(tor, fetches))


def check_tor_sending(state: TorSendingState, target: str) -> Check:
    """The ``tor_circuits`` verdict: can our Tor build circuits?

    :param state: from :func:`onion_gateway.health.tor_health.sending_state`.
    :param target: the control port, for the report (``"127.0.0.1:9051"``).
    :returns: ``OK`` when bootstrapped and circuits are established, else ``FAIL`` with RESTART_TOR.
    """
    detail = (f"bootstrapped {state.bootstrap_progress}% ({state.bootstrap_summary}), circuit-established="
              f"{int(state.circuit_established)}" + (f", network {state.network_liveness}" if state.network_liveness else ""))
    verdict = Verdict.OK if state.can_send else Verdict.FAIL
    return _check("tor_circuits", target, verdict, detail, Suggestion.RESTART_TOR)


def check_partner_onion(domain: str, fetch: DescriptorFetch, tor: TorSendingState | None) -> Check:
    """The ``partner_onion`` verdict: can the partner's onion descriptor be fetched now?

    :param domain: the partner domain whose route names the onion.
    :param fetch: the fetch result.
    :param tor: our Tor's state; when it cannot send, a failed fetch says nothing about the partner.
    :returns: ``OK`` fetched; ``WARN`` not fetched while our own Tor cannot send (cause unknown);
        ``FAIL`` not fetched while our Tor is fine (their onion service is down or unpublished), or
        Tor refused the address.
    """
    target = f"{domain} {fetch.onion}"
    if fetch.fetched:
        return Check("partner_onion", target, Verdict.OK, fetch.detail)
    if fetch.outcome is FetchOutcome.REFUSED:
        return _check("partner_onion", target, Verdict.FAIL, fetch.detail, Suggestion.CHECK_PARTNER, domain)
    if tor is None or not tor.can_send:
        suggestion = Suggestion.CHECK_TOR if tor is None else Suggestion.RESTART_TOR
        return _check("partner_onion", target, Verdict.WARN, f"cannot tell: our Tor cannot send ({fetch.detail})",
                      suggestion)
    return _check("partner_onion", target, Verdict.FAIL, f"their onion service is unreachable: {fetch.detail}",
                  Suggestion.CHECK_PARTNER, domain)
