"""Queue view of the onion transport: what waits in Postfix's deferred queue for onion routes.

Source: ``postqueue -j`` (postqueue(1), "JSON object per message"), run through
:func:`onion_gateway.postfix.postqueue_json`; the queue files are never read. One line per message::

    {"queue_name": "deferred", "queue_id": "52C2B20DC35", "arrival_time": 1796086978,
     "message_size": 306, "forced_expire": false, "sender": "alice@lab.test",
     "recipients": [{"address": "erin@dead1.partner.test",
                     "delay_reason": "connect to 127.0.0.1[127.0.0.1]:45903: Connection refused"},
                    {"address": "heidi@clear.example", "delay_reason": "..."}]}

``postqueue -j`` names no transport, so a recipient is onion mail when the gateway's own routing
answers the onion transport for its domain: the caller injects that decision as
``is_onion_route(domain) -> True | False | None`` (``None``: routing could not decide now, e.g. DNS
failed; such recipients are counted apart as *undecided*). The deferral text is never used to decide:
with no Tor circuits Postfix logs "Connection refused", which reads like any other host.
:class:`~onion_gateway.health.routes.RouterRoutes` is the production decision.

Only the ``deferred`` queue counts: ``active``/``incoming`` mail is being worked on, ``hold`` mail
was put aside by the postmaster on purpose.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from onion_gateway import postfix
from onion_gateway.errors import HealthSourceError, PostfixError

log = logging.getLogger(__name__)

DEFERRED_QUEUE = "deferred"

OnionRoutePredicate = Callable[[str], "bool | None"]


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    """One recipient of one queued message.

    :param queue_id: the message's queue ID.
    :param queue_name: ``deferred``, ``active``, ``hold``, ``incoming`` or ``maildrop``.
    :param arrival_time: when the message entered the queue (Unix time, seconds).
    :param address: the recipient address as Postfix queued it.
    :param domain: its domain, lower-cased, without a trailing dot (``""`` for a bare local part).
    :param delay_reason: why delivery was last deferred (``""`` when never tried).
    """

    queue_id: str
    queue_name: str
    arrival_time: float
    address: str
    domain: str
    delay_reason: str


@dataclass(frozen=True, slots=True)
class PartnerQueue:
    """Deferred onion mail for one partner domain.

    :param domain: the recipient domain.
    :param messages: deferred messages with at least one recipient in *domain*.
    :param recipients: deferred recipients in *domain*.
    :param oldest_seconds: age of its oldest such message (seconds).
    :param top_reason: the most common deferral reason among them (``""`` if none given).
    """

    domain: str
    messages: int
    recipients: int
    oldest_seconds: float
    top_reason: str


@dataclass(frozen=True, slots=True)
class QueueView:
    """Deferred mail for onion routes, at one moment.

    :param messages: deferred messages with at least one onion recipient.
    :param recipients: deferred onion recipients.
    :param oldest_seconds: age of the oldest such message (seconds), ``0.0`` when there is none.
    :param top_reason: the most common deferral reason of the onion recipients (``""`` when none).
    :param top_reason_count: how many onion recipients share it.
    :param undecided_recipients: deferred recipients whose routing could not be decided now.
    :param other_recipients: deferred recipients that routing sends elsewhere (not onion mail).
    :param partners: per partner domain, worst first (oldest message first), when asked for;
        otherwise empty.
    :param taken_at: when the listing was taken (Unix time, seconds).
    """

    messages: int
    recipients: int
    oldest_seconds: float
    top_reason: str
    top_reason_count: int
    undecided_recipients: int
    other_recipients: int
    partners: tuple[PartnerQueue, ...]
    taken_at: float


def parse_postqueue_json(text: str) -> list[QueuedRecipient]:
    """Flatten ``postqueue -j`` output into one :class:`QueuedRecipient` per recipient.

    :param text: postqueue's stdout: one JSON object per line (blank lines ignored).
    :returns: the recipients, message by message, in listing order.
    :raises HealthSourceError: for a line that is not a JSON object of the documented shape
        (postqueue(1): ``queue_name``, ``queue_id``, ``arrival_time``, ``recipients[].address``),
        naming the line number.
    """
    recipients: list[QueuedRecipient] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            message = json.loads(line)
            queue_name = str(message["queue_name"])
            queue_id = str(message["queue_id"])
            arrival = float(message["arrival_time"])
            entries = message["recipients"]
            if not isinstance(entries, list):
                raise TypeError("recipients is not a list")
            for entry in entries:
                address = str(entry["address"])
                recipients.append(QueuedRecipient(queue_id, queue_name, arrival, address,
                                                  domain_of(address), str(entry.get("delay_reason", ""))))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise HealthSourceError(f"postqueue -j line {number} is not a queue entry ({exc}): {line[:120]!r}") from exc
    return recipients


def domain_of(address: str) -> str:
    """The domain of a recipient address, lower-cased, without a trailing dot; ``""`` if there is none."""
    return address.rpartition("@")[2].lower().rstrip(".") if "@" in address else ""


def summarize(recipients: Iterable[QueuedRecipient], is_onion_route: OnionRoutePredicate, now: float,
              per_partner: bool = False) -> QueueView:
    """Judge which deferred recipients are onion mail and summarize them.

    The predicate is called at most once per distinct domain. A predicate with a ``prime(domains)``
    method (:class:`~onion_gateway.health.routes.RouterRoutes`) gets every deferred domain first, to
    decide them all at once.

    :param recipients: from :func:`parse_postqueue_json`.
    :param is_onion_route: ``domain -> True`` (onion route), ``False`` (another route) or ``None``
        (undecided now).
    :param now: the current time (Unix time, seconds); ages are ``now - arrival_time``, never below 0.
    :param per_partner: also break the figures down per partner domain.
    :returns: the :class:`QueueView`.
    """
    recipients = list(recipients)
    prime = getattr(is_onion_route, "prime", None)
    if prime is not None:
        prime({r.domain for r in recipients if r.queue_name == DEFERRED_QUEUE and r.domain})
    decided: dict[str, bool | None] = {}
    onion: list[QueuedRecipient] = []
    undecided = other = 0
    for recipient in recipients:
        if recipient.queue_name != DEFERRED_QUEUE:
            continue
        domain = recipient.domain
        if domain not in decided:
            decided[domain] = is_onion_route(domain) if domain else False
        verdict = decided[domain]
        if verdict is None:
            undecided += 1
        elif verdict:
            onion.append(recipient)
        else:
            other += 1
    reasons = collections.Counter(r.delay_reason for r in onion if r.delay_reason)
    top_reason, top_count = reasons.most_common(1)[0] if reasons else ("", 0)
    partners: tuple[PartnerQueue, ...] = ()
    if per_partner:
        by_domain: dict[str, list[QueuedRecipient]] = collections.defaultdict(list)
        for recipient in onion:
            by_domain[recipient.domain].append(recipient)
        partners = tuple(sorted((_partner(d, rs, now) for d, rs in by_domain.items()),
                                key=lambda p: (-p.oldest_seconds, p.domain)))
    return QueueView(messages=len({r.queue_id for r in onion}), recipients=len(onion),
                     oldest_seconds=_oldest(onion, now), top_reason=top_reason, top_reason_count=top_count,
                     undecided_recipients=undecided, other_recipients=other, partners=partners, taken_at=now)


def _oldest(recipients: list[QueuedRecipient], now: float) -> float:
    return max((max(0.0, now - r.arrival_time) for r in recipients), default=0.0)


def _partner(domain: str, recipients: list[QueuedRecipient], now: float) -> PartnerQueue:
    reasons = collections.Counter(r.delay_reason for r in recipients if r.delay_reason)
    return PartnerQueue(domain, len({r.queue_id for r in recipients}), len(recipients), _oldest(recipients, now),
                        reasons.most_common(1)[0][0] if reasons else "")


def read_queue(config_dir: Path | None, is_onion_route: OnionRoutePredicate, *, per_partner: bool = False,
               now: float | None = None) -> QueueView:
    """Take ``postqueue -j`` of one Postfix instance and summarize its deferred onion mail.

    :param config_dir: the Postfix configuration directory, ``None`` for the default instance.
    :param is_onion_route: the routing decision per domain (see the module docstring).
    :param per_partner: also break the figures down per partner domain.
    :param now: the current time (Unix time, seconds); default ``time.time()`` after the listing.
    :returns: the :class:`QueueView`.
    :raises HealthSourceError: when postqueue is missing, refuses this user (``authorized_mailq_users``,
        or an alternate configuration directory not allowed for non-root users) or prints no listing.
    """
    try:
        text = postfix.postqueue_json(config_dir)
    except PostfixError as exc:
        raise HealthSourceError(
            f"cannot list the mail queue: {exc} (postqueue -j works for root and for users that "
            "authorized_mailq_users allows; a non-root user may use -c only for directories the default "
            "main.cf lists in alternate_config_directories)") from exc
    return summarize(parse_postqueue_json(text), is_onion_route, time.time() if now is None else now,
                     per_partner=per_partner)
