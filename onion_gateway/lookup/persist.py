"""Keep the route cache across restarts in an sqlite file (standard library only).

A restart then answers from the saved entries instead of sending one DNS query per active domain at
once. Entries carry wall-clock expiry times, so time spent stopped counts against their TTL; expired
ones are skipped at load. The file is written whole into ``<file>.tmp`` and renamed over the old one,
so a crash while saving leaves the previous file intact.

A missing, unreadable or corrupt file is not an error: the daemon starts with an empty cache and logs a
warning (a cache is an optimisation; DNS is the source of truth).

Schema (version 1)::

    CREATE TABLE meta  (key TEXT PRIMARY KEY, value TEXT)   -- ("schema", "1"), ("settings", fingerprint)
    CREATE TABLE entry (domain TEXT, outcome TEXT, value TEXT,     -- rowid order = LRU order
                        expires_at REAL, stale_until REAL)                     -- epoch seconds
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from onion_gateway.lookup.cache import RouteCache

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"


def read_chunks(path: Path, fingerprint: str = "", chunk_rows: int = 5000) -> Iterator[list[tuple]]:
    """Yield the saved entries of *path* in chunks, oldest first (blocking; the daemon advances it in a
    worker thread, one chunk at a time, so 100,000 rows are never all in memory at once).

    :param path: the sqlite file.
    :param fingerprint: the settings the answers depend on (service, transport, ...); a file saved
        with another fingerprint is not used.
    :param chunk_rows: rows per chunk.
    :returns: an iterator of row lists for :meth:`RouteCache.restore`; empty (with a warning logged)
        if the file is missing, unreadable, corrupt, of another schema or saved under other settings.
    :raises: nothing for a bad file (a file that breaks half-way stops with a warning).
    """
    if not path.exists():
        log.warning("cache file %s does not exist yet: starting with an empty cache", path)
        return
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        try:
            version = connection.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if version is None or version[0] != SCHEMA_VERSION:
                raise ValueError(f"schema {version[0] if version else 'missing'}, expected {SCHEMA_VERSION}")
            saved = connection.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
            if saved is None or saved[0] != fingerprint:
                raise ValueError(f"saved under other settings ({saved[0] if saved else 'unknown'})")
            cursor = connection.execute("SELECT domain, outcome, value, expires_at, stale_until "
                                        "FROM entry ORDER BY rowid")
            while True:
                rows = cursor.fetchmany(chunk_rows)
                if not rows:
                    return
                yield rows
        finally:
            connection.close()
    except (sqlite3.Error, ValueError) as exc:
        log.warning("cache file %s is unusable (%s): starting with an empty cache", path, exc)


def read_rows(path: Path, fingerprint: str = "") -> list[tuple]:
    """All rows of *path* at once (see :func:`read_chunks`; ``[]`` for a missing or bad file)."""
    return [row for chunk in read_chunks(path, fingerprint) for row in chunk]


def restore_rows(cache: RouteCache, rows: list[tuple], path: Path) -> int:
    """Put *rows* (from :func:`read_rows`) into *cache*; bad rows make it stop with a warning.

    :returns: the number of entries loaded.
    """
    try:
        return cache.restore(rows)
    except (ValueError, TypeError) as exc:
        log.warning("cache file %s holds a bad entry (%s): the rest of it is ignored", path, exc)
        return 0


def load_cache(cache: RouteCache, path: Path, fingerprint: str = "") -> int:
    """Fill *cache* from *path* now (blocking); see :func:`read_rows` for what a bad file does.

    :returns: the number of entries loaded (0 for a missing or bad file).
    """
    return restore_rows(cache, read_rows(path, fingerprint), path)


def save_rows(rows: list[tuple[str, str, str, float, float]], path: Path, fingerprint: str = "") -> None:
    """Write *rows* (from :meth:`RouteCache.export`) to *path* atomically (temp file + rename).

    :param fingerprint: the settings the answers depend on (checked by :func:`load_cache`).

    Blocking: the daemon runs it in a worker thread.

    :raises OSError: if the directory is not writable.
    :raises sqlite3.Error: if sqlite cannot write the file.
    """
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    connection = sqlite3.connect(tmp)
    try:
        with connection:
            connection.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
            connection.executemany("INSERT INTO meta VALUES (?, ?)",
                                   [("schema", SCHEMA_VERSION), ("settings", fingerprint)])
            connection.execute("CREATE TABLE entry (domain TEXT, outcome TEXT, value TEXT, "
                               "expires_at REAL, stale_until REAL)")
            connection.executemany("INSERT INTO entry VALUES (?, ?, ?, ?, ?)", rows)
    finally:
        connection.close()
    os.replace(tmp, path)


def save_cache(cache: RouteCache, path: Path, fingerprint: str = "") -> int:
    """Save *cache* to *path* now (blocking).

    :returns: the number of entries written.
    :raises OSError: if the file cannot be written.
    :raises sqlite3.Error: if sqlite fails.
    """
    rows = cache.export()
    save_rows(rows, path, fingerprint)
    cache.changed = False
    return len(rows)

