"""Every setup template against its golden file, plus the checks of the tools that read each output.

Golden files live in tests/golden/. After an intended template change, regenerate them with
``ONION_GATEWAY_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_render.py`` and review the diff.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from onion_gateway.errors import ConfigError
from onion_gateway.render import (MANAGED_BY, MainCf, MasterCf, OwnDomains, SystemdSocket, SystemdUnit, TorrcInclude,
                                  TorrcPiece,
                                  TorsocksConf, Wrapper, render)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
REGEN = os.environ.get("ONION_GATEWAY_REGEN_GOLDEN") == "1"

CASES = {
    "master.cf-default": MasterCf(transport="smtptor", command="smtp_tor", tls_level="none",
                                  listener="127.0.0.1:2525"),
    "master.cf-relative-wrapper": MasterCf(transport="onionsmtp", command="../../../../srv/og/smtp_tor",
                                           tls_level="may", listener="127.0.0.2:10025"),
    "own-domains.regexp": OwnDomains(entries=(("example.org", ":"), ("mail.example.org", "lmtp:unix:private/lmtp"))),
    "main.cf-prepended": MainCf(transport_maps="socketmap:inet:127.0.0.1:6014:onion, hash:/etc/postfix/transport"),
    "smtp_tor-default": Wrapper(daemon_directory="/usr/lib/postfix/sbin", torsocks="torsocks", isolation=False,
                                torsocks_conf=""),
    "smtp_tor-isolated-conf": Wrapper(daemon_directory="/usr/lib/postfix/sbin", torsocks="/usr/bin/torsocks",
                                      isolation=True, torsocks_conf="/etc/onion gateway/torsocks.conf"),
    "torsocks.conf": TorsocksConf(host="127.0.0.1", port=9150),
    "onion-gateway.torrc": TorrcPiece(hidden_service_dir="/var/lib/tor/onion-gateway", onion_port=25,
                                      target="127.0.0.1:2525"),
    "onion-gateway.torrc-defences": TorrcPiece(
        hidden_service_dir="/var/lib/tor/onion-gateway", onion_port=25, target="127.0.0.1:2525",
        options=(("HiddenServiceExportCircuitID", "haproxy"), ("HiddenServiceMaxStreams", "64"),
                 ("HiddenServiceMaxStreamsCloseCircuit", "1"), ("HiddenServiceEnableIntroDoSDefense", "1"),
                 ("HiddenServicePoWDefensesEnabled", "1")), metrics_port="127.0.0.1:9035"),
    "master.cf-proxy-inspection": MasterCf(
        transport="smtptor", command="smtp_tor", tls_level="none", listener="127.0.0.1:2525", proxy_protocol=True,
        connection_count_limit=30, connection_rate_limit=3600, inspection_source="smtp/inet",
        inspection=(("smtpd_milters", "inet:127.0.0.1:8891, inet:127.0.0.1:8892"),
                    ("content_filter", "amavis:[127.0.0.1]:10024"))),
    "master.cf-proxy-client-checks": MasterCf(
        transport="smtptor", command="smtp_tor", tls_level="none", listener="127.0.0.1:2525", proxy_protocol=True,
        connection_count_limit=30, connection_rate_limit=3600,
        client_checks=(("smtpd_client_restrictions", ""),
                       ("smtpd_helo_restrictions", "permit_mynetworks, reject_invalid_helo_hostname"))),
    "torrc-include": TorrcInclude(piece="/etc/tor/onion-gateway.torrc"),
    "onion-gateway.service": SystemdUnit(exec_start="/usr/local/bin/onion-gateway serve --config "
                                                    "/etc/onion-gateway/onion-gateway.toml"),
    "onion-gateway.socket": SystemdSocket(listen_streams=("127.0.0.1:10025", "/run/onion-gateway/map.sock"),
                                          socket_group="postfix"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_template_matches_golden_file(name):
    text = render(CASES[name])
    golden = GOLDEN / name
    if REGEN:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}: run with ONION_GATEWAY_REGEN_GOLDEN=1 and review it"
    assert text == golden.read_text()


def test_every_template_has_a_golden_case():
    import importlib.resources

    root = importlib.resources.files("onion_gateway.templates")
    templates = {f"{d.name}/{f.name}" for d in root.iterdir() if d.is_dir() and d.name != "__pycache__"
                 for f in d.iterdir() if f.name.endswith(".j2")}
    assert templates == {c.template for c in CASES.values()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_starts_with_managed_by_header(name):
    lines = render(CASES[name]).splitlines()
    first = lines[1] if lines[0].startswith("#!") else lines[0]
    assert first == f"# {MANAGED_BY}"


def test_missing_value_is_an_error_not_an_empty_string():
    from onion_gateway import render as render_module

    class Broken(MasterCf):
        __slots__ = ()
        template = "tor/onion-gateway.torrc.j2"     # expects fields MasterCf does not have

    with pytest.raises(ConfigError, match="hidden_service_dir"):
        render_module.render(Broken("smtptor", "smtp_tor", "none", "127.0.0.1:2525"))


def test_wrapper_quotes_paths_for_the_shell():
    text = render(CASES["smtp_tor-isolated-conf"])
    assert "TORSOCKS_CONF_FILE='/etc/onion gateway/torsocks.conf'" in text
    assert 'exec /usr/bin/torsocks -i "$daemon_directory/smtp" "$@"' in text


@pytest.mark.parametrize("name", ["smtp_tor-default", "smtp_tor-isolated-conf"])
def test_wrapper_is_valid_posix_sh(tmp_path, name):
    script = tmp_path / "smtp_tor"
    script.write_text(render(CASES[name]))
    for shell in ("sh", "dash"):
        if shutil.which(shell):
            done = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr


def test_wrapper_execs_smtp_under_torsocks_with_its_arguments(tmp_path):
    """Run the wrapper with a fake torsocks that prints what it was given."""
    fake = tmp_path / "torsocks"
    fake.write_text('#!/bin/sh\necho "conf=$TORSOCKS_CONF_FILE"\nfor a in "$@"; do echo "arg=$a"; done\n')
    fake.chmod(0o755)
    script = tmp_path / "smtp_tor"
    script.write_text(render(Wrapper(daemon_directory="/usr/lib/postfix/sbin", torsocks=str(fake),
                                     isolation=True, torsocks_conf="/x/torsocks.conf")))
    out = subprocess.run(["sh", str(script), "-n", "smtp", "-t unix"], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines() == ["conf=/x/torsocks.conf", "arg=-i", "arg=/usr/lib/postfix/sbin/smtp",
                                "arg=-n", "arg=smtp", "arg=-t unix"]


@pytest.mark.parametrize("case", ["onion-gateway.torrc", "onion-gateway.torrc-defences"])
def test_torrc_piece_is_accepted_by_tor(tmp_path, case):
    """The installed tor accepts every line of the piece (the DoS defences and MetricsPort included)."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    piece = tmp_path / "piece"
    piece.write_text(render(replace(CASES[case], hidden_service_dir=str(data / "hs"))))
    torrc = tmp_path / "torrc"
    torrc.write_text(f"DataDirectory {data}\nDisableNetwork 1\nSocksPort 0\n"
                     + render(TorrcInclude(piece=str(piece))))
    empty = tmp_path / "empty"
    empty.write_text("")
    done = subprocess.run(["tor", "--verify-config", "-f", str(torrc), "--defaults-torrc", str(empty)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    assert f'Including configuration file "{piece}"' in done.stdout


def test_torrc_piece_maps_the_onion_port_to_the_listener():
    lines = render(CASES["onion-gateway.torrc"]).splitlines()
    assert "HiddenServiceDir /var/lib/tor/onion-gateway" in lines
    assert "HiddenServicePort 25 127.0.0.1:2525" in lines


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_passes_systemd_analyze(tmp_path):
    unit = tmp_path / "onion-gateway.service"
    text = render(SystemdUnit(exec_start="/bin/true serve"))
    unit.write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    # systemd-analyze may complain about the host (no running systemd in a container); not about our unit
    problems = [line for line in done.stderr.splitlines() if "onion-gateway.service" in line]
    assert problems == [], done.stderr
    assert "DynamicUser=yes" in text and "NoNewPrivileges=yes" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_socket_unit_passes_systemd_analyze(tmp_path):
    (tmp_path / "onion-gateway.service").write_text(render(SystemdUnit(exec_start="/bin/true serve")))
    unit = tmp_path / "onion-gateway.socket"
    unit.write_text(render(CASES["onion-gateway.socket"]))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in done.stderr.splitlines() if "onion-gateway.socket" in line]
    assert problems == [], done.stderr
    text = unit.read_text()
    assert "ListenStream=127.0.0.1:10025" in text and "ListenStream=/run/onion-gateway/map.sock" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_a_service_and_socket_pair_under_another_name_refer_to_each_other(tmp_path):
    from onion_gateway.config import ServeSettings, parse_listen_address
    from onion_gateway.setup.plan import systemd_socket

    serve = ServeSettings(tcp_table=(parse_listen_address("[::1]:6013"),),
                          socketmap=(parse_listen_address("unix:/run/og-mx/map.sock"),),
                          unix_socket_mode=0o660, unix_socket_group="postfix")
    service = tmp_path / "og-mx.service"
    service.write_text(render(SystemdUnit(exec_start="/bin/true serve", socket="og-mx.socket")))
    socket_unit = tmp_path / "og-mx.socket"
    socket_unit.write_text(render(systemd_socket(serve, "og-mx.service")))
    done = subprocess.run(["systemd-analyze", "verify", str(socket_unit), str(service)], capture_output=True, text=True)
    assert [line for line in done.stderr.splitlines() if "og-mx" in line] == [], done.stderr
    unit_lines, socket_lines = service.read_text().splitlines(), socket_unit.read_text().splitlines()
    assert "Wants=og-mx.socket" in unit_lines and "After=network-online.target og-mx.socket" in unit_lines
    assert {"Service=og-mx.service", "PartOf=og-mx.service", "ListenStream=[::1]:6013",
            "ListenStream=/run/og-mx/map.sock", "SocketMode=0660", "SocketGroup=postfix"} <= set(socket_lines)
