"""The outcome of one lookup, shared by routing, the codecs and the CLI."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.Enum):
    """What a lookup concluded. The value is the label used in logs and metrics."""

    FOUND = "found"          # route through the onion transport: value is the transport-map answer
    NOT_FOUND = "not_found"  # no onion route: Postfix uses its normal transport
    TEMP_FAIL = "temp"       # DNS or the daemon failed: Postfix must defer the mail
    ERROR = "error"          # the request itself was malformed (protocol error reply)


@dataclass(frozen=True, slots=True)
class LookupResult:
    """One lookup's answer.

    :param outcome: the :class:`Outcome`.
    :param value: for ``FOUND`` the transport-map value (``"smtptor:[x.onion]:25"``); otherwise a short
        reason for logs and the protocol's reply text (``"no SRV record"``, ``"DNS timeout"``).
    """

    outcome: Outcome
    value: str = ""

    @classmethod
    def found(cls, value: str) -> "LookupResult":
        """A ``FOUND`` result carrying the transport-map *value*."""
        return cls(Outcome.FOUND, value)

    @classmethod
    def not_found(cls, reason: str) -> "LookupResult":
        """A ``NOT_FOUND`` result; *reason* is for the log."""
        return cls(Outcome.NOT_FOUND, reason)

    @classmethod
    def temp_fail(cls, reason: str) -> "LookupResult":
        """A ``TEMP_FAIL`` result; *reason* goes into the 400/TEMP reply and the log."""
        return cls(Outcome.TEMP_FAIL, reason)

    @classmethod
    def error(cls, reason: str) -> "LookupResult":
        """An ``ERROR`` result for a malformed request; *reason* goes into the protocol error reply."""
        return cls(Outcome.ERROR, reason)
