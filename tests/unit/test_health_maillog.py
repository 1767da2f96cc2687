"""The log readers, on logs recorded from Postfix 3.7.11 (tests/data/health/maillog, journal.jsonl).

The recordings (record_samples.py) hold ``postfix/smtptor/smtp`` lines ending sent (bob, ivan @sent),
bounced (carol, peggy @bounce: the sink rejects RCPT with 5xx) and deferred (dead ports, and an onion
whose torsocks finds no Tor), plain ``postfix/smtp`` deferrals for clear.example, and ``postfix/error``
"delivery temporarily suspended" echoes.
"""

from __future__ import annotations

import bz2
import dataclasses
import datetime as dt
import gzip
import json
import lzma
from pathlib import Path

import pytest

from onion_gateway.errors import HealthSourceError
from onion_gateway.health import maillog
from onion_gateway.health.maillog import (DeliveryEvent, journal_events, maillog_events, parse_delivery,
                                          parse_journal_record, parse_syslog_line, read_maillog, rotated_logs,
                                          summarize)
from onion_gateway.health.verdicts import HealthThresholds, check_delivery
from onion_gateway.status import Verdict

DATA = Path(__file__).resolve().parents[1] / "data" / "health"
RECORDED = json.loads((DATA / "recorded.json").read_text())
NOW = RECORDED["recorded_at"]
UTC = dt.timezone.utc                      # the machine that recorded the maillog runs in UTC
NAMES = ("postfix/smtptor",)
MAILLOG = (DATA / "maillog").read_text().splitlines()
JOURNAL = (DATA / "journal.jsonl").read_text().splitlines()


def sample(program: str, status: str) -> str:
    return next(line for line in MAILLOG if f" {program}[" in line and f"status={status}" in line)


def test_traditional_line_splits_into_time_tag_and_message():
    line = sample("postfix/smtptor/smtp", "sent")
    stamp, tag, message = parse_syslog_line(line, NOW, UTC)
    assert tag == "postfix/smtptor/smtp"
    assert message.split(": ", 1)[1].startswith("to=<")
    when = dt.datetime.fromtimestamp(stamp, UTC)
    assert when.strftime("%b %d %H:%M:%S") == line[:15]
    assert 0 <= NOW - stamp < 600


@pytest.mark.parametrize("stamp,expected", [
    ("2026-12-01T01:02:58Z", dt.datetime(2026, 12, 1, 1, 2, 58, tzinfo=UTC)),
    ("2026-12-01T01:02:58.5+0100", dt.datetime(2026, 12, 1, 0, 2, 58, 500000, tzinfo=UTC)),
    ("2026-12-01 01:02:58-05:00", dt.datetime(2026, 12, 1, 6, 2, 58, tzinfo=UTC))])
def test_rfc3339_variants(stamp, expected):
    assert parse_syslog_line(f"{stamp} gw postfix/smtptor/smtp[1]: x", NOW)[0] == expected.timestamp()


def test_rfc3339_line_as_rsyslog_writes_it():
    line = ("2026-12-01T01:02:58.123456+01:00 gw postfix/smtptor/smtp[13235]: 506E320DC32: to=<bob@x.test>, "
            "relay=a.onion[127.42.42.0]:25, delay=0.05, delays=0.01/0.04/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok)")
    stamp, tag, _ = parse_syslog_line(line, NOW)
    assert stamp == dt.datetime(2026, 12, 1, 0, 2, 58, 123456, UTC).timestamp()
    assert tag == "postfix/smtptor/smtp"


@pytest.mark.parametrize("line,now,expected", [
    # a December line read on January 1st belongs to the year before
    ("Dec 31 23:59:59 h postfix/smtptor/smtp[1]: x", dt.datetime(2027, 1, 1, 0, 0, 5, tzinfo=UTC),
     dt.datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)),
    # a clock slightly behind the log's: the line stays in the year that puts it just ahead
    ("Jan  1 00:00:05 h postfix/smtptor/smtp[1]: x", dt.datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
     dt.datetime(2027, 1, 1, 0, 0, 5, tzinfo=UTC)),
    ("Feb 29 12:00:00 h postfix/smtptor/smtp[1]: x", dt.datetime(2029, 3, 1, tzinfo=UTC),
     dt.datetime(2028, 2, 29, 12, tzinfo=UTC)),
    ("Mar 08 13:02:17.447893 h postfix/smtptor/smtp[1]: x", dt.datetime(2026, 3, 9, tzinfo=UTC),
     dt.datetime(2026, 3, 8, 13, 2, 17, 447893, tzinfo=UTC)),
])
def test_year_of_a_traditional_stamp(line, now, expected):
    assert parse_syslog_line(line, now.timestamp(), UTC)[0] == expected.timestamp()


@pytest.mark.parametrize("line", ["", "  continuation", "Foo 01 01:02:03 h postfix/smtp[1]: x",
                                  "Dec 01 01:02:58", "Feb 30 01:02:03 h postfix/smtp[1]: x"])
def test_other_lines_are_skipped(line):
    assert parse_syslog_line(line, NOW, UTC) is None


def test_delivery_fields_of_a_bounced_line():
    line = sample("postfix/smtptor/smtp", "bounced")
    stamp, tag, message = parse_syslog_line(line, NOW, UTC)
    event = parse_delivery(tag, message, stamp, NAMES)
    assert event.status == "bounced"
    assert event.recipient.endswith("@bounce.partner.test")
    assert event.relay.startswith("127.0.0.1[127.0.0.1]:")
    assert "said: 500 5.3.0" in event.reason and event.reason.endswith("(in reply to RCPT TO command)")


def test_tor_down_deferral_reads_like_a_refused_connection():
    line = next(l for l in MAILLOG if "tordown.partner.test" in l and "status=deferred" in l)
    event = parse_delivery(*parse_syslog_line(line, NOW, UTC)[1:], 0.0, NAMES)
    assert event.relay == "none"
    assert event.reason.endswith(".onion[127.42.42.0]:25: Connection refused")


@pytest.mark.parametrize("program", ["postfix/smtp", "postfix/error", "postfix/virtual"])
def test_other_transports_are_not_onion_deliveries(program):
    line = next(l for l in MAILLOG if f" {program}[" in l and "status=" in l)
    parts = parse_syslog_line(line, NOW, UTC)
    assert parse_delivery(parts[1], parts[2], parts[0], NAMES) is None


def test_non_delivery_lines_of_the_transport_are_skipped():
    line = next(l for l in MAILLOG if " postfix/smtptor/smtp[" in l and "status=" not in l)
    parts = parse_syslog_line(line, NOW, UTC)
    assert parse_delivery(parts[1], parts[2], parts[0], NAMES) is None


def test_recorded_maillog_counts():
    events = maillog_events(MAILLOG, NAMES, NOW, tz=UTC)
    view = summarize(events, 3600, NOW, "maillog")
    assert (view.sent, view.bounced) == (2, 2)
    expected_deferred = sum(1 for l in MAILLOG if " postfix/smtptor/smtp[" in l and "status=deferred" in l)
    assert view.deferred == expected_deferred > 0
    assert not any(e.recipient.endswith("@clear.example") for e in events)
    assert not any(e.reason.startswith("delivery temporarily suspended") for e in events)
    assert view.last_sent.recipient in {"bob@sent.partner.test", "ivan@sent.partner.test"}
    assert view.last_failed.status == "deferred"
    # mail to the dead partners kept failing after the last success
    assert view.failing_since is not None and view.failing_since >= view.last_sent.timestamp


def test_recorded_journal_counts_match_the_same_scenario():
    events = journal_events(JOURNAL, NAMES)
    view = summarize(events, 3600, max(e.timestamp for e in events) + 1, "journal")
    assert (view.sent, view.bounced) == (2, 2)
    expected_deferred = sum(1 for l in JOURNAL if '"SYSLOG_IDENTIFIER":"postfix/smtptor/smtp"' in l
                            and "status=deferred" in l)
    assert view.deferred == expected_deferred > 0
    assert any('"SYSLOG_IDENTIFIER":"postfix/error"' in l and "status=deferred" in l for l in JOURNAL)
    assert not any(e.reason.startswith("delivery temporarily suspended") for e in events)
    assert {e.recipient for e in events if e.status == "sent"} == {"bob@sent.partner.test", "ivan@sent.partner.test"}


def test_journal_record_fields():
    record = next(l for l in JOURNAL if "status=sent" in l and "smtptor" in l)
    stamp, tag, message = parse_journal_record(record)
    assert tag == "postfix/smtptor/smtp"
    assert stamp == int(json.loads(record)["__REALTIME_TIMESTAMP"]) / 1e6
    assert "status=sent" in message


def test_journal_message_as_byte_array_is_decoded():
    # journalctl -o json prints a MESSAGE that is not valid UTF-8 as an array of byte values
    text = "ABC: to=<x@y.test>, relay=none, delay=1, dsn=4.4.1, status=deferred (bad \xff byte)"
    raw = list(text.encode("latin-1"))
    record = json.dumps({"__REALTIME_TIMESTAMP": "1796086978000000", "SYSLOG_IDENTIFIER": "postfix/smtptor/smtp",
                         "MESSAGE": raw})
    event = journal_events([record], NAMES)[0]
    assert event.status == "deferred" and event.reason.startswith("bad ")


@pytest.mark.parametrize("record", ["not json", "{}", '{"MESSAGE": "x", "SYSLOG_IDENTIFIER": "y"}',
                                    '{"__REALTIME_TIMESTAMP": "1", "SYSLOG_IDENTIFIER": "y", "MESSAGE": 5}'])
def test_unusable_journal_records_are_skipped(record):
    assert parse_journal_record(record) is None


def test_window_excludes_older_events():
    events = maillog_events(MAILLOG, NAMES, NOW, tz=UTC)
    first = min(e.timestamp for e in events)
    view = summarize(events, NOW - first - 1, NOW, "maillog")     # the first second falls out
    assert view.sent + view.deferred + view.bounced < len(events)
    assert maillog_events(MAILLOG, NAMES, NOW, since=NOW + 1, tz=UTC) == []


def _event(t: float, status: str) -> DeliveryEvent:
    return DeliveryEvent(t, status, "Q", "r@p.test", "none", "why")


@pytest.mark.parametrize("statuses,failing_since", [
    ([], None),
    (["sent"], None),
    (["deferred", "sent"], None),                       # recovered
    (["sent", "deferred", "deferred"], 2.0),            # failing since the first deferral after the success
    (["deferred", "deferred"], 1.0),                    # nothing sent in the window
    (["sent", "bounced"], None),                        # a bounce is the partner's answer: delivery works
    (["sent", "bounced", "deferred"], 3.0),
])
def test_failing_since(statuses, failing_since):
    view = summarize([_event(float(i + 1), s) for i, s in enumerate(statuses)], 100, 10, "t")
    assert view.failing_since == failing_since


def test_missing_maillog_is_a_clear_error(tmp_path):
    with pytest.raises(HealthSourceError, match="cannot read the mail log"):
        read_maillog(tmp_path / "nope", NAMES, 60)


def test_read_maillog_reads_the_file(tmp_path):
    path = tmp_path / "maillog"
    path.write_text("\n".join(MAILLOG) + "\n")
    view = read_maillog(path, NAMES, 3600, NOW, tz=UTC)
    assert (view.sent, view.bounced, view.source) == (2, 2, str(path))


# --- rotated logs ---------------------------------------------------------------------------------------------
# The recorded log cut in three: OLDEST holds the first success (bob) and a bounce, MIDDLE the last success
# (ivan), CURRENT only failures -- so the last delivery is in a rotated file.

OLDEST, MIDDLE, CURRENT = MAILLOG[:20], MAILLOG[20:35], MAILLOG[35:]


def first_stamp(lines: list[str]) -> float:
    return next(p[0] for p in (parse_syslog_line(l, NOW, UTC) for l in lines) if p is not None)


def write_log(path: Path, lines: list[str]) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix)
    if opener is None:
        path.write_bytes(data)
    else:
        with opener(path, "wb") as fh:
            fh.write(data)
    return path


def test_current_file_alone_has_no_success():
    assert not any("status=sent" in l and "smtptor" in l for l in CURRENT)
    assert any("ivan@sent" in l and "status=sent" in l for l in MIDDLE)


def test_debian_logrotate_files_are_read_newest_first(tmp_path):
    # /etc/logrotate.d/rsyslog on Debian: compress + delaycompress -> mail.log.1 plain, older ones gzipped
    log = write_log(tmp_path / "mail.log", CURRENT)
    write_log(tmp_path / "mail.log.1", MIDDLE)
    write_log(tmp_path / "mail.log.2.gz", OLDEST)
    view = read_maillog(log, NAMES, 3600, NOW, tz=UTC)
    assert view.files == (str(log), str(tmp_path / "mail.log.1"), str(tmp_path / "mail.log.2.gz"))
    whole = summarize(maillog_events(MAILLOG, NAMES, NOW, tz=UTC), 3600, NOW, str(log))
    assert (view.sent, view.deferred, view.bounced) == (whole.sent, whole.deferred, whole.bounced)
    assert (view.sent, view.bounced) == (2, 2)
    assert view.last_sent.recipient == "ivan@sent.partner.test"       # only in mail.log.1
    assert view.problems == () and view.source == str(log)


def test_rotated_files_are_read_only_as_far_back_as_the_window(tmp_path):
    log = write_log(tmp_path / "mail.log", CURRENT)
    write_log(tmp_path / "mail.log.1", MIDDLE)
    (tmp_path / "mail.log.2.gz").write_bytes(b"not gzip at all")       # would be a problem if it were read
    start = first_stamp(MIDDLE) + 0.5                                  # inside mail.log.1, after its first line
    assert start < first_stamp(CURRENT)
    view = read_maillog(log, NAMES, NOW - start, NOW, tz=UTC)
    assert view.files == (str(log), str(tmp_path / "mail.log.1"))
    assert view.problems == ()
    assert view.last_sent.recipient == "ivan@sent.partner.test"


def test_window_inside_the_current_file_reads_no_rotated_file(tmp_path):
    log = write_log(tmp_path / "mail.log", CURRENT)
    write_log(tmp_path / "mail.log.1", MIDDLE)
    view = read_maillog(log, NAMES, NOW - first_stamp(CURRENT), NOW, tz=UTC)
    assert view.files == (str(log),) and view.last_sent is None


def test_postfix_logrotate_files_are_read_newest_first(tmp_path):
    # postfix logrotate: maillog_file + "." + `date +%Y%m%d-%H%M%S`, then gzip (postconf(5) defaults)
    log = write_log(tmp_path / "maillog", CURRENT)
    newer = write_log(tmp_path / "maillog.20261201-011151.gz", MIDDLE)
    older = write_log(tmp_path / "maillog.20261201-011150.gz", OLDEST)
    view = read_maillog(log, NAMES, 3600, NOW, tz=UTC)
    assert view.files == (str(log), str(newer), str(older))
    assert (view.sent, view.bounced) == (2, 2)
    assert view.last_sent.recipient == "ivan@sent.partner.test"


def test_a_custom_rotate_suffix_orders_by_the_time_it_names(tmp_path):
    # maillog_file_rotate_suffix = %d.%m.%Y-%H%M: name order (30.11 after 01.12) is not time order
    log = write_log(tmp_path / "maillog", CURRENT)
    newer = write_log(tmp_path / "maillog.01.12.2026-0111.xz", MIDDLE)
    older = write_log(tmp_path / "maillog.30.11.2026-2359.bz2", OLDEST)
    assert read_maillog(log, NAMES, 3600, NOW, tz=UTC).files == (str(log),)    # not the default suffix's shape
    view = read_maillog(log, NAMES, 3600, NOW, tz=UTC, rotate_suffix="%d.%m.%Y-%H%M")
    assert view.files == (str(log), str(newer), str(older)) and view.sent == 2


@pytest.mark.parametrize("names,expected", [
    (["mail.log.1", "mail.log.10.gz", "mail.log.2.gz", "mail.log.bak", "mail.logx.1", "other.1"],
     ["mail.log.1", "mail.log.2.gz", "mail.log.10.gz"]),
    # caught between postfix logrotate's rename and its gzip: the plain file is the complete one
    (["mail.log.20261201-010000", "mail.log.20261201-010000.gz", "mail.log.20261130-010000.gz"],
     ["mail.log.20261201-010000", "mail.log.20261130-010000.gz"]),
    (["mail.log.20261130-010000.bz2", "mail.log.1"], ["mail.log.20261130-010000.bz2", "mail.log.1"]),
])
def test_rotated_logs_order(tmp_path, names, expected):
    for name in names:
        (tmp_path / name).write_text("")
    assert [p.name for p in rotated_logs(tmp_path / "mail.log")] == expected


def test_an_all_digit_suffix_is_a_date_not_a_number(tmp_path):
    # maillog_file_rotate_suffix = %Y%m%d: the newer day has the larger "number"
    for name in ("maillog.20261130.gz", "maillog.20261201.gz", "maillog.1"):
        (tmp_path / name).write_text("")
    assert [p.name for p in rotated_logs(tmp_path / "maillog", "%Y%m%d")] == [
        "maillog.20261201.gz", "maillog.20261130.gz", "maillog.1"]


def test_an_unreadable_rotated_file_is_reported_and_the_next_one_read(tmp_path):
    log = write_log(tmp_path / "mail.log", CURRENT)
    (tmp_path / "mail.log.1.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated")      # corrupt gzip
    (tmp_path / "mail.log.2").symlink_to(tmp_path / "gone")                     # vanished
    write_log(tmp_path / "mail.log.3.gz", MIDDLE + OLDEST)
    view = read_maillog(log, NAMES, 3600, NOW, tz=UTC)
    assert view.files == (str(log), str(tmp_path / "mail.log.3.gz"))
    assert len(view.problems) == 2
    assert "mail.log.1.gz" in view.problems[0] and "mail.log.2: No such file" in view.problems[1]
    assert view.last_sent.recipient == "ivan@sent.partner.test"


def test_a_rotated_file_compressed_after_listing_is_read_compressed(tmp_path, monkeypatch):
    # the race a real postfix logrotate leaves open for a second: listed plain, gzipped before it is opened
    log = write_log(tmp_path / "maillog", CURRENT)
    gone = tmp_path / "maillog.20261201-011151"
    write_log(tmp_path / "maillog.20261201-011151.gz", MIDDLE)
    monkeypatch.setattr(maillog, "rotated_logs", lambda path, suffix: [gone])
    view = read_maillog(log, NAMES, 3600, NOW, tz=UTC)
    assert view.files == (str(log), str(gone) + ".gz") and view.problems == ()


def test_delivery_check_names_unread_rotated_files():
    view = dataclasses.replace(summarize([], 3600, NOW, "/var/log/mail.log"),
                               problems=("cannot read the rotated mail log /var/log/mail.log.1: Permission denied",))
    check = check_delivery(view, HealthThresholds())
    assert check.verdict is Verdict.WARN and "mail.log.1: Permission denied" in check.detail
    sent = dataclasses.replace(summarize([_event(NOW - 5, "sent")], 3600, NOW, "m"), problems=view.problems)
    assert check_delivery(sent, HealthThresholds()).verdict is Verdict.OK
    assert "Permission denied" in check_delivery(sent, HealthThresholds()).detail
