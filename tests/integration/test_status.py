"""``onion-gateway status`` against real components: the serve daemon, dnsmasq, Postfix's postconf, tor.

The healthy Tor, onion-service and relay-audit cases need a bootstrapped tor and a gateway built by
setup, so they live in tests/e2e (private Tor network); here tor runs with ``DisableNetwork 1`` and must
be reported as not bootstrapped and as not serving the onion.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from onion_gateway.cli import main
from onion_gateway.address import parse_listen_address
from onion_gateway.config import serve_settings
from onion_gateway.status import (Verdict, check_map_listener, check_onion_service, check_relay_audit,
                                  check_smtptor_service, check_srv, check_tor, check_transport_maps)
from tests.conftest import require
from tests.support.onions import ONION_A, ONION_B
from tests.support.postfix import new_instance
from tests.support.procs import free_port, port_accepts, public_tempdir, tail, wait_for
from tests.support.tor import running_tor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def serve_cfg(serve, dns_server):
    """ServeSettings naming the session daemon's listeners and the test DNS server."""
    return serve_settings({"tcp_table": [f"127.0.0.1:{serve.tcp_port}"],
                           "socketmap": [f"127.0.0.1:{serve.socketmap_port}"],
                           "dns_servers": [dns_server.address], "dns_timeout_seconds": 2})


@pytest.fixture(scope="module")
def gateway_postfix(serve):
    """A (stopped) Postfix whose transport_maps queries the daemon and which has the smtptor service."""
    require("postfix", "postconf")
    instance = new_instance("og-status-pf-", hostname="tx.lab.test")
    add_smtptor(instance)
    instance.postconf("-e", f"transport_maps = hash:{instance.config_dir}/transport, {serve.socketmap}")
    yield instance
    shutil.rmtree(instance.root, ignore_errors=True)


def add_smtptor(instance) -> Path:
    """The smtptor service in the shape setup writes (templates/postfix/master.cf.j2), with a stand-in
    wrapper: status only checks that master.cf names an executable file and the smtp client's DNS options.

    :returns: the wrapper file.
    """
    wrapper = instance.root / "smtp_tor"
    wrapper.write_text('#!/bin/sh\nexec torsocks "$(postconf -h daemon_directory)/smtp" "$@"\n')
    wrapper.chmod(0o755)
    command = os.path.relpath(wrapper, instance.postconf("-h", "daemon_directory").strip())
    instance.postconf("-M", f"smtptor/unix=smtptor unix - - n - - {command}")
    for option in ("syslog_name=postfix/smtptor", "smtp_dns_support_level=disabled", "smtp_host_lookup=native",
                   "smtp_connection_cache_on_demand=no", "smtp_connection_cache_destinations="):
        instance.postconf("-P", f"smtptor/unix/{option}")
    return wrapper


@pytest.fixture
def unbootstrapped_tor():
    """A tor with ``DisableNetwork 1``: its ControlPort answers, it never bootstraps (LAB-NOTES §5)."""
    require("tor")
    workdir = public_tempdir("og-status-tor-")
    data = workdir / "data"
    data.mkdir(mode=0o700)
    (workdir / "empty").write_text("")
    port = free_port()
    (workdir / "torrc").write_text(f"DataDirectory {data}\nDisableNetwork 1\nSocksPort 0\n"
                                   f"ControlPort 127.0.0.1:{port}\nCookieAuthentication 1\n"
                                   f"Log notice file {workdir}/notice.log\n")
    proc = subprocess.Popen(["tor", "-f", str(workdir / "torrc"), "--defaults-torrc", str(workdir / "empty")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: port_accepts(port), 15, f"tor ControlPort 127.0.0.1:{port}",
                 lambda: tail(workdir / "notice.log"))
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def chatty_server():
    """A TCP listener that answers every connection with a line that is no map reply."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def serve_forever() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(100)
                conn.sendall(b"hello there\n")

    thread = threading.Thread(target=serve_forever, daemon=True)
    thread.start()
    yield port
    sock.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept()
    sock.close()
    thread.join(2)


@pytest.mark.parametrize("protocol", ["tcp_table", "socketmap"])
def test_map_listener_answering_is_ok(serve_cfg, protocol: str) -> None:
    address = (serve_cfg.tcp_table if protocol == "tcp_table" else serve_cfg.socketmap)[0]
    check = check_map_listener(address, protocol)
    assert check.verdict is Verdict.OK, check
    assert ("500 " if protocol == "tcp_table" else "NOTFOUND") in check.detail


@pytest.mark.parametrize("protocol", ["tcp_table", "socketmap"])
def test_map_listener_closed_port_fails(protocol: str) -> None:
    check = check_map_listener(parse_listen_address(f"127.0.0.1:{free_port()}"), protocol)
    assert check.verdict is Verdict.FAIL and "no answer" in check.detail, check


@pytest.mark.parametrize("protocol", ["tcp_table", "socketmap"])
def test_map_listener_wrong_protocol_fails(chatty_server: int, protocol: str) -> None:
    check = check_map_listener(parse_listen_address(f"127.0.0.1:{chatty_server}"), protocol, timeout_seconds=2)
    assert check.verdict is Verdict.FAIL, check


def test_srv_naming_the_onion_is_ok(serve_cfg) -> None:
    check = check_srv("single.example.test", ONION_A, serve_cfg)
    assert check.verdict is Verdict.OK, check
    assert check.target == "_onion-mx._tcp.single.example.test." and ONION_A in check.detail


def test_srv_naming_another_onion_fails(serve_cfg) -> None:
    check = check_srv("single.example.test", ONION_B, serve_cfg)
    assert check.verdict is Verdict.FAIL and f"does not name {ONION_B}" in check.detail, check


@pytest.mark.parametrize("domain, reason", [("nosuch.example.test", "no SRV record"),
                                            ("servfail.test", "DNS failure"),
                                            ("badsum.example.test", "no valid v3 onion target")])
def test_srv_missing_broken_or_unreadable_fails(serve_cfg, domain: str, reason: str) -> None:
    check = check_srv(domain, None, serve_cfg)
    assert check.verdict is Verdict.FAIL and reason in check.detail, check


def test_tor_control_unreachable_fails() -> None:
    check = check_tor(parse_listen_address(f"127.0.0.1:{free_port()}"), timeout_seconds=2)
    assert check.verdict is Verdict.FAIL and "cannot connect" in check.detail, check


def test_tor_not_bootstrapped_fails(unbootstrapped_tor: int) -> None:
    check = check_tor(parse_listen_address(f"127.0.0.1:{unbootstrapped_tor}"))
    assert check.verdict is Verdict.FAIL, check
    assert "bootstrapped 0%" in check.detail


def test_onion_service_not_served_by_this_tor_fails(unbootstrapped_tor: int) -> None:
    """A Tor that does not host the address: FAIL before any fetch (GETINFO hs/service/desc/id refused).

    The address is a real one (a key tor made, then dropped): tor refuses addresses whose key is no
    ed25519 point with another message, and this test is about a valid address served elsewhere.
    """
    from stem.control import Controller

    with Controller.from_port(address="127.0.0.1", port=unbootstrapped_tor) as controller:
        controller.authenticate()
        service = controller.create_ephemeral_hidden_service({25: 1}, await_publication=False)
        controller.remove_ephemeral_hidden_service(service.service_id)
    check = check_onion_service(parse_listen_address(f"127.0.0.1:{unbootstrapped_tor}"), f"{service.service_id}.onion")
    assert check.verdict is Verdict.FAIL and "does not serve it" in check.detail, check


def test_onion_service_tor_unreachable_fails() -> None:
    check = check_onion_service(parse_listen_address(f"127.0.0.1:{free_port()}"), ONION_A, timeout_seconds=2)
    assert check.verdict is Verdict.FAIL and "cannot connect" in check.detail, check


def test_relay_audit_without_onion_listener_fails(gateway_postfix, tmp_path: Path) -> None:
    """A torrc with no HiddenServicePort leading to this Postfix: nothing proven, FAIL."""
    torrc = tmp_path / "torrc"
    torrc.write_text("SocksPort 0\n")
    check = check_relay_audit(torrc, gateway_postfix.config_dir)
    assert check.verdict is Verdict.FAIL and "no HiddenServicePort" in check.detail, check


def test_relay_audit_of_an_open_listener_fails(tmp_path: Path) -> None:
    """The onion's port leads to a listener that trusts loopback (the stock mynetworks): FAIL, not safe."""
    require("postfix", "postconf")
    instance = new_instance("og-status-pf-open-", hostname="open.lab.test")
    try:
        instance.start()
        torrc = tmp_path / "torrc"
        torrc.write_text(f"HiddenServiceDir {tmp_path / 'hs'}\nHiddenServicePort 25 127.0.0.1:{instance.smtp_port}\n")
        check = check_relay_audit(torrc, instance.config_dir, test_domain="example.com", timeout_seconds=10)
    finally:
        instance.stop()
        shutil.rmtree(instance.root, ignore_errors=True)
    assert check.verdict is Verdict.FAIL and f"127.0.0.1:{instance.smtp_port} open_relay" in check.detail, check


def test_postfix_using_the_daemon_is_ok(gateway_postfix, serve_cfg) -> None:
    maps = check_transport_maps(gateway_postfix.config_dir, serve_cfg)
    service = check_smtptor_service(gateway_postfix.config_dir, "smtptor")
    assert maps.verdict is Verdict.OK and maps.detail.endswith(":onion"), maps
    assert service.verdict is Verdict.OK and "smtp_tor" in service.detail, service


def test_smtptor_without_its_wrapper_fails(gateway_postfix) -> None:
    """master.cf names the wrapper, but the file is not executable: the transport cannot run, FAIL."""
    wrapper = gateway_postfix.root / "smtp_tor"
    wrapper.chmod(0o644)
    try:
        check = check_smtptor_service(gateway_postfix.config_dir, "smtptor")
    finally:
        wrapper.chmod(0o755)
    assert check.verdict is Verdict.FAIL and "not an executable file" in check.detail, check
    assert "DNS" not in check.detail, check


def test_postfix_without_the_daemon_fails(serve_cfg) -> None:
    instance = new_instance("og-status-pf-plain-", hostname="plain.lab.test")
    try:
        maps = check_transport_maps(instance.config_dir, serve_cfg)
        service = check_smtptor_service(instance.config_dir, "smtptor")
    finally:
        shutil.rmtree(instance.root, ignore_errors=True)
    assert maps.verdict is Verdict.FAIL and "does not query the daemon" in maps.detail, maps
    assert service.verdict is Verdict.FAIL and "no such master.cf service" in service.detail, service


def test_smtptor_that_may_use_dns_fails(gateway_postfix) -> None:
    """An smtptor whose smtp client would look the .onion up in DNS leaks the name: FAIL."""
    gateway_postfix.postconf("-P", "smtptor/unix/smtp_host_lookup=dns")
    try:
        check = check_smtptor_service(gateway_postfix.config_dir, "smtptor")
    finally:
        gateway_postfix.postconf("-P", "smtptor/unix/smtp_host_lookup=native")
    assert check.verdict is Verdict.FAIL and "smtp_host_lookup=dns" in check.detail, check


@pytest.mark.parametrize("remove, main_cf, shown", [
    ("smtp_connection_cache_on_demand", None, "smtp_connection_cache_on_demand = yes"),
    ("smtp_connection_cache_destinations", "smtp_connection_cache_destinations = [abc.onion]:25",
     "smtp_connection_cache_destinations = [abc.onion]:25"),
])
def test_smtptor_with_the_connection_cache_warns(gateway_postfix, remove: str, main_cf: str | None,
                                                 shown: str) -> None:
    """Without its -o override the transport inherits main.cf's connection-cache settings (on demand by
    default, or a destinations list): torsocks refuses to pass sockets to scache, so status warns."""
    value = gateway_postfix.postconf("-P", "-h", f"smtptor/unix/{remove}").strip()
    gateway_postfix.postconf("-PX", f"smtptor/unix/{remove}")
    if main_cf:
        gateway_postfix.postconf("-e", main_cf)
    try:
        check = check_smtptor_service(gateway_postfix.config_dir, "smtptor")
    finally:
        gateway_postfix.postconf("-P", f"smtptor/unix/{remove}={value}")
        if main_cf:
            gateway_postfix.postconf("-X", main_cf.split()[0])
    assert check.verdict is Verdict.WARN and shown in check.detail and "scache" in check.detail, check
    assert check_smtptor_service(gateway_postfix.config_dir, "smtptor").verdict is Verdict.OK


def _config(tmp_path: Path, serve, dns_server) -> Path:
    path = tmp_path / "onion-gateway.toml"
    path.write_text(f'[serve]\ntcp_table = ["127.0.0.1:{serve.tcp_port}"]\n'
                    f'socketmap = ["127.0.0.1:{serve.socketmap_port}"]\n'
                    f'dns_servers = ["{dns_server.address}"]\n')
    return path


def test_cli_status_all_ok_exits_0(tmp_path, serve, dns_server, gateway_postfix) -> None:
    result = CliRunner().invoke(main, ["status", "--config", str(_config(tmp_path, serve, dns_server)),
                                       "--no-tor", "--postfix-config-dir", str(gateway_postfix.config_dir),
                                       "--no-audit", "--no-health", "--domain", "single.example.test", "--onion", ONION_A])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[:2] for line in lines] == [["ok", "map_listener"], ["ok", "map_listener"],
                                                     ["ok", "srv_record"], ["ok", "transport_maps"],
                                                     ["ok", "smtptor_service"]]


def test_cli_status_a_failed_check_exits_1(tmp_path, serve, dns_server) -> None:
    result = CliRunner().invoke(main, ["status", "--config", str(_config(tmp_path, serve, dns_server)),
                                       "--tor-control", f"127.0.0.1:{free_port()}", "--no-postfix",
                                       "--domain", "single.example.test", "--onion", ONION_B])
    assert result.exit_code == 1, result.output
    verdicts = {line.split()[1]: line.split()[0] for line in result.output.splitlines()}
    assert verdicts == {"tor_control": "fail", "onion_service": "fail", "map_listener": "ok", "srv_record": "fail"}


def test_cli_status_bad_onion_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["status", "--no-tor", "--no-postfix", "--onion", "nope.onion"])
    assert result.exit_code == 64 and "--onion" in result.output, result.output


@pytest.fixture(scope="module")
def password_tor():
    """A ``DisableNetwork 1`` tor whose control port wants a password (HashedControlPassword)."""
    with running_tor("og-status-pwtor-", password="s3cret pass") as tor:
        yield tor


@pytest.mark.parametrize("where", ["flag", "setup_table", "none"])
def test_cli_status_authenticates_with_the_control_password_file(tmp_path, serve, dns_server, password_tor,
                                                                 where) -> None:
    """The password comes from --tor-control-password-file, else from the [setup] table that also names
    Tor's control port (setup's Tor, setup's password); without one, Tor's refusal is the verdict."""
    secret = tmp_path / "tor-password"
    secret.write_text("s3cret pass\n")
    config = _config(tmp_path, serve, dns_server)
    args = ["status", "--config", str(config), "--state-dir", str(tmp_path / "no-setup-here"),
            "--no-postfix", "--no-health", "--onion", ONION_A]
    if where == "flag":
        args += ["--tor-control", password_tor.control, "--tor-control-password-file", str(secret)]
    else:
        with config.open("a") as fh:
            fh.write(f'[setup]\ntor_control = "{password_tor.control}"\n'
                     + (f'tor_control_password_file = "{secret}"\n' if where == "setup_table" else ""))
    result = CliRunner().invoke(main, args)
    tor_line = next(line for line in result.output.splitlines() if line.split()[1:2] == ["tor_control"])
    if where == "none":
        assert "wants a password" in tor_line, result.output
    else:                                  # authenticated: the verdict is about Tor itself (never bootstraps)
        assert "bootstrapped 0%" in tor_line, result.output
