"""Thresholds (boundaries) and the verdicts with their suggestions."""

from __future__ import annotations

import pytest

from onion_gateway.errors import ConfigError
from onion_gateway.health.maillog import DeliveryEvent, DeliveryView
from onion_gateway.health.queue import PartnerQueue, QueueView
from onion_gateway.health.tor_health import DescriptorFetch, FetchOutcome, TorSendingState
from onion_gateway.health.verdicts import (HealthThresholds, Suggestion, age_verdict, check_delivery,
                                           check_partner_onion, check_partner_queue, check_queue,
                                           check_tor_sending, format_seconds, suggest)
from onion_gateway.status import Verdict

DEFAULT = HealthThresholds()
TOR_OK = TorSendingState(100, "done", "Done", True, "up")
TOR_NO_CIRCUITS = TorSendingState(100, "done", "Done", False, "down")
TOR_STARTING = TorSendingState(0, "starting", "Starting", False, "down")
ONION = "a" * 56 + ".onion"


@pytest.mark.parametrize("age,verdict", [
    (0, Verdict.OK), (1800, Verdict.OK), (1800.001, Verdict.WARN), (1801, Verdict.WARN),
    (14400, Verdict.WARN), (14400.001, Verdict.FAIL), (10 ** 7, Verdict.FAIL)])
def test_default_thresholds_boundaries(age, verdict):
    assert (DEFAULT.deferred_warn_seconds, DEFAULT.deferred_fail_seconds) == (1800, 14400)
    assert age_verdict(age, DEFAULT) is verdict


@pytest.mark.parametrize("age,verdict", [(10, Verdict.OK), (10.5, Verdict.FAIL)])
def test_equal_thresholds_skip_the_warning(age, verdict):
    assert age_verdict(age, HealthThresholds(10, 10)) is verdict


@pytest.mark.parametrize("kwargs,name", [
    ({"deferred_warn_seconds": -1}, "health.deferred_warn_seconds"),
    ({"deferred_fail_seconds": 100, "deferred_warn_seconds": 200}, "health.deferred_fail_seconds"),
    ({"log_window_seconds": "1h"}, "health.log_window_seconds"),
    ({"deferred_warn_seconds": True}, "health.deferred_warn_seconds")])
def test_bad_thresholds_name_the_setting(kwargs, name):
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        HealthThresholds(**kwargs)


def queue_view(oldest: float, recipients: int = 3, undecided: int = 0) -> QueueView:
    return QueueView(messages=min(recipients, 2), recipients=recipients, oldest_seconds=oldest,
                     top_reason="connect to x.onion[127.42.42.0]:25: Connection refused" if recipients else "",
                     top_reason_count=recipients, undecided_recipients=undecided, other_recipients=0,
                     partners=(), taken_at=1000.0)


def test_empty_queue_is_ok():
    check = check_queue(queue_view(0, 0), DEFAULT)
    assert (check.name, check.verdict, check.detail) == ("smtptor_queue", Verdict.OK, "none deferred")


def test_undecided_recipients_are_reported_but_not_judged():
    check = check_queue(queue_view(0, 0, undecided=4), DEFAULT)
    assert check.verdict is Verdict.OK and "4 recipient(s) undecided" in check.detail


@pytest.mark.parametrize("oldest,verdict", [(1800, Verdict.OK), (1801, Verdict.WARN), (14401, Verdict.FAIL)])
def test_queue_verdict_follows_the_oldest_age(oldest, verdict):
    check = check_queue(queue_view(oldest), DEFAULT, TOR_OK)
    assert check.verdict is verdict
    assert f"oldest {int(oldest)} s" in check.detail
    assert "Connection refused" in check.detail
    assert bool(check.suggestion) is (verdict is not Verdict.OK)
    assert " -- " not in check.detail


def test_no_circuits_means_restart_tor_whatever_the_deferral_says():
    check = check_queue(queue_view(20000), DEFAULT, TOR_NO_CIRCUITS,
                        {ONION: DescriptorFetch(ONION, FetchOutcome.NO_ANSWER, "no answer", 30)})
    assert check.verdict is Verdict.FAIL
    assert check.suggestion == Suggestion.RESTART_TOR.value


def test_partner_unreachable_while_our_tor_is_fine_means_check_the_partner():
    fetches = {ONION: DescriptorFetch(ONION, FetchOutcome.FAILED, "no HSDir returned it", 3)}
    assert check_queue(queue_view(2000), DEFAULT, TOR_OK, fetches).suggestion == Suggestion.CHECK_PARTNER.value


def test_tor_and_partners_fine_yet_deferred_means_check_the_wrapper():
    fetches = {ONION: DescriptorFetch(ONION, FetchOutcome.RECEIVED, "fetched", 1)}
    assert check_queue(queue_view(2000), DEFAULT, TOR_OK, fetches).suggestion == Suggestion.CHECK_WRAPPER.value


def test_unknown_tor_state_suggests_checking_tor():
    assert suggest(None, None) is Suggestion.CHECK_TOR
    assert suggest(TOR_STARTING, None) is Suggestion.RESTART_TOR


def test_partner_suggestion_looks_only_at_that_partners_onions():
    other = "b" * 56 + ".onion"
    fetches = {ONION: DescriptorFetch(ONION, FetchOutcome.RECEIVED, "ok", 1),
               other: DescriptorFetch(other, FetchOutcome.FAILED, "gone", 1)}
    assert suggest(TOR_OK, fetches, [ONION]) is Suggestion.CHECK_WRAPPER
    assert suggest(TOR_OK, fetches, [other]) is Suggestion.CHECK_PARTNER
    partner = PartnerQueue("p.test", 1, 1, 15000, "refused")
    check = check_partner_queue(partner, DEFAULT, TOR_OK, fetches, [other])
    assert (check.name, check.target, check.verdict) == ("partner_queue", "p.test", Verdict.FAIL)
    assert check.suggestion == Suggestion.CHECK_PARTNER.value.replace("<domain>", "p.test")
    assert "(_onion-mx._tcp.p.test)" in check.suggestion


def delivery_view(failing_since: float | None, sent: bool = True, now: float = 100_000.0) -> DeliveryView:
    last_sent = DeliveryEvent(now - 50_000, "sent", "Q", "a@p.test", "x.onion[127.42.42.0]:25", "250 Ok") if sent else None
    failed = DeliveryEvent(now - 10, "deferred", "Q", "a@p.test", "none", "Connection refused") if failing_since else None
    return DeliveryView(86400, now, int(sent), 5 if failing_since else 0, 0, last_sent, failed, failing_since, "maillog")


@pytest.mark.parametrize("failing_for,verdict", [(1800, Verdict.OK), (1801, Verdict.WARN), (14400, Verdict.WARN),
                                                 (14401, Verdict.FAIL)])
def test_delivery_verdict_follows_how_long_deliveries_have_been_failing(failing_for, verdict):
    check = check_delivery(delivery_view(100_000.0 - failing_for), DEFAULT, TOR_OK)
    assert (check.name, check.target, check.verdict) == ("smtptor_delivery", "maillog", verdict)
    assert f"failing for {failing_for} s" in check.detail
    assert "last failure 10 s ago: Connection refused" in check.detail


def test_delivery_ok_when_the_last_attempt_went_out():
    check = check_delivery(delivery_view(None), DEFAULT)
    assert check.verdict is Verdict.OK and "last sent 50000 s" in check.detail


def test_quiet_log_is_ok():
    check = check_delivery(delivery_view(None, sent=False), DEFAULT)
    assert check.verdict is Verdict.OK and check.detail.startswith("no onion delivery attempted")


def test_tor_sending_check():
    assert check_tor_sending(TOR_OK, "127.0.0.1:9051").verdict is Verdict.OK
    for state in (TOR_NO_CIRCUITS, TOR_STARTING):
        check = check_tor_sending(state, "127.0.0.1:9051")
        assert (check.name, check.verdict) == ("tor_circuits", Verdict.FAIL)
        assert "circuit-established=0" in check.detail and check.suggestion == Suggestion.RESTART_TOR.value


@pytest.mark.parametrize("outcome,tor,verdict,suggestion", [
    (FetchOutcome.RECEIVED, TOR_OK, Verdict.OK, None),
    (FetchOutcome.FAILED, TOR_OK, Verdict.FAIL, Suggestion.CHECK_PARTNER),
    (FetchOutcome.NO_ANSWER, TOR_OK, Verdict.FAIL, Suggestion.CHECK_PARTNER),
    (FetchOutcome.NO_ANSWER, TOR_NO_CIRCUITS, Verdict.WARN, Suggestion.RESTART_TOR),
    (FetchOutcome.FAILED, None, Verdict.WARN, Suggestion.CHECK_TOR),
    (FetchOutcome.REFUSED, TOR_NO_CIRCUITS, Verdict.FAIL, Suggestion.CHECK_PARTNER)])
def test_partner_onion_verdict(outcome, tor, verdict, suggestion):
    check = check_partner_onion("p.test", DescriptorFetch(ONION, outcome, "detail", 1.0), tor)
    assert (check.name, check.target, check.verdict) == ("partner_onion", f"p.test {ONION}", verdict)
    if suggestion is None:
        assert check.suggestion == "" and " -- " not in check.detail
    else:
        assert check.suggestion == suggestion.value.replace("<domain>", "p.test")


@pytest.mark.parametrize("seconds,text", [(0, "0 s"), (59.9, "59 s"), (60, "60 s (1 min)"),
                                          (7260, "7260 s (2 h 1 min)")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text
