"""Onion pinning: remember which onion services each domain's mail went to, and notice changes.

A forged or hijacked SRV record redirects a domain's mail to someone else's onion service. The pin store
keeps, per domain, the set of onion addresses last routed to. When a fresh SRV answer names another set:

- ``warn`` (default): log a warning, count it, take the new set as the pin, route by it;
- ``strict`` (globally or for listed domains): answer a temporary failure -- the mail waits in Postfix's
  queue -- until the operator runs ``onion-gateway pins accept DOMAIN``.

**Memory.** The daemon keeps one 64-bit digest of the sorted onion set per domain
(:func:`pin_digest`), inside the route cache's entry for the domain (:class:`PinMemory` is the cache's
``pin_of``/``set_pin``), so a pin costs 8 bytes and is **evicted with its route**. Pins of domains
listed in ``strict_pinning_domains`` and of domains with a held change are kept apart and never evicted.
A domain seen again after its pin was evicted is pinned afresh, as at first sight (logged at info:
``pinning D to ... (first sight)``). Without a cache (``cache_max_entries = 0``) the store keeps the
digests itself, bounded the same way (:mod:`.bounded`).

**File** (``pins_file``, sqlite, standard library): the full onion sets, for ``pins list|accept|forget``
and for the next start. The daemon never writes on the event loop: changes are collected and written in
one transaction per :data:`FLUSH_INTERVAL_SECONDS` by a worker thread; an evicted pin is deleted from
the file in the same way, so the file is bounded like the memory. sqlite's journal makes each batch
atomic (a crash loses at most the last second of new pins, which are then pinned afresh).
The operator's ``pins accept``/``forget`` write the row and a line in ``operator_change``; the daemon's
next batch applies it (within about a second) and the operator's word wins over the daemon's pending
write for that domain.

Schema (version 2; a version-1 JSON pin file is converted in place on first open)::

    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)                  -- ("schema", "2")
    CREATE TABLE pin (domain TEXT PRIMARY KEY, onions TEXT, pending TEXT, -- comma-separated, sorted
                      first_seen REAL, changed_at REAL)                   -- Unix time, seconds
    CREATE TABLE operator_change (id INTEGER PRIMARY KEY AUTOINCREMENT, domain TEXT, action TEXT)
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from onion_gateway.errors import ConfigError
from onion_gateway.lookup.bounded import GenerationalMap

log = logging.getLogger(__name__)

SCHEMA_VERSION = "2"
FLUSH_INTERVAL_SECONDS = 1.0     # how often collected pin changes are written to the file
LOAD_CHUNK_ROWS = 5000           # rows read from the file between two turns of the event loop
MAX_HELD = 10_000                # held changes kept (strict mode); past it the oldest hold is dropped


class PinVerdict(enum.Enum):
    """What a fresh onion set means for a domain's pin."""

    NEW = "new"            # first time seen (or seen again after eviction): pinned now
    SAME = "same"          # matches the pin
    CHANGED = "changed"    # differs; warn mode: the new set is pinned
    HELD = "held"          # differs; strict mode: wait for ``pins accept``


@dataclass
class Pin:
    """One domain's pin as the file keeps it.

    :param onions: the accepted onion addresses (sorted).
    :param pending: a different set seen since, waiting for acceptance (strict mode), else empty.
    :param first_seen: when the domain was first pinned (Unix time, seconds).
    :param changed_at: when the set last changed or a change was last held (Unix time), or ``None``.
    """

    onions: list[str]
    pending: list[str] = field(default_factory=list)
    first_seen: float = 0.0
    changed_at: float | None = None


def pin_digest(onions: Iterable[str]) -> int:
    """The 64-bit digest of an onion set (order and repeats do not matter); never 0 (0 means no pin)."""
    text = ",".join(sorted(set(onions)))
    return int.from_bytes(hashlib.blake2b(text.encode("ascii"), digest_size=8).digest(), "little") or 1


class PinMemory(Protocol):
    """Where the daemon keeps pin digests (the route cache, or :class:`_DigestMap`)."""

    def pin_of(self, domain: str) -> int:
        """The digest pinned for *domain*, 0 when none."""

    def set_pin(self, domain: str, pin: int) -> None:
        """Pin *domain* to digest *pin* (0 forgets it)."""


class _DigestMap:
    """Pin digests bounded like the route cache (used when there is no route cache)."""

    def __init__(self, max_entries: int, on_evict) -> None:
        self._map: GenerationalMap[int] = GenerationalMap(max_entries, on_evict)

    def pin_of(self, domain: str) -> int:
        return self._map.use(domain) or 0

    def set_pin(self, domain: str, pin: int) -> None:
        if pin:
            self._map.put(domain, pin)
        else:
            self._map.pop(domain)


class PinFile:
    """The sqlite pins file (blocking; the daemon calls it from a worker thread, the CLI directly).

    sqlite's default rollback journal (no WAL): a reader creates no file, and a writer's journal is gone
    after each commit, so ``pins accept`` run as root leaves nothing the daemon's user cannot write.

    :param path: the file; a version-1 JSON pin file is converted in place (keeping its owner).
    :param create: create the file with its schema when missing (the daemon); else a missing file is
        a :class:`ConfigError` (the operator's commands).
    :raises ConfigError: if the file is missing (and not *create*), cannot be opened, or is neither a
        pins database nor a JSON pin file.
    """

    def __init__(self, path: Path, create: bool = True) -> None:
        self.path = path
        if not create and not path.exists():
            raise ConfigError(f"pins file {path} does not exist (the daemon creates it at its first pin)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                with open(path, "rb") as fh:
                    first = fh.read(1)
                if first in (b"{", b"["):
                    _convert_json(path)
            self._db = sqlite3.connect(str(path), timeout=10.0, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA cache_size=-256")      # KiB: the file is read once and written in batches
            _create_schema(self._db)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"pins file {path}: {exc}") from exc
        if row is None or row[0] != SCHEMA_VERSION:
            raise ConfigError(f"pins file {path}: schema {row[0] if row else 'missing'}, expected {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # -- the operator's side -----------------------------------------------------------------------
    def pins(self) -> dict[str, Pin]:
        """Every pin in the file, by domain."""
        return {d: _pin_of_row(o, p, f, c) for d, o, p, f, c in
                self._db.execute("SELECT domain, onions, pending, first_seen, changed_at FROM pin ORDER BY domain")}

    def accept(self, domain: str) -> Pin:
        """Accept *domain*'s pending onion set (``pins accept``); the daemon picks it up within a second.

        :returns: the updated pin.
        :raises KeyError: if the domain has no pin or nothing is pending.
        """
        with _transaction(self._db):
            row = self._db.execute("SELECT onions, pending, first_seen FROM pin WHERE domain = ?", (domain,)).fetchone()
            if row is None or not row[1]:
                raise KeyError(domain)
            now = time.time()
            self._db.execute("UPDATE pin SET onions = pending, pending = '', changed_at = ? WHERE domain = ?",
                             (now, domain))
            self._db.execute("INSERT INTO operator_change (domain, action) VALUES (?, 'accept')", (domain,))
        return _pin_of_row(row[1], "", row[2], now)

    def forget(self, domain: str) -> None:
        """Drop *domain*'s pin (``pins forget``): its next SRV answer is pinned afresh.

        :raises KeyError: if the domain has no pin.
        """
        with _transaction(self._db):
            if self._db.execute("DELETE FROM pin WHERE domain = ?", (domain,)).rowcount == 0:
                raise KeyError(domain)
            self._db.execute("INSERT INTO operator_change (domain, action) VALUES (?, 'forget')", (domain,))

    # -- the daemon's side -------------------------------------------------------------------------
    def read_chunks(self, chunk_rows: int = LOAD_CHUNK_ROWS) -> Iterator[list[tuple[str, str, str]]]:
        """Yield ``(domain, onions, pending)`` rows in chunks; forgets operator changes seen before
        (a fresh load reflects them already)."""
        self._db.execute("DELETE FROM operator_change")
        cursor = self._db.execute("SELECT domain, onions, pending FROM pin")
        while True:
            rows = cursor.fetchmany(chunk_rows)
            if not rows:
                return
            yield rows

    def write_batch(self, ops: dict[str, tuple]) -> list[tuple[str, str | None]]:
        """Apply the daemon's collected changes in one transaction, operator changes first.

        :param ops: ``{domain: ("set", onions, pending, now) | ("pend", pending, now) | ("del",)}``
            with onion sets as comma-separated sorted text.
        :returns: ``[(domain, accepted onions or None if forgotten)]`` for each operator change since
            the last batch; the daemon applies them to its memory.
        :raises sqlite3.Error: if the file cannot be written (the caller keeps the ops for the next try).
        """
        db = self._db
        with _transaction(db):
            changes = db.execute("SELECT id, domain FROM operator_change ORDER BY id").fetchall()
            decided = {domain for _id, domain in changes}
            for domain, op in ops.items():
                if domain in decided:
                    continue            # the operator's word wins over a write the daemon queued earlier
                if op[0] == "set":
                    _kind, onions, pending, now = op
                    old = db.execute("SELECT onions FROM pin WHERE domain = ?", (domain,)).fetchone()
                    if old is not None and old[0] != onions:
                        log.info("pins file: %s was pinned to %s, now %s", domain, old[0], onions)
                    db.execute("INSERT INTO pin (domain, onions, pending, first_seen, changed_at) "
                               "VALUES (?, ?, ?, ?, NULL) ON CONFLICT (domain) DO UPDATE SET "
                               "onions = excluded.onions, pending = excluded.pending, changed_at = ?",
                               (domain, onions, pending, now, now))
                elif op[0] == "pend":
                    _kind, pending, now = op
                    old = db.execute("SELECT onions FROM pin WHERE domain = ?", (domain,)).fetchone()
                    if old is not None and pending:
                        log.info("pins file: %s stays pinned to %s; %s waits for 'pins accept'", domain, old[0],
                                 pending)
                    db.execute("UPDATE pin SET pending = ?, changed_at = ? WHERE domain = ?", (pending, now, domain))
                else:
                    db.execute("DELETE FROM pin WHERE domain = ?", (domain,))
            applied = []
            for domain in dict.fromkeys(d for _id, d in changes):
                row = db.execute("SELECT onions FROM pin WHERE domain = ?", (domain,)).fetchone()
                applied.append((domain, row[0] if row is not None else None))
            if changes:
                db.execute("DELETE FROM operator_change WHERE id <= ?", (changes[-1][0],))
        return applied


class PinStore:
    """The daemon's pins: digests in memory (see the module docstring), full sets in an optional file.

    :param path: the sqlite pins file, or ``None`` to keep pins in memory only (lost on restart).
    :param strict: pin mode for every domain: ``True`` holds changed sets for acceptance.
    :param strict_domains: domains held strictly even when *strict* is off (their pins are never evicted).
    :param max_entries: the bound of the store's own memory when no cache is attached (domains).
    :param create: create a missing file (the daemon); one-shot commands pass ``False`` and then work
        without a file when there is none.
    :raises ConfigError: if the file cannot be opened or is not a pins file.
    """

    def __init__(self, path: Path | None, strict: bool = False, strict_domains: Iterable[str] = (),
                 max_entries: int = 100_000, create: bool = True) -> None:
        self.path = path
        self.strict = strict
        self.strict_domains = frozenset(strict_domains)
        self.changes = 0          # onion-set changes seen (warned or held), for status and metrics
        self._memory: PinMemory = _DigestMap(max_entries, self.evicted)
        self._kept: dict[str, int] = {}               # strict domains' and held domains' pins: never evicted
        self._held: dict[str, str] = {}                # domain -> pending onion set (text) awaiting acceptance
        self._ops: dict[str, tuple] = {}               # changes not yet written to the file
        self._file = PinFile(path, create=create) if path is not None and (create or path.exists()) else None

    def use_memory(self, memory: PinMemory) -> None:
        """Keep pin digests in *memory* (the route cache) instead of the store's own map."""
        self._memory = memory

    # -- the request path (no I/O) -----------------------------------------------------------------
    def is_strict(self, domain: str) -> bool:
        """True if a change of *domain*'s onion set must wait for acceptance."""
        return self.strict or domain in self.strict_domains

    def check(self, domain: str, onions: Iterable[str]) -> PinVerdict:
        """Compare a fresh onion set for *domain* with its pin, and record what is new (in memory; the
        file is written by :meth:`flush`).

        :param domain: the normalized domain.
        :param onions: the usable onion addresses of the fresh SRV answer.
        :returns: the :class:`PinVerdict`; ``HELD`` means answer a temporary failure.
        """
        fresh = sorted(set(onions))
        digest = pin_digest(fresh)
        pinned = self._kept.get(domain) or self._memory.pin_of(domain)
        text = ",".join(fresh)
        now = time.time()
        if pinned == digest:
            if domain in self._held:                   # the old set came back: nothing to accept any more
                del self._held[domain]
                if domain not in self.strict_domains:
                    self._kept.pop(domain, None)
                self._queue(domain, ("pend", "", now))
                return PinVerdict.CHANGED
            return PinVerdict.SAME
        if not pinned:
            log.info("pinning %s to %s (first sight)", domain, text)
            self._pin(domain, digest)
            self._queue(domain, ("set", text, "", now))
            return PinVerdict.NEW
        if self.is_strict(domain):
            if self._held.get(domain) == text:
                return PinVerdict.HELD
            self.changes += 1
            log.warning("onion set of %s changed: SRV now says %s; held until 'onion-gateway pins accept %s'",
                        domain, text, domain)
            if len(self._held) >= MAX_HELD:
                dropped = next(iter(self._held))
                del self._held[dropped]
                log.warning("more than %d held pin changes: dropping the hold of %s", MAX_HELD, dropped)
            self._held[domain] = text
            self._kept[domain] = pinned
            self._queue(domain, ("pend", text, now))
            return PinVerdict.HELD
        self.changes += 1
        log.warning("onion set of %s changed: SRV now says %s; following it (pinning = warn)", domain, text)
        self._pin(domain, digest)
        self._queue(domain, ("set", text, "", now))
        return PinVerdict.CHANGED

    def _pin(self, domain: str, digest: int) -> None:
        if domain in self.strict_domains or domain in self._held:
            self._kept[domain] = digest
        self._memory.set_pin(domain, digest)

    def _queue(self, domain: str, op: tuple) -> None:
        if self._file is None:
            return
        current = self._ops.get(domain)
        if op[0] == "pend" and current is not None and current[0] == "set":
            op = ("set", current[1], op[1], op[2])      # a new pin with a held change in one batch
        self._ops[domain] = op

    def evicted(self, entries: dict) -> None:
        """The cache dropped *entries* (``{domain: entry}``): forget their pins in the file too."""
        if self._file is None:
            return
        from onion_gateway.lookup.cache import RouteCache

        for domain, entry in entries.items():
            pin = entry if isinstance(entry, int) else RouteCache.pin_in(entry)
            if pin and domain not in self._kept:
                self._ops[domain] = ("del",)

    # -- the file ------------------------------------------------------------------------------------
    async def load(self) -> int:
        """Read the pins file into memory (reads in a worker thread, a chunk at a time).

        :returns: the number of pins loaded (0 without a file).
        """
        if self._file is None:
            return 0
        chunks = self._file.read_chunks()
        loaded = 0
        while True:
            rows = await asyncio.to_thread(next, chunks, None)
            if rows is None:
                break
            for domain, onions, pending in rows:
                self._apply_file_pin(domain, onions, pending)
                loaded += 1
        return loaded

    def load_now(self) -> int:
        """:meth:`load`, blocking (for one-shot commands)."""
        if self._file is None:
            return 0
        loaded = 0
        for rows in self._file.read_chunks():
            for domain, onions, pending in rows:
                self._apply_file_pin(domain, onions, pending)
                loaded += 1
        return loaded

    def _apply_file_pin(self, domain: str, onions: str | None, pending: str = "") -> None:
        if onions is None:                       # forgotten by the operator
            self._kept.pop(domain, None)
            self._held.pop(domain, None)
            self._memory.set_pin(domain, 0)
            return
        digest = pin_digest(onions.split(",")) if onions else 0
        if pending:
            self._held[domain] = pending
        else:
            self._held.pop(domain, None)
        if pending or domain in self.strict_domains:
            self._kept[domain] = digest
        else:
            self._kept.pop(domain, None)
        self._memory.set_pin(domain, digest)

    async def flush(self) -> None:
        """Write the collected changes in a worker thread and apply the operator's changes."""
        if self._file is None:
            return
        ops, self._ops = self._ops, {}
        try:
            applied = await asyncio.to_thread(self._file.write_batch, ops)
        except sqlite3.Error as exc:
            log.error("cannot write pins file %s: %s (retrying)", self.path, exc)
            self._ops = {**ops, **self._ops}
            return
        for domain, onions in applied:
            log.info("pins: operator %s %s", "accepted" if onions is not None else "forgot", domain)
            self._ops.pop(domain, None)
            self._apply_file_pin(domain, onions)

    def flush_now(self) -> None:
        """:meth:`flush`, blocking (at shutdown and in one-shot commands)."""
        if self._file is None or not self._ops:
            return
        ops, self._ops = self._ops, {}
        try:
            self._file.write_batch(ops)
        except sqlite3.Error as exc:
            log.error("cannot write pins file %s: %s", self.path, exc)

    async def run(self) -> None:
        """Load the file, then flush every :data:`FLUSH_INTERVAL_SECONDS` (the daemon's pins task)."""
        loaded = await self.load()
        log.info("loaded %d pins from %s", loaded, self.path)
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_SECONDS)
            await self.flush()

    def close(self) -> None:
        """Write what is left and close the file."""
        if self._file is not None:
            self.flush_now()
            self._file.close()


def _create_schema(db: sqlite3.Connection) -> None:
    with _transaction(db):
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        db.execute("CREATE TABLE IF NOT EXISTS pin (domain TEXT PRIMARY KEY, onions TEXT NOT NULL, "
                   "pending TEXT NOT NULL DEFAULT '', first_seen REAL, changed_at REAL) WITHOUT ROWID")
        db.execute("CREATE TABLE IF NOT EXISTS operator_change (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                   "domain TEXT NOT NULL, action TEXT NOT NULL)")


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, tb) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


def _pin_of_row(onions: str, pending: str, first_seen: float | None, changed_at: float | None) -> Pin:
    return Pin(onions.split(",") if onions else [], pending.split(",") if pending else [],
               float(first_seen or 0.0), changed_at)


def _convert_json(path: Path) -> None:
    """Convert a version-1 JSON pin file at *path* into a pins database at the same path (atomically).

    :raises ConfigError: if the JSON is broken or not a version-1 pin file.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"pins file {path}: {exc}") from exc
    if not isinstance(document, dict) or document.get("version") != 1:
        raise ConfigError(f"pins file {path}: not a version 1 pin file")
    tmp = path.with_name(path.name + ".convert")
    if tmp.exists():
        tmp.unlink()
    db = sqlite3.connect(str(tmp), isolation_level=None)
    try:
        _create_schema(db)
        with _transaction(db):
            for domain, entry in document.get("domains", {}).items():
                db.execute("INSERT INTO pin VALUES (?, ?, ?, ?, ?)", (
                    domain, ",".join(sorted(entry.get("onions", []))), ",".join(sorted(entry.get("pending", []))),
                    float(entry.get("first_seen", 0.0)), entry.get("changed_at")))
    finally:
        db.close()
    owner = path.stat()
    try:
        os.chown(tmp, owner.st_uid, owner.st_gid)       # converted by root: still the daemon's file
    except PermissionError:
        pass
    os.replace(tmp, path)
    log.info("converted the JSON pins file %s to sqlite", path)
