"""The ``[health]`` table (status thresholds) and the health keys of ``[serve]``, from the shipped example."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from onion_gateway.config import serve_settings
from onion_gateway.errors import ConfigError
from onion_gateway.health.report import health_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "onion-gateway.toml"


def test_the_example_documents_the_defaults():
    document = tomllib.loads(EXAMPLE.read_text())
    settings = health_settings(document["health"])
    assert settings == health_settings()
    assert (settings.thresholds.deferred_warn_seconds, settings.thresholds.deferred_fail_seconds,
            settings.thresholds.log_window_seconds, settings.fetch_timeout_seconds) == (1800, 14400, 86400, 30)
    assert serve_settings(document["serve"]).health_metrics_interval_seconds == 60.0


def test_command_line_overrides_the_file_and_a_relative_log_file_is_the_config_files():
    settings = health_settings({"deferred_warn_seconds": 10, "log_file": "mail.log"},
                               {"deferred_warn_seconds": 20.0, "deferred_fail_seconds": None}, Path("/etc/og"))
    assert settings.thresholds.deferred_warn_seconds == 20.0
    assert settings.thresholds.deferred_fail_seconds == 14400.0       # None: not given on the command line
    assert settings.log_file == Path("/etc/og/mail.log")


@pytest.mark.parametrize("table,message", [
    ({"deferred_warn": 5}, "health.deferred_warn: unknown setting"),
    ({"log_window_seconds": -1}, "health.log_window_seconds: must be a number of seconds >= 0"),
    ({"deferred_fail_seconds": True}, "health.deferred_fail_seconds: expected a number"),
    ({"fetch_timeout_seconds": 0}, "health.fetch_timeout_seconds: must be above 0"),
    ({"log_file": ""}, "health.log_file: expected a file name"),
])
def test_bad_values_are_named(table, message):
    with pytest.raises(ConfigError, match=message):
        health_settings(table)
