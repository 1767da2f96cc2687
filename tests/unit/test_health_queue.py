"""The postqueue -j reader, on a listing recorded from Postfix 3.7.11 (tests/data/health/postqueue.jsonl).

The recorded queue (record_samples.py): ``dave@dead1`` alone (sent first, 3 s older than the rest);
one message to erin@dead1, frank@dead1, grace@dead2, heidi@clear.example (ivan@sent was delivered);
judy@clear.example alone; mallory@tordown alone; a bounce notice (sender MAILER-DAEMON) to oscar@dead2;
a burst of four one-recipient messages to rupert, sybil, trent and victor @dead2 (some of them deferred
by the queue manager as "delivery temporarily suspended: ...").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onion_gateway.errors import HealthSourceError
from onion_gateway.health.queue import domain_of, parse_postqueue_json, summarize

DATA = Path(__file__).resolve().parents[1] / "data" / "health"
RECORDED = json.loads((DATA / "recorded.json").read_text())
LISTING = (DATA / "postqueue.jsonl").read_text()
NOW = RECORDED["recorded_at"]
ONION_DOMAINS = set(RECORDED["onion_routes"])


def is_onion(domain: str) -> bool:
    return domain in ONION_DOMAINS


def test_every_recipient_of_the_recorded_listing_is_read():
    recipients = parse_postqueue_json(LISTING)
    assert sorted(r.address.split("@")[0] for r in recipients) == [
        "dave", "erin", "frank", "grace", "heidi", "judy", "mallory", "oscar", "rupert", "sybil", "trent", "victor"]
    assert {r.queue_name for r in recipients} == {"deferred"}
    assert len({r.queue_id for r in recipients}) == 9


def test_multi_recipient_message_keeps_each_recipients_own_reason_and_domain():
    recipients = parse_postqueue_json(LISTING)
    multi = [r for r in recipients if r.address.startswith(("erin@", "frank@", "grace@", "heidi@"))]
    assert len({r.queue_id for r in multi}) == 1
    by_name = {r.address.split("@")[0]: r for r in multi}
    assert by_name["grace"].domain == "dead2.partner.test"
    assert "Connection refused" in by_name["heidi"].delay_reason
    assert by_name["heidi"].delay_reason != by_name["erin"].delay_reason   # another dead port


def test_onion_figures_count_only_recipients_routing_sends_to_the_onion_transport():
    view = summarize(parse_postqueue_json(LISTING), is_onion, NOW)
    assert view.messages == 8            # dave's, the multi-recipient one, mallory's, the bounce notice, 4 burst
    assert view.recipients == 10         # dave erin frank grace mallory oscar rupert sybil trent victor
    assert view.other_recipients == 2    # heidi, judy: clear-net
    assert view.undecided_recipients == 0


def test_oldest_age_is_that_of_the_oldest_onion_message():
    recipients = parse_postqueue_json(LISTING)
    dave = next(r for r in recipients if r.address.startswith("dave@"))
    assert dave.arrival_time == min(r.arrival_time for r in recipients)
    view = summarize(recipients, is_onion, NOW)
    assert view.oldest_seconds == pytest.approx(NOW - dave.arrival_time)
    assert view.oldest_seconds > 0


def test_a_bounce_notice_is_onion_mail_when_its_recipient_is():
    recipients = parse_postqueue_json(LISTING)
    notice = next(r for r in recipients if r.address.startswith("oscar@"))
    only_dead2 = summarize([notice], is_onion, NOW)
    assert (only_dead2.messages, only_dead2.recipients) == (1, 1)


def test_most_common_reason_and_its_count():
    view = summarize(parse_postqueue_json(LISTING), is_onion, NOW)
    recipients = parse_postqueue_json(LISTING)
    plain = [r for r in recipients if r.domain.startswith("dead") and r.delay_reason.startswith("connect to ")]
    assert len(plain) >= 5       # dave erin frank grace oscar at least; burst ones may be "suspended"
    assert view.top_reason_count == len(plain)
    assert view.top_reason == plain[0].delay_reason
    assert ".onion" not in view.top_reason


def test_per_partner_breakdown_oldest_first():
    view = summarize(parse_postqueue_json(LISTING), is_onion, NOW, per_partner=True)
    partners = {p.domain: p for p in view.partners}
    assert set(partners) == {"dead1.partner.test", "dead2.partner.test", "tordown.partner.test"}
    assert (partners["dead1.partner.test"].messages, partners["dead1.partner.test"].recipients) == (2, 3)
    assert (partners["dead2.partner.test"].messages, partners["dead2.partner.test"].recipients) == (6, 6)
    assert "onion[127.42.42.0]:25: Connection refused" in partners["tordown.partner.test"].top_reason
    assert view.partners[0].domain == "dead1.partner.test"      # holds dave's, the oldest
    assert view.partners[0].oldest_seconds == view.oldest_seconds


def test_no_partner_breakdown_unless_asked():
    assert summarize(parse_postqueue_json(LISTING), is_onion, NOW).partners == ()


def test_routing_is_asked_once_per_domain():
    asked: list[str] = []

    def predicate(domain: str) -> bool:
        asked.append(domain)
        return is_onion(domain)

    summarize(parse_postqueue_json(LISTING), predicate, NOW)
    assert sorted(asked) == sorted(set(asked))
    assert set(asked) == {"dead1.partner.test", "dead2.partner.test", "tordown.partner.test", "clear.example"}


def test_undecided_domains_are_counted_apart():
    view = summarize(parse_postqueue_json(LISTING),
                     lambda d: None if d == "dead2.partner.test" else is_onion(d), NOW)
    assert view.undecided_recipients == 6        # grace, oscar, the burst
    assert view.recipients == 4


def test_only_the_deferred_queue_counts():
    messages = [json.loads(line) for line in LISTING.splitlines()]
    for message in messages:
        names = [r["address"].split("@")[0] for r in message["recipients"]]
        if names == ["dave"]:
            message["queue_name"] = "active"      # being retried right now
        elif names == ["oscar"]:
            message["queue_name"] = "hold"        # put aside by the postmaster
    view = summarize(parse_postqueue_json("\n".join(json.dumps(m) for m in messages)), is_onion, NOW)
    assert (view.messages, view.recipients) == (6, 8)     # less dave's and oscar's


def test_ages_never_negative_when_the_clock_is_behind():
    view = summarize(parse_postqueue_json(LISTING), is_onion, now=0.0)
    assert view.oldest_seconds == 0.0


def test_empty_listing_is_an_empty_view():
    view = summarize(parse_postqueue_json(""), is_onion, NOW)
    assert (view.messages, view.recipients, view.oldest_seconds, view.top_reason) == (0, 0, 0.0, "")


@pytest.mark.parametrize("line", ['{"queue_name": "deferred"}', "not json", '{"queue_name": "deferred", '
                                  '"queue_id": "A", "arrival_time": 1, "recipients": "x"}', "[]"])
def test_a_malformed_line_is_a_clear_error_naming_it(line):
    with pytest.raises(HealthSourceError, match="line 2"):
        parse_postqueue_json(LISTING.splitlines()[0] + "\n" + line + "\n")


@pytest.mark.parametrize("address,domain", [("a@Example.ORG", "example.org"), ("a@b.example.", "b.example"),
                                            ("postmaster", ""), ('"a@b"@c.example', "c.example")])
def test_domain_of(address, domain):
    assert domain_of(address) == domain


def test_a_predicate_with_prime_gets_every_deferred_domain_at_once():
    class Primed:
        def __init__(self) -> None:
            self.primed: list[set[str]] = []

        def prime(self, domains) -> None:
            self.primed.append(set(domains))

        def __call__(self, domain: str) -> bool:
            assert self.primed, "called before prime"
            return is_onion(domain)

    predicate = Primed()
    view = summarize(parse_postqueue_json(LISTING), predicate, NOW)
    assert predicate.primed == [{"dead1.partner.test", "dead2.partner.test", "tordown.partner.test", "clear.example"}]
    assert view.recipients == 10
