"""testinfra: the host state a postmaster would check after ``onion-gateway setup`` (marker ``infra``).

Self-contained: the module fixture runs setup against its own private Postfix instance (started, so
the onion listener is really bound) and a DisableNetwork tor, then each test checks one thing the way
an ansible role's testinfra suite would (``host.file``, ``host.socket``, ``host.check_output``).
Run alone with ``.venv/bin/python -m pytest -m infra``; CI runs it with the whole suite.
"""

from __future__ import annotations

import pytest

from tests.conftest import require
from tests.support.daemon import ServeProcess
from tests.support.gateway import Gateway, new_gateway
from tests.support.procs import free_port, port_accepts, tail, wait_for

pytestmark = pytest.mark.infra


@pytest.fixture(scope="module")
def gateway():
    require("postfix", "postconf", "tor", "torsocks")
    # setup switches transport_maps only to a daemon that answers; "*" is answered without DNS, and the
    # DNS server it names is a closed loopback port (no query ever leaves the box)
    daemon = ServeProcess(["--dns-server", f"127.0.0.1:{free_port()}", "--dns-timeout", "1"]).start()
    gw = new_gateway(daemon.socketmap)
    gw.pf.start()
    result = gw.setup("--yes")
    wait_for(lambda: port_accepts(gw.listener_port), 15, "the onion listener", lambda: tail(gw.pf.maillog))
    gw.address = gw.address_line(result.output)
    yield gw
    gw.close()
    daemon.stop()


def test_wrapper_is_root_owned_and_executable(host, gateway: Gateway):
    wrapper = host.file(str(gateway.wrapper))
    assert wrapper.is_file
    assert (wrapper.user, wrapper.mode) == ("root", 0o755)
    assert 'exec torsocks "$daemon_directory/smtp" "$@"' in wrapper.content_string


def test_wrapper_is_reached_from_daemon_directory(host, gateway: Gateway):
    daemon_directory = host.check_output(f"postconf -c {gateway.pf.config_dir} -h daemon_directory")
    command = host.check_output(f"postconf -c {gateway.pf.config_dir} -M smtptor/unix").split()[7]
    assert host.file(f"{daemon_directory}/{command}").exists


@pytest.mark.parametrize("name, mode", [("hs_ed25519_secret_key", 0o600), ("hostname", 0o600)])
def test_onion_key_files_are_private(host, gateway: Gateway, name, mode):
    assert host.file(str(gateway.hs_dir / name)).mode == mode


def test_onion_directory_is_private(host, gateway: Gateway):
    assert host.file(str(gateway.hs_dir)).mode == 0o700


def test_hostname_file_holds_the_printed_address(host, gateway: Gateway):
    assert host.file(str(gateway.hs_dir / "hostname")).content_string.strip() == gateway.address


def test_listener_is_on_loopback_only(host, gateway: Gateway):
    assert host.socket(f"tcp://127.0.0.1:{gateway.listener_port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{gateway.listener_port}").is_listening
    assert not host.socket(f"tcp://:::{gateway.listener_port}").is_listening


@pytest.mark.parametrize("parameter", ["mynetworks", "smtpd_recipient_restrictions", "smtpd_authorized_xclient_hosts",
                                       "smtpd_authorized_xforward_hosts"])
def test_listener_trusts_nobody(host, gateway: Gateway, parameter):
    line = f"{gateway.listener}/inet/{parameter} ="
    assert line in host.check_output(f"postconf -c {gateway.pf.config_dir} -P").splitlines()


def test_transport_maps_answer_own_domains_then_ask_the_daemon(host, gateway: Gateway):
    value = host.check_output(f"postconf -c {gateway.pf.config_dir} -h transport_maps")
    assert [t.strip() for t in value.split(",")[:2]] == [gateway.own_table, gateway.transport_map]


def test_smtptor_transport_never_uses_dns(host, gateway: Gateway):
    out = host.check_output(f"postconf -c {gateway.pf.config_dir} -P").splitlines()
    assert "smtptor/unix/smtp_dns_support_level = disabled" in out


def test_torrc_includes_the_piece(host, gateway: Gateway):
    torrc = host.file(str(gateway.tor.torrc)).content_string.splitlines()
    assert f"%include {gateway.etc / 'onion-gateway.torrc'}" in torrc


def test_postfix_check_passes(host, gateway: Gateway):
    assert host.run(f"postfix -c {gateway.pf.config_dir} check").rc == 0
