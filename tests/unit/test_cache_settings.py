"""The cache and metrics settings of [serve]: defaults, units, validation with dotted names."""

from __future__ import annotations

from pathlib import Path

import pytest

from onion_gateway.address import ListenAddress
from onion_gateway.config import ServeSettings, load_config_file, serve_settings
from onion_gateway.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "onion-gateway.toml"
CACHE_KEYS = ("cache_max_entries", "cache_min_ttl_seconds", "cache_max_ttl_seconds",
              "cache_negative_max_ttl_seconds", "cache_temp_fail_ttl_seconds", "cache_prefetch",
              "cache_serve_stale_seconds", "cache_save_interval_seconds")


@pytest.mark.parametrize("key", CACHE_KEYS)
def test_example_config_documents_each_cache_key_with_its_default(key):
    table = load_config_file(EXAMPLE)["serve"]
    assert key in table
    assert serve_settings({key: table[key]}) == ServeSettings()


def test_static_routes_stays_the_last_table_of_serve():
    assert list(load_config_file(EXAMPLE)["serve"])[-1] == "static_routes"


def test_cache_file_is_taken_relative_to_the_config_file():
    settings = serve_settings({"cache_file": "cache.sqlite"}, base_dir=Path("/etc/onion-gateway"))
    assert settings.cache_file == Path("/etc/onion-gateway/cache.sqlite")


def test_metrics_address_is_parsed():
    assert serve_settings({"metrics_address": "127.0.0.1:9106"}).metrics_address == ListenAddress("127.0.0.1", 9106)


@pytest.mark.parametrize("key, value", [
    ("cache_max_entries", -1),
    ("cache_max_entries", "many"),
    ("cache_max_entries", True),
    ("cache_min_ttl_seconds", -1),
    ("cache_max_ttl_seconds", "soon"),
    ("cache_temp_fail_ttl_seconds", 3600),
    ("cache_serve_stale_seconds", -5),
    ("cache_save_interval_seconds", 0),
    ("cache_prefetch", "yes"),
    ("metrics_address", "unix:/run/metrics.sock"),
    ("metrics_address", "localhost:9106"),
])
def test_bad_values_are_refused_with_the_setting_name(key, value):
    with pytest.raises(ConfigError, match=f"serve.{key}"):
        serve_settings({key: value})


def test_min_ttl_above_a_max_ttl_is_refused():
    with pytest.raises(ConfigError, match="serve.cache_min_ttl_seconds"):
        serve_settings({"cache_min_ttl_seconds": 600, "cache_negative_max_ttl_seconds": 300})


def test_zero_entries_disables_the_cache():
    assert serve_settings({"cache_max_entries": 0}).cache_max_entries == 0
