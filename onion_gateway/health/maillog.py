"""Delivery view of the onion transport: when mail last left over it, and when it last failed.

Source: Postfix's own log, either the file Postfix writes itself (``maillog_file``, postlogd(8)) or
the systemd journal (``journalctl -o json``). The onion transport is told apart by its syslog name:
setup's master.cf entry says ``-o syslog_name=postfix/smtptor`` (templates/postfix/master.cf.j2), so
its smtp(8) logs as ``postfix/smtptor/smtp``. Recorded from Postfix 3.7.11 (tests/data/health/maillog)::

    Dec 01 01:02:58 gw postfix/smtptor/smtp[13235]: 506E320DC32: to=<bob@sent.partner.test>,
        relay=127.0.0.1[127.0.0.1]:35597, delay=0.05, delays=0.01/0.04/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok)
    Dec 01 01:02:58 gw postfix/smtptor/smtp[13248]: 5531020DC37: to=<mallory@tordown.partner.test>,
        relay=none, delay=0.1, delays=0/0.09/0/0, dsn=4.4.1, status=deferred (connect to
        zkly...tyd.onion[127.42.42.0]:25: Connection refused)
    Dec 01 01:03:03 gw postfix/error[13622]: 520E120DC34: to=<dave@dead1.partner.test>, relay=none, ...
        status=deferred (delivery temporarily suspended: connect to ...)

(one line each in the file). The ``relay=`` field names the host, not the transport, so it cannot be
used; ``postfix/error`` lines ("delivery temporarily suspended") are the queue manager's echo of an
earlier smtptor failure, not a new attempt, and are not counted. A journal record carries the same
text in ``MESSAGE``, the tag in ``SYSLOG_IDENTIFIER`` and the time in ``__REALTIME_TIMESTAMP``
(microseconds since the epoch; systemd.journal-fields(7)).

File timestamps are either the traditional ``Mmm dd hh:mm:ss`` (postlogd, classic syslog: no year, local
time; the year is the one that puts the line no more than a day after *now*) or RFC 3339
(``2026-12-01T01:02:58.123456+00:00``, rsyslog's default on Debian 12).

Rotated logs: when the window starts before the first line of the current file, its rotated
predecessors are read too, newest first, until one starts at or before the window (:func:`rotated_logs`).
Two namings are known: logrotate's numbered files, as Debian rotates rsyslog's /var/log/mail.log
(``mail.log.1``, then ``mail.log.2.gz`` ...: ``delaycompress``), and ``postfix logrotate``'s
(postconf(5) ``maillog_file_rotate_suffix``, default ``%Y%m%d-%H%M%S``, compressed by
``maillog_file_compressor``, default gzip: ``maillog.20261130-101500.gz``). gzip, bzip2 and xz files are
read with the standard library; a rotated file that cannot be read is named in the view's ``problems``.
"""

from __future__ import annotations

import bz2
import dataclasses
import datetime as dt
import gzip
import json
import logging
import lzma
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from onion_gateway import postfix
from onion_gateway.errors import HealthSourceError, PostfixError

log = logging.getLogger(__name__)

JOURNAL_UNITS = ("postfix.service", "postfix@*.service")   # Debian runs the instance as postfix@-.service
JOURNAL_TIMEOUT_SECONDS = 60
FAILED_STATUSES = frozenset({"deferred", "bounced"})
#: postconf(5) ``maillog_file_rotate_suffix``'s default: ``postfix logrotate`` names ``maillog.20261130-101500``.
DEFAULT_ROTATE_SUFFIX = "%Y%m%d-%H%M%S"
#: compressed rotated logs the standard library reads, by file name ending.
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_NUMBERED = re.compile(r"(\d+)(\.(?:gz|bz2|xz))?")

_TRADITIONAL = re.compile(
    r"(?P<mon>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<time>\d\d:\d\d:\d\d)(?:\.(?P<frac>\d+))? "
    r"(?P<host>\S+) (?P<tag>[^\s\[:]+)(?:\[\d+\])?: (?P<msg>.*)")
_RFC3339 = re.compile(
    r"(?P<stamp>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)) "
    r"(?P<host>\S+) (?P<tag>[^\s\[:]+)(?:\[\d+\])?: (?P<msg>.*)")
_DELIVERY = re.compile(r"(?P<qid>[0-9A-Za-z]+): to=<(?P<rcpt>[^>]*)>, (?P<fields>.*?)"
                       r"\bstatus=(?P<status>[a-z]+)(?: \((?P<reason>.*)\))?$")
_RELAY = re.compile(r"\brelay=([^,\s]+)")
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """One delivery attempt the onion transport logged.

    :param timestamp: when (Unix time, seconds).
    :param status: ``sent``, ``deferred``, ``bounced`` (or another Postfix status word).
    :param queue_id: the message's queue ID.
    :param recipient: the ``to=<...>`` address.
    :param relay: the ``relay=`` field (``none`` when no connection was made).
    :param reason: the text in parentheses after the status.
    """

    timestamp: float
    status: str
    queue_id: str
    recipient: str
    relay: str
    reason: str


@dataclass(frozen=True, slots=True)
class DeliveryView:
    """What the onion transport did within a window.

    :param window_seconds: the window that was read (seconds before *taken_at*).
    :param taken_at: the end of the window (Unix time, seconds).
    :param sent: ``status=sent`` deliveries in the window.
    :param deferred: ``status=deferred`` attempts in the window.
    :param bounced: ``status=bounced`` results in the window.
    :param last_sent: the latest successful delivery, or ``None``.
    :param last_failed: the latest deferred or bounced attempt, or ``None``.
    :param failing_since: the first deferral after the last success (or the first in the window when
        nothing was sent), if no success followed it; ``None`` when the last attempt went through.
    :param source: where it was read: the log file path, or ``journal``.
    :param files: the log files read, newest first (the current one and the rotated ones the window
        needed); empty for the journal.
    :param problems: one line per rotated file the window needed that could not be read (the view
        misses its events).
    """

    window_seconds: float
    taken_at: float
    sent: int
    deferred: int
    bounced: int
    last_sent: DeliveryEvent | None
    last_failed: DeliveryEvent | None
    failing_since: float | None
    source: str
    files: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


# --- parsing ---------------------------------------------------------------------------------------------


def parse_syslog_line(line: str, now: float, tz: dt.tzinfo | None = None) -> tuple[float, str, str] | None:
    """Split one syslog-format log line into ``(timestamp, tag, message)``.

    :param line: a line of a maillog file (traditional or RFC 3339 timestamp), without or with its newline.
    :param now: the reference time (Unix time, seconds) that supplies the year of a traditional stamp.
    :param tz: the zone of a traditional stamp; ``None`` is the local zone (what postlogd writes).
    :returns: ``(Unix time, tag such as "postfix/smtptor/smtp", message)``, or ``None`` for a line
        of another shape (continuations, garbage).
    """
    line = line.rstrip("\n")
    match = _TRADITIONAL.match(line)
    if match is not None:
        stamp = _traditional_time(match, now, tz)
        if stamp is None:
            return None
        return stamp, match.group("tag"), match.group("msg")
    match = _RFC3339.match(line)
    if match is not None:
        try:
            stamp = dt.datetime.fromisoformat(match.group("stamp").replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
        return stamp, match.group("tag"), match.group("msg")
    return None


def _traditional_time(match: re.Match, now: float, tz: dt.tzinfo | None) -> float | None:
    month = _MONTHS.get(match.group("mon"))
    if month is None:
        return None
    hour, minute, second = (int(p) for p in match.group("time").split(":"))
    micro = int((match.group("frac") or "0")[:6].ljust(6, "0"))
    year = dt.datetime.fromtimestamp(now, tz).year
    for candidate in (year + 1, year, year - 1):
        try:
            moment = dt.datetime(candidate, month, int(match.group("day")), hour, minute, second, micro, tzinfo=tz)
        except ValueError:          # Feb 29 in another year, day 31 of a short month
            continue
        stamp = moment.timestamp()  # a naive datetime is local time here
        if stamp <= now + 86_400:
            return stamp
    return None


def parse_delivery(tag: str, message: str, timestamp: float, syslog_names: Sequence[str]) -> DeliveryEvent | None:
    """A :class:`DeliveryEvent` if *message* is a delivery result logged under one of *syslog_names*.

    :param tag: the syslog tag, e.g. ``postfix/smtptor/smtp`` (``syslog_name`` + ``/`` + program).
    :param message: the log message after ``tag[pid]: ``.
    :param timestamp: the line's time (Unix time, seconds).
    :param syslog_names: the onion transport's syslog names, e.g. ``("postfix/smtptor",)``.
    :returns: the event, or ``None`` for other programs and other messages.
    """
    if not any(tag.startswith(name + "/") for name in syslog_names):
        return None
    match = _DELIVERY.match(message)
    if match is None:
        return None
    relay = _RELAY.search(match.group("fields"))
    return DeliveryEvent(timestamp, match.group("status"), match.group("qid"), match.group("rcpt"),
                         relay.group(1) if relay else "", match.group("reason") or "")


def parse_journal_record(line: str) -> tuple[float, str, str] | None:
    """Split one ``journalctl -o json`` line into ``(timestamp, SYSLOG_IDENTIFIER, MESSAGE)``.

    ``MESSAGE`` may be an array of byte values when it is not valid UTF-8 (journalctl(1), ``json``);
    it is decoded with replacement.

    :returns: the triple, or ``None`` for a record without those fields or a line that is not JSON.
    """
    try:
        record = json.loads(line)
        stamp = int(record["__REALTIME_TIMESTAMP"]) / 1_000_000
        tag = record["SYSLOG_IDENTIFIER"]
        message = record["MESSAGE"]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(message, list):
        message = bytes(message).decode("utf-8", errors="replace")
    if isinstance(tag, list):
        tag = bytes(tag).decode("utf-8", errors="replace")
    if not isinstance(message, str) or not isinstance(tag, str):
        return None
    return stamp, tag, message


def summarize(events: Iterable[DeliveryEvent], window_seconds: float, now: float, source: str) -> DeliveryView:
    """Fold delivery events into a :class:`DeliveryView` of the window ``[now - window_seconds, now]``.

    :param events: in any order; those outside the window are ignored.
    :param window_seconds: the window length (seconds).
    :param now: the window's end (Unix time, seconds).
    :param source: where the events came from (for the report).
    """
    start = now - window_seconds
    inside = sorted((e for e in events if start <= e.timestamp <= now), key=lambda e: e.timestamp)
    counts = {"sent": 0, "deferred": 0, "bounced": 0}
    last_sent = last_failed = None
    failing_since: float | None = None
    for event in inside:
        if event.status in counts:
            counts[event.status] += 1
        if event.status == "sent":
            last_sent, failing_since = event, None
        elif event.status in FAILED_STATUSES:
            last_failed = event
            if event.status == "deferred" and failing_since is None:
                failing_since = event.timestamp
    return DeliveryView(window_seconds, now, counts["sent"], counts["deferred"], counts["bounced"], last_sent,
                        last_failed, failing_since, source)


# --- reading ---------------------------------------------------------------------------------------------


def maillog_events(lines: Iterable[str], syslog_names: Sequence[str], now: float, since: float = 0.0,
                   tz: dt.tzinfo | None = None) -> list[DeliveryEvent]:
    """The onion transport's delivery events among maillog *lines* at or after *since*.

    :param lines: log lines (a file object works).
    :param syslog_names: the transport's syslog names (``("postfix/smtptor",)``).
    :param now: reference time for the year of traditional stamps (Unix time, seconds).
    :param since: ignore events before this time (Unix time, seconds).
    :param tz: zone of traditional stamps (``None``: local).
    """
    needles = tuple(f" {name}/" for name in syslog_names)
    # cheap filter first: most lines are other programs
    records = (parse_syslog_line(line, now, tz) for line in lines
               if "status=" in line and any(n in line for n in needles))
    return _events(records, syslog_names, since)


def _events(records: Iterable[tuple[float, str, str] | None], syslog_names: Sequence[str],
            since: float) -> list[DeliveryEvent]:
    events = []
    for parts in records:
        if parts is None or parts[0] < since:
            continue
        event = parse_delivery(parts[1], parts[2], parts[0], syslog_names)
        if event is not None:
            events.append(event)
    return events


def read_maillog(path: Path, syslog_names: Sequence[str], window_seconds: float, now: float | None = None,
                 tz: dt.tzinfo | None = None, rotate_suffix: str = DEFAULT_ROTATE_SUFFIX) -> DeliveryView:
    """Read the onion transport's deliveries of the last *window_seconds* from a maillog file and, when
    the window starts before its first line, from its rotated predecessors (:func:`rotated_logs`).

    Rotated files are read newest first and only until one whose first line is at or before the
    window's start (or none is left); the current file is read whole.

    :param path: the file (``postconf -h maillog_file``, or a syslog file such as /var/log/mail.log).
    :param syslog_names: the transport's syslog names (:func:`transport_syslog_names`).
    :param window_seconds: how far back to look (seconds).
    :param now: the window's end (Unix time, seconds), default now.
    :param tz: zone of traditional stamps (``None``: local).
    :param rotate_suffix: ``maillog_file_rotate_suffix`` (a strftime(3) format) that names the rotated
        files ``postfix logrotate`` made; numbered files (logrotate) are found whatever it is.
    :returns: the :class:`DeliveryView`; rotated files that could not be read (no permission, vanished,
        corrupt) are in its ``problems`` and do not stop the reading.
    :raises HealthSourceError: if the current file cannot be opened (missing, or no permission: readable
        by root, and by the groups the file's mode allows, e.g. ``adm`` for /var/log/mail.log on Debian).
    """
    now = time.time() if now is None else now
    start = now - window_seconds
    try:
        events, first = _read_log_file(path, syslog_names, now, start, tz)
    except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
        raise HealthSourceError(f"cannot read the mail log {path}: {_why(exc)} (readable by root "
                                "and by the groups its mode allows, such as adm)") from exc
    files, problems = [str(path)], []
    if first is None or first > start:
        for older in rotated_logs(path, rotate_suffix):
            try:
                try:
                    more, first = _read_log_file(older, syslog_names, now, start, tz)
                except FileNotFoundError:
                    # compressed since it was listed (postfix logrotate runs its compressor a second after
                    # the rename): read what the compressor wrote
                    compressed = next((older.with_name(older.name + ext) for ext in _OPENERS
                                       if older.with_name(older.name + ext).exists()), None)
                    if compressed is None:
                        raise
                    older = compressed
                    more, first = _read_log_file(older, syslog_names, now, start, tz)
            except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
                problems.append(f"cannot read the rotated mail log {older}: {_why(exc)}")
                continue
            events.extend(more)
            files.append(str(older))
            if first is not None and first <= start:
                break
    view = summarize(events, window_seconds, now, str(path))
    return dataclasses.replace(view, files=tuple(files), problems=tuple(problems))


def rotated_logs(path: Path, rotate_suffix: str = DEFAULT_ROTATE_SUFFIX) -> list[Path]:
    """The rotated predecessors of the log file *path* that exist, newest first.

    Recognized names, in *path*'s directory (each possibly ending in ``.gz``, ``.bz2`` or ``.xz``)::

        mail.log.1  mail.log.2.gz  mail.log.3.gz            logrotate (Debian's rsyslog rotation):
                                                            the lower the number, the newer
        maillog.20261201-101500.gz  maillog.20261130-101500  postfix logrotate: the suffix is
                                                            maillog_file_rotate_suffix (strftime(3))

    Files named by *rotate_suffix* come first, latest time first, then the numbered ones; other names
    (``mail.log.bak``) are not logs of this file and are left alone.

    :param path: the current log file.
    :param rotate_suffix: ``maillog_file_rotate_suffix``.
    :returns: the paths; empty when the directory cannot be listed.
    """
    prefix = path.name + "."
    dated: list[tuple[dt.datetime, Path]] = []
    numbered: list[tuple[int, Path]] = []
    try:
        names = [entry.name for entry in path.parent.iterdir() if entry.name.startswith(prefix)]
    except OSError as exc:
        log.warning("cannot list %s for rotated mail logs: %s", path.parent, _why(exc))
        return []
    stems = {name[len(prefix):] for name in names}
    for name in names:
        rest = name[len(prefix):]
        stem = next((rest[:-len(ext)] for ext in _OPENERS if rest.endswith(ext)), rest)
        if stem != rest and stem in stems:
            continue        # caught between the rename and the compressor: the plain file is the whole one
        try:
            when = dt.datetime.strptime(stem, rotate_suffix)
        except ValueError:
            when = None
        if when is not None and when.year >= 1970:     # an all-digit suffix (%Y%m%d) is a date, not a number
            dated.append((when, path.parent / name))
            continue
        match = _NUMBERED.fullmatch(rest)
        if match is not None:
            numbered.append((int(match.group(1)), path.parent / name))
    return [p for _, p in sorted(dated, key=lambda d: d[0], reverse=True)] + [p for _, p in sorted(numbered)]


def _read_log_file(path: Path, syslog_names: Sequence[str], now: float, since: float,
                   tz: dt.tzinfo | None) -> tuple[list[DeliveryEvent], float | None]:
    """The delivery events of one (possibly compressed) log file and the time of its first line.

    :raises OSError, EOFError, ValueError, lzma.LZMAError: when it cannot be opened or decompressed.
    """
    opener = _OPENERS.get(path.suffix)
    first: list[float] = []
    if opener is None:
        handle = path.open(encoding="utf-8", errors="replace")
    else:
        handle = opener(path, "rt", encoding="utf-8", errors="replace")
    with handle:
        events = maillog_events(_noting_first(handle, first, now, tz), syslog_names, now, since, tz)
    return events, (first[0] if first else None)


def _noting_first(lines: Iterable[str], first: list[float], now: float, tz: dt.tzinfo | None) -> Iterator[str]:
    """Pass *lines* through, appending the time of the first one with a timestamp to *first*."""
    for line in lines:
        if not first:
            parts = parse_syslog_line(line, now, tz)
            if parts is not None:
                first.append(parts[0])
        yield line


def _why(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__


def journal_events(lines: Iterable[str], syslog_names: Sequence[str], since: float = 0.0) -> list[DeliveryEvent]:
    """The onion transport's delivery events among ``journalctl -o json`` *lines* at or after *since*."""
    return _events((parse_journal_record(line) for line in lines), syslog_names, since)


def read_journal(syslog_names: Sequence[str], window_seconds: float, now: float | None = None,
                 units: Sequence[str] = JOURNAL_UNITS, journal_directory: Path | None = None) -> DeliveryView:
    """Read the onion transport's deliveries of the last *window_seconds* from the systemd journal.

    Runs ``journalctl -u UNIT... -o json --since @START --output-fields=... --no-pager -q``
    (journalctl(1)); read-only. Root and members of ``systemd-journal`` or ``adm`` see the system journal.

    :param syslog_names: the transport's syslog names (:func:`transport_syslog_names`).
    :param window_seconds: how far back to look (seconds).
    :param now: the window's end (Unix time, seconds), default now.
    :param units: the units whose records to read (``postfix@-.service`` runs Debian's default instance).
    :param journal_directory: read the journal files in this directory (``journalctl -D``) instead of
        the system journal.
    :returns: the :class:`DeliveryView` (source ``journal``).
    :raises HealthSourceError: if journalctl is missing, fails, or is not allowed to read the journal.
    """
    now = time.time() if now is None else now
    start = now - window_seconds
    if shutil.which("journalctl") is None:
        raise HealthSourceError("journalctl not found: Postfix logs to the journal but it cannot be read here")
    argv = ["journalctl", "--no-pager", "-q", "-o", "json", f"--since=@{int(start)}",
            "--output-fields=MESSAGE,SYSLOG_IDENTIFIER"]
    if journal_directory is not None:
        argv += ["-D", str(journal_directory)]
    for unit in units:
        argv += ["-u", unit]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=JOURNAL_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired as exc:
        raise HealthSourceError(f"journalctl did not finish in {JOURNAL_TIMEOUT_SECONDS} s") from exc
    if done.returncode != 0:
        raise HealthSourceError(f"journalctl failed (exit {done.returncode}): {done.stderr.strip()} "
                                "(root and the systemd-journal/adm groups may read the system journal)")
    if "not seeing messages from other users" in done.stderr:
        raise HealthSourceError("journalctl shows only this user's own records: " + done.stderr.strip()
                                + " (add the user to the systemd-journal or adm group)")
    events = journal_events(done.stdout.splitlines(), syslog_names, start)
    return summarize(events, window_seconds, now, "journal")


# --- where the log is --------------------------------------------------------------------------------------


def transport_syslog_names(config_dir: Path | None, transport: str = "smtptor") -> tuple[str, ...]:
    """The syslog name the onion transport logs under, from master.cf and main.cf (postconf).

    The service's effective ``syslog_name`` is main.cf's value with the service's ``-o`` overrides
    applied (``postconf -P``; master(5)); setup writes ``-o syslog_name=postfix/smtptor``.

    :param config_dir: the Postfix configuration directory, ``None`` for the default.
    :param transport: the master.cf service name of the onion transport.
    :returns: ``(name,)``, e.g. ``("postfix/smtptor",)``.
    :raises HealthSourceError: if postconf fails, the service does not exist, or it logs under the same
        name as every other Postfix program (then its lines cannot be told apart: give it
        ``-o syslog_name=postfix/<transport>``).
    """
    try:
        services = {service for service, kind in
                    ((e.get("service"), e.get("type")) for e in postfix.master_fields(config_dir)) if kind == "unix"}
        if transport not in services:
            raise HealthSourceError(f"master.cf has no {transport}/unix service")
        overrides = postfix.master_overrides(config_dir).get((transport, "unix"), {})
        own = postfix.get_parameter(config_dir, "syslog_name", overrides=[f"{k}={v}" for k, v in overrides.items()])
        base = postfix.get_parameter(config_dir, "syslog_name")
    except PostfixError as exc:
        raise HealthSourceError(f"cannot read the {transport} service's syslog_name: {exc}") from exc
    if own == base:
        raise HealthSourceError(f"the {transport} service logs as {base}/smtp like the other smtp clients: its "
                                f"deliveries cannot be told apart; add -o syslog_name=postfix/{transport} to "
                                f"its master.cf entry (setup does)")
    return (own,)


@dataclass(frozen=True, slots=True)
class LogSource:
    """Where Postfix's log is read from.

    :param path: the ``maillog_file``, or ``None`` for the journal.
    :param syslog_names: the onion transport's syslog names.
    :param rotate_suffix: ``maillog_file_rotate_suffix``, which names the rotated files of ``maillog_file``.
    """

    path: Path | None
    syslog_names: tuple[str, ...]
    rotate_suffix: str = DEFAULT_ROTATE_SUFFIX


def log_source(config_dir: Path | None, transport: str = "smtptor", log_file: Path | None = None) -> LogSource:
    """Find where the onion transport's deliveries are logged.

    :param config_dir: the Postfix configuration directory, ``None`` for the default.
    :param transport: the onion transport's master.cf service name.
    :param log_file: a log file to read instead (e.g. /var/log/mail.log written by rsyslog).
    :returns: *log_file*, else ``maillog_file`` when Postfix writes one (postlogd(8)) with its
        ``maillog_file_rotate_suffix``, else the journal.
    :raises HealthSourceError: see :func:`transport_syslog_names`.
    """
    names = transport_syslog_names(config_dir, transport)
    if log_file is not None:
        return LogSource(log_file, names)
    try:
        values = postfix.get_parameters(config_dir, ["maillog_file", "maillog_file_rotate_suffix"])
    except PostfixError as exc:
        raise HealthSourceError(f"cannot read maillog_file: {exc}") from exc
    maillog_file = values["maillog_file"].strip()
    return LogSource(Path(maillog_file) if maillog_file else None, names,
                     values["maillog_file_rotate_suffix"].strip() or DEFAULT_ROTATE_SUFFIX)


def read_deliveries(source: LogSource, window_seconds: float, now: float | None = None) -> DeliveryView:
    """Read the delivery view from *source* (:func:`log_source`).

    :raises HealthSourceError: if the file or journal cannot be read.
    """
    if source.path is not None:
        return read_maillog(source.path, source.syslog_names, window_seconds, now,
                            rotate_suffix=source.rotate_suffix)
    return read_journal(source.syslog_names, window_seconds, now)

