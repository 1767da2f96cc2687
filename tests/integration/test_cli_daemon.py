"""The command line and the daemon's lifecycle: lookup exit codes, config errors, SIGHUP, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.support.daemon import ServeProcess
from tests.support.onions import ONION_A, ONION_B, V2_ONION
from tests.support.procs import public_tempdir, wait_for

pytestmark = pytest.mark.integration


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onion_gateway", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("key, code, stdout", [
    ("alice@single.example.test", 0, f"smtptor:[{ONION_A}]:25\n"),
    ("alice@nosuch.example.test", 1, ""),
    ("alice@servfail.test", 75, ""),
])
def test_lookup_exit_codes(dns_server, key, code, stdout):
    result = cli("lookup", key, "--dns-server", dns_server.address, "--dns-timeout", "2")
    assert (result.returncode, result.stdout) == (code, stdout), result.stderr


def test_lookup_with_dns_server_down_is_a_temporary_failure():
    from tests.support.procs import free_port
    result = cli("lookup", "a@example.org", "--dns-server", f"127.0.0.1:{free_port()}", "--dns-timeout", "1")
    assert result.returncode == 75
    assert "temporary failure" in result.stderr


def test_lookup_uses_the_config_file_and_flags_override_it(dns_server):
    work = public_tempdir("og-cfg-")
    config = work / "og.toml"
    config.write_text(f'[serve]\ndns_servers = ["{dns_server.address}"]\ntransport = "viator"\n')
    assert cli("lookup", "a@single.example.test", "--config", str(config)).stdout == f"viator:[{ONION_A}]:25\n"
    result = cli("lookup", "a@single.example.test", "--config", str(config), "--transport", "smtptor")
    assert result.stdout == f"smtptor:[{ONION_A}]:25\n"


@pytest.mark.parametrize("args, message", [
    (["serve", "--tcp-table", "localhost:6013"], "serve.tcp_table: 'localhost' is not an IP address"),
    (["serve", "--socketmap", "127.0.0.1:99999"], "serve.socketmap: bad port"),
    (["lookup", "x", "--dns-server", "ns.example"], "serve.dns_servers: 'ns.example' is not an IP address"),
    (["lookup", "x", "--dns-timeout", "200"], "serve.dns_timeout_seconds: must"),
])
def test_bad_settings_exit_78_with_the_setting_named(args, message):
    result = cli(*args)
    assert result.returncode == 78
    assert message in result.stderr


def test_unknown_config_key_is_named(tmp_path):
    config = tmp_path / "og.toml"
    config.write_text("[serve]\ndns_timeout = 3\n")
    result = cli("lookup", "x@y.example", "--config", str(config))
    assert (result.returncode, "serve.dns_timeout: unknown setting" in result.stderr) == (78, True)


def test_listener_that_cannot_bind_exits_71():
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", "--tcp-table", f"127.0.0.1:{port}", "--socketmap", "127.0.0.1:0",
                     "--dns-server", "127.0.0.1")
    assert result.returncode == 71
    assert "cannot listen" in result.stderr


def postmap(key: str, table: str) -> str:
    return subprocess.run(["postmap", "-q", key, table], capture_output=True, text=True, timeout=30).stdout.strip()


def test_sighup_reloads_exclusions_and_static_map_and_keeps_them_when_broken(dns_server):
    work = public_tempdir("og-hup-")
    excluded, static = work / "exclude", work / "tor_transport"
    excluded.write_text("# none yet\n")
    static.write_text(f"pinned.example.test  smtptor:[{ONION_B}]:25\n")
    daemon = ServeProcess(["--dns-server", dns_server.address, "--exclude-domains-file", str(excluded),
                           "--static-map", str(static)]).start()
    try:
        assert postmap("a@single.example.test", daemon.tcp_map) == f"smtptor:[{ONION_A}]:25"
        assert postmap("a@pinned.example.test", daemon.tcp_map) == f"smtptor:[{ONION_B}]:25"
        excluded.write_text("single.example.test\n")
        static.write_text("")
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "excluded domains, 0 static routes" in daemon.log(), 5, "reload log line")
        assert postmap("a@single.example.test", daemon.tcp_map) == ""
        assert postmap("a@pinned.example.test", daemon.tcp_map) == ""
        static.write_text(f"broken.example.test  smtptor:[{V2_ONION}]:25\n")      # a v2 onion: refused
        excluded.write_text("")
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "reload failed, keeping the previous" in daemon.log(), 5, "reload failure log line")
        assert postmap("a@single.example.test", daemon.tcp_map) == ""          # old exclusions still in force
        assert daemon.proc.poll() is None
    finally:
        code = daemon.stop()
    assert code == 0


def test_sigterm_stops_gracefully_with_exit_0(dns_server):
    daemon = ServeProcess(["--dns-server", dns_server.address]).start()
    assert postmap("a@single.example.test", daemon.socketmap) == f"smtptor:[{ONION_A}]:25"
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(15) == 0
    daemon.wait_log("stopped: 0 connections had lookups cut off")


def test_privileges_are_dropped_after_binding_and_the_unix_socket_gets_mode_and_group(dns_server):
    import grp
    import os
    import pwd
    import stat

    work = public_tempdir("og-priv-")
    sock = work / "map.sock"
    daemon = ServeProcess(["--dns-server", dns_server.address, "--socketmap", f"unix:{sock}",
                           "--unix-socket-mode", "0660", "--unix-socket-group", "postfix",
                           "--user", "nobody", "--group", "nogroup"]).start()
    try:
        status = open(f"/proc/{daemon.proc.pid}/status").read()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(pwd.getpwnam("nobody").pw_uid)] * 4
        info = os.stat(sock)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == grp.getgrnam("postfix").gr_gid
        result = subprocess.run(["postmap", "-q", "a@single.example.test", f"socketmap:unix:{sock}:onion"],
                                capture_output=True, text=True, timeout=30)
        assert result.stdout.strip() == f"smtptor:[{ONION_A}]:25"
    finally:
        daemon.stop()


def _soft_nofile(pid: int) -> int:
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' line in /proc/PID/limits")


@pytest.mark.parametrize("hard, expected_soft, warns", [
    (8192, 1000 + 1024 + 64, False),   # max_connections + DNS sockets in flight + spare: raised to what is needed
    (512, 512, True),                  # the hard limit is too low: raised as far as allowed, and said so
])
def test_daemon_raises_its_open_files_limit_to_what_max_connections_needs(dns_server, hard, expected_soft, warns):
    from tests.support.procs import free_port
    tcp = free_port()
    daemon = ServeProcess(tcp_port=tcp, socketmap_port=free_port(), command=[
        "prlimit", f"--nofile=256:{hard}", "--", sys.executable, "-m", "onion_gateway", "serve",
        "--tcp-table", f"127.0.0.1:{tcp}", "--dns-server", dns_server.address]).start()
    try:
        assert _soft_nofile(daemon.proc.pid) == expected_soft      # prlimit execs the daemon: same pid
        assert ("open files limit 512 is below the 2088 that max_connections = 1000 needs" in daemon.log()) is warns
    finally:
        daemon.stop()
