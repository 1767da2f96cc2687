"""v3 onion validation (rend-spec-v3 §6) and settings parsing."""

from __future__ import annotations

import base64
import hashlib

import pytest

from onion_gateway.address import ListenAddress, parse_listen_address
from onion_gateway.config import parse_dns_server, read_static_map, serve_settings
from onion_gateway.errors import ConfigError
from onion_gateway.onion import OnionCheck, check_onion, normalize_onion, onion_from_public_key
from tests.support.onions import ONION_A, V2_ONION, bad_checksum


def test_address_built_from_a_key_matches_the_spec_layout():
    key = hashlib.sha256(b"k").digest()
    onion = onion_from_public_key(key)
    raw = base64.b32decode(onion[:-6].upper())
    assert len(onion) == 56 + 6 and raw[:32] == key and raw[34:] == b"\x03"
    assert raw[32:34] == hashlib.sha3_256(b".onion checksum" + key + b"\x03").digest()[:2]


@pytest.mark.parametrize("name, verdict", [
    (ONION_A, OnionCheck.VALID),
    (ONION_A.upper() + ".", OnionCheck.VALID),
    ("www." + ONION_A, OnionCheck.VALID),
    (V2_ONION, OnionCheck.V2),
    (bad_checksum(ONION_A), OnionCheck.BAD_CHECKSUM),
    ("mx.example.net", OnionCheck.NOT_ONION),
    ("abc.onion", OnionCheck.BAD_LENGTH),
    ("1" * 56 + ".onion", OnionCheck.BAD_BASE32),
])
def test_check_onion(name, verdict):
    assert check_onion(name) is verdict


def test_wrong_version_byte_is_refused():
    key = hashlib.sha256(b"v").digest()
    version = b"\x04"
    checksum = hashlib.sha3_256(b".onion checksum" + key + version).digest()[:2]
    name = base64.b32encode(key + checksum + version).decode().lower() + ".onion"
    assert check_onion(name) is OnionCheck.BAD_VERSION


def test_normalize_onion():
    assert normalize_onion("WWW." + ONION_A.upper() + ".") == ONION_A
    with pytest.raises(ValueError):
        normalize_onion(V2_ONION)


@pytest.mark.parametrize("text, address", [
    ("127.0.0.1:6013", ListenAddress("127.0.0.1", 6013)),
    ("[::1]:6014", ListenAddress("::1", 6014)),
    ("unix:/run/og/map.sock", ListenAddress(path="/run/og/map.sock")),
])
def test_parse_listen_address(text, address):
    assert parse_listen_address(text) == address


@pytest.mark.parametrize("text", ["localhost:1", "127.0.0.1", "127.0.0.1:x", "unix:", "[::1]6013"])
def test_parse_listen_address_errors(text):
    with pytest.raises(ConfigError):
        parse_listen_address(text, "serve.tcp_table")


@pytest.mark.parametrize("text, server", [
    ("127.0.0.1", ("127.0.0.1", 53)), ("127.0.0.1:5300", ("127.0.0.1", 5300)), ("::1", ("::1", 53)),
    ("[::1]:5300", ("::1", 5300))])
def test_parse_dns_server(text, server):
    assert parse_dns_server(text) == server


def test_settings_merge_file_then_flags_and_name_bad_keys():
    settings = serve_settings({"transport": "a", "exclude_domains": ["X.example."]},
                              {"transport": "b", "service": None})
    assert (settings.transport, settings.service, settings.exclude_domains) == ("b", "onion-mx", {"x.example"})
    with pytest.raises(ConfigError, match=r"serve\.max_nexthops: expected a positive whole number"):
        serve_settings({"max_nexthops": 0})
    with pytest.raises(ConfigError, match=r"serve\.transport: expected a name"):
        serve_settings({"transport": "smtp tor"})


def test_static_map_file_reports_the_bad_line(tmp_path):
    path = tmp_path / "map"
    path.write_text(f"# comment\nexample.org  smtptor:[{ONION_A}]:25\nlonely\n")
    with pytest.raises(ConfigError, match=r"map:3: expected"):
        read_static_map(path)
    path.write_text(f"Example.ORG.  smtptor:[{ONION_A}]:25   # trailing comment\n")
    assert read_static_map(path) == {"example.org": f"smtptor:[{ONION_A}]:25"}


def test_example_config_file_is_valid():
    from pathlib import Path

    from onion_gateway.config import load_config_file
    example = Path(__file__).resolve().parents[2] / "examples" / "onion-gateway.toml"
    settings = serve_settings(load_config_file(example)["serve"])
    assert settings.dns_servers == (("127.0.0.1", 20053),)
