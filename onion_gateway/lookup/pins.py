"""Onion pinning: remember which onion services each domain's mail went to, and notice changes.

A forged or hijacked SRV record redirects a domain's mail to someone else's onion service. The pin store
keeps, per domain, the set of onion addresses last routed to. When a fresh SRV answer names another set:

- ``warn`` (default): log a warning, count it, take the new set as the pin, route by it;
- ``strict`` (globally or for listed domains): answer a temporary failure -- the mail waits in Postfix's
  queue -- until the operator runs ``onion-gateway pins accept DOMAIN``.

State file (JSON, written atomically: temp file + fsync + rename; read-modify-write under an flock so the
daemon and the ``pins`` command can both change it)::

    {"version": 1, "domains": {"example.org": {"onions": ["a...onion"], "pending": ["b...onion"],
                                               "first_seen": 1732150000.0, "changed_at": 1732160000.0}}}
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from onion_gateway.errors import ConfigError

log = logging.getLogger(__name__)


class PinVerdict(enum.Enum):
    """What a fresh onion set means for a domain's pin."""

    NEW = "new"            # first time seen: pinned now
    SAME = "same"          # matches the pin
    CHANGED = "changed"    # differs; warn mode: the new set is pinned
    HELD = "held"          # differs; strict mode: wait for ``pins accept``


@dataclass
class Pin:
    """One domain's pin.

    :param onions: the accepted onion addresses (sorted).
    :param pending: a different set seen since, waiting for acceptance (strict mode), else empty.
    :param first_seen: when the domain was first pinned (Unix time, seconds).
    :param changed_at: when the set last changed or a change was last held (Unix time), or ``None``.
    """

    onions: list[str]
    pending: list[str] = field(default_factory=list)
    first_seen: float = 0.0
    changed_at: float | None = None


class PinStore:
    """Pins per domain, in memory and (optionally) in a JSON state file.

    :param path: the state file, or ``None`` to keep pins in memory only (lost on restart).
    :param strict: pin mode for every domain: ``True`` holds changed sets for acceptance.
    :param strict_domains: domains held strictly even when *strict* is off.
    :raises ConfigError: (from :meth:`load`) if the file exists but is not a pin file.
    """

    def __init__(self, path: Path | None, strict: bool = False, strict_domains: Iterable[str] = ()) -> None:
        self.path = path
        self.strict = strict
        self.strict_domains = frozenset(strict_domains)
        self.pins: dict[str, Pin] = {}
        self.changes = 0          # onion-set changes seen (warned or held), for status and metrics
        self._mtime: float | None = None
        if path is not None:
            self.load()

    # -- persistence -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self.path is None:
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(str(self.path) + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def load(self) -> None:
        """(Re)read the state file; a missing file means no pins.

        :raises ConfigError: if the file is unreadable or not a version-1 pin file.
        """
        assert self.path is not None
        try:
            stat = self.path.stat()
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.pins, self._mtime = {}, None
            return
        except (OSError, ValueError) as exc:
            raise ConfigError(f"pins file {self.path}: {exc}") from exc
        if not isinstance(document, dict) or document.get("version") != 1:
            raise ConfigError(f"pins file {self.path}: not a version 1 pin file")
        pins = {}
        for domain, entry in document.get("domains", {}).items():
            pins[domain] = Pin(sorted(entry.get("onions", [])), sorted(entry.get("pending", [])),
                               float(entry.get("first_seen", 0.0)), entry.get("changed_at"))
        self.pins, self._mtime = pins, stat.st_mtime

    def _refresh(self) -> None:
        """Pick up changes another process (``pins accept``) wrote since we last read."""
        if self.path is None:
            return
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime:
            self.load()

    def save(self) -> None:
        """Write the state file atomically (no-op without a path).

        :raises OSError: if the directory is not writable.
        """
        if self.path is None:
            return
        document = {"version": 1, "domains": {
            d: {"onions": p.onions, "pending": p.pending, "first_seen": p.first_seen, "changed_at": p.changed_at}
            for d, p in sorted(self.pins.items())}}
        fd, tmp = tempfile.mkstemp(prefix=".pins-", dir=str(self.path.parent))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(document, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._mtime = self.path.stat().st_mtime

    # -- the daemon's side -------------------------------------------------------------------------
    def is_strict(self, domain: str) -> bool:
        """True if a change of *domain*'s onion set must wait for acceptance."""
        return self.strict or domain in self.strict_domains

    def check(self, domain: str, onions: Iterable[str]) -> PinVerdict:
        """Compare a fresh onion set for *domain* with its pin, and record what is new.

        :param domain: the normalized domain.
        :param onions: the usable onion addresses of the fresh SRV answer.
        :returns: the :class:`PinVerdict`; ``HELD`` means answer a temporary failure.
        :raises: nothing: a state file that cannot be written is logged, and the pin kept in memory.
        """
        fresh = sorted(set(onions))
        pin = self.pins.get(domain)
        if pin is not None and pin.onions == fresh and not pin.pending:
            return PinVerdict.SAME
        try:
            with self._locked():
                self._refresh()
                verdict = self._record(domain, fresh)
                if verdict is not PinVerdict.SAME:
                    self.save()
        except (OSError, ConfigError) as exc:
            log.error("cannot update pins file %s: %s", self.path, exc)
            verdict = self._record(domain, fresh)
        return verdict

    def _record(self, domain: str, fresh: list[str]) -> PinVerdict:
        now = time.time()
        pin = self.pins.get(domain)
        if pin is None:
            self.pins[domain] = Pin(fresh, [], now, None)
            return PinVerdict.NEW
        if pin.onions == fresh:
            if pin.pending:
                pin.pending = []          # the old set came back: nothing to accept any more
                return PinVerdict.CHANGED
            return PinVerdict.SAME
        self.changes += 1
        log.warning("onion set of %s changed: pinned %s, SRV now says %s", domain, ",".join(pin.onions),
                    ",".join(fresh))
        if self.is_strict(domain):
            pin.pending, pin.changed_at = fresh, now
            return PinVerdict.HELD
        pin.onions, pin.pending, pin.changed_at = fresh, [], now
        return PinVerdict.CHANGED

    # -- the operator's side -----------------------------------------------------------------------
    def accept(self, domain: str) -> Pin:
        """Accept *domain*'s pending onion set (``pins accept``).

        :returns: the updated pin.
        :raises KeyError: if the domain has no pin or nothing is pending.
        """
        with self._locked():
            if self.path is not None:
                self.load()
            pin = self.pins.get(domain)
            if pin is None or not pin.pending:
                raise KeyError(domain)
            pin.onions, pin.pending, pin.changed_at = pin.pending, [], time.time()
            self.save()
            return pin

    def forget(self, domain: str) -> None:
        """Drop *domain*'s pin: its next SRV answer is pinned afresh (``pins forget``).

        :raises KeyError: if the domain has no pin.
        """
        with self._locked():
            if self.path is not None:
                self.load()
            del self.pins[domain]
            self.save()
