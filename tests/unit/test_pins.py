"""The pin store: verdicts, strict holding, acceptance, its bound, and its sqlite file."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3

import pytest

from onion_gateway.errors import ConfigError
from onion_gateway.lookup.cache import CachePolicy, RouteCache
from onion_gateway.lookup.pins import PinFile, PinStore, PinVerdict
from tests.support.onions import ONION_A, ONION_B, ONION_C


def rows(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM pin").fetchone()[0]


def test_first_same_and_changed_sets_in_warn_mode(tmp_path):
    store = PinStore(tmp_path / "pins.db")
    assert store.check("d.example", [ONION_A]) is PinVerdict.NEW
    assert store.check("d.example", [ONION_A, ONION_A]) is PinVerdict.SAME
    assert store.check("d.example", [ONION_B]) is PinVerdict.CHANGED
    assert store.changes == 1
    store.close()
    assert PinFile(tmp_path / "pins.db").pins()["d.example"].onions == [ONION_B]      # persisted


def test_checks_do_not_write_the_file_until_the_batch_is_flushed(tmp_path):
    path = tmp_path / "pins.db"
    store = PinStore(path)
    for i in range(50):
        store.check(f"d{i}.example", [ONION_A])
    assert rows(path) == 0                      # nothing written on the request path
    asyncio.run(store.flush())                  # one transaction, in a worker thread
    assert rows(path) == 50


def test_strict_domain_is_held_until_accepted_by_another_process(tmp_path):
    path = tmp_path / "pins.db"
    daemon = PinStore(path, strict_domains=["d.example"])
    daemon.check("d.example", [ONION_A])
    assert daemon.check("d.example", [ONION_B]) is PinVerdict.HELD
    assert daemon.check("other.example", [ONION_C]) is PinVerdict.NEW
    assert daemon.check("d.example", [ONION_B]) is PinVerdict.HELD         # still held
    asyncio.run(daemon.flush())
    assert PinFile(path).pins()["d.example"].pending == [ONION_B]
    PinFile(path).accept("d.example")                                       # the operator's command
    asyncio.run(daemon.flush())                                             # the daemon's next batch
    assert daemon.check("d.example", [ONION_B]) is PinVerdict.SAME


def test_the_operators_accept_wins_over_a_hold_the_daemon_has_not_written_yet(tmp_path):
    path = tmp_path / "pins.db"
    daemon = PinStore(path, strict=True)
    daemon.check("d.example", [ONION_A])
    daemon.check("d.example", [ONION_B])
    asyncio.run(daemon.flush())
    PinFile(path).accept("d.example")
    daemon.check("d.example", [ONION_C])                                    # queued, not yet written
    asyncio.run(daemon.flush())
    assert PinFile(path).pins()["d.example"].onions == [ONION_B]


def test_accept_without_pending_change_and_forget_unknown_raise_keyerror(tmp_path):
    path = tmp_path / "pins.db"
    store = PinStore(path)
    store.check("d.example", [ONION_A])
    asyncio.run(store.flush())
    operator = PinFile(path)
    with pytest.raises(KeyError):
        operator.accept("d.example")
    with pytest.raises(KeyError):
        operator.forget("nope.example")
    operator.forget("d.example")
    asyncio.run(store.flush())
    assert store.check("d.example", [ONION_B]) is PinVerdict.NEW


def test_a_json_pin_file_is_converted_and_a_broken_one_is_a_clear_error(tmp_path):
    path = tmp_path / "pins.json"
    path.write_text(json.dumps({"version": 1, "domains": {"d.example": {"onions": [ONION_A], "pending": [],
                                                                        "first_seen": 1.0, "changed_at": None}}}))
    store = PinStore(path)
    store.load_now()
    assert store.check("d.example", [ONION_A]) is PinVerdict.SAME
    assert PinFile(path).pins()["d.example"].onions == [ONION_A]
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="pins file"):
        PinStore(broken)


def test_memory_only_store_still_notices_changes():
    store = PinStore(None, strict=True)
    store.check("d.example", [ONION_A])
    assert store.check("d.example", [ONION_B]) is PinVerdict.HELD


def test_the_store_is_bounded_and_an_evicted_domain_is_pinned_afresh_and_logged(tmp_path, caplog):
    path = tmp_path / "pins.db"
    store = PinStore(path, max_entries=4)
    for i in range(20):
        store.check(f"d{i}.example", [ONION_A])
    asyncio.run(store.flush())
    assert rows(path) <= 4                      # evicted pins leave the file too
    with caplog.at_level(logging.INFO, logger="onion_gateway.lookup.pins"):
        assert store.check("d0.example", [ONION_B]) is PinVerdict.NEW
    assert "pinning d0.example to" in caplog.text and "(first sight)" in caplog.text


def test_strict_domains_keep_their_pin_through_eviction(tmp_path):
    store = PinStore(tmp_path / "pins.db", strict_domains=["bank.example"], max_entries=4)
    store.check("bank.example", [ONION_A])
    for i in range(20):
        store.check(f"d{i}.example", [ONION_A])
    assert store.check("bank.example", [ONION_B]) is PinVerdict.HELD


def test_pins_live_in_the_route_cache_and_are_evicted_with_it(tmp_path):
    cache = RouteCache(router=None, policy=CachePolicy(max_entries=4))     # no lookups: no router needed
    store = PinStore(tmp_path / "pins.db")
    store.use_memory(cache)
    cache.on_evict = store.evicted
    assert store.check("d.example", [ONION_A]) is PinVerdict.NEW
    assert cache.pin_of("d.example") != 0
    assert cache.get("d.example") is None       # a pin-only entry never answers a lookup
    for i in range(10):
        store.check(f"d{i}.example", [ONION_A])
    assert len(cache) <= 4
    assert cache.pin_of("d.example") == 0
    asyncio.run(store.flush())
    assert "d.example" not in PinFile(tmp_path / "pins.db").pins()


def test_the_operators_commands_never_create_a_missing_pins_file(tmp_path):
    path = tmp_path / "pins.db"
    with pytest.raises(ConfigError, match="does not exist"):
        PinFile(path, create=False)
    store = PinStore(path, create=False)        # one-shot lookups: no file, pins in memory only
    assert store.check("d.example", [ONION_A]) is PinVerdict.NEW
    store.close()
    assert not path.exists()
