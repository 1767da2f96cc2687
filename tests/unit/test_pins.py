"""The pin store: verdicts, strict holding, acceptance, and its state file."""

from __future__ import annotations

import json

import pytest

from onion_gateway.errors import ConfigError
from onion_gateway.lookup.pins import PinStore, PinVerdict
from tests.support.onions import ONION_A, ONION_B, ONION_C


def test_first_same_and_changed_sets_in_warn_mode(tmp_path):
    store = PinStore(tmp_path / "pins.json")
    assert store.check("d.example", [ONION_A]) is PinVerdict.NEW
    assert store.check("d.example", [ONION_A, ONION_A]) is PinVerdict.SAME
    assert store.check("d.example", [ONION_B]) is PinVerdict.CHANGED
    assert store.changes == 1
    assert PinStore(tmp_path / "pins.json").pins["d.example"].onions == [ONION_B]      # persisted


def test_strict_domain_is_held_until_accepted_by_another_process(tmp_path):
    path = tmp_path / "pins.json"
    daemon = PinStore(path, strict_domains=["d.example"])
    daemon.check("d.example", [ONION_A])
    assert daemon.check("d.example", [ONION_B]) is PinVerdict.HELD
    assert daemon.check("other.example", [ONION_C]) is PinVerdict.NEW
    assert daemon.check("d.example", [ONION_B]) is PinVerdict.HELD         # still held
    PinStore(path).accept("d.example")                                      # the operator's command
    assert daemon.check("d.example", [ONION_B]) is PinVerdict.SAME


def test_accept_without_pending_change_and_forget_unknown_raise_keyerror(tmp_path):
    store = PinStore(tmp_path / "pins.json")
    store.check("d.example", [ONION_A])
    with pytest.raises(KeyError):
        store.accept("d.example")
    with pytest.raises(KeyError):
        store.forget("nope.example")
    store.forget("d.example")
    assert store.check("d.example", [ONION_B]) is PinVerdict.NEW


def test_state_file_is_valid_json_and_a_broken_one_is_a_clear_error(tmp_path):
    path = tmp_path / "pins.json"
    PinStore(path).check("d.example", [ONION_A])
    assert json.loads(path.read_text())["domains"]["d.example"]["onions"] == [ONION_A]
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="pins file"):
        PinStore(path)


def test_memory_only_store_still_notices_changes():
    store = PinStore(None, strict=True)
    store.check("d.example", [ONION_A])
    assert store.check("d.example", [ONION_B]) is PinVerdict.HELD
