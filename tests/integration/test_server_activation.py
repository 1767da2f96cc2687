"""Socket activation and readiness, without systemd: sockets passed the way systemd passes them.

- ``systemd-socket-activate`` (Debian's systemd package) starts the daemon with its listening sockets
  (fd 3 on, LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES), as an ``onion-gateway.socket`` unit does.
- For the restart test the test itself plays the socket unit: it holds the listening socket and starts
  the daemon twice with it (fd 3, LISTEN_PID set by the exec'd process itself), as systemd does across
  ``systemctl restart``; a lookup sent while no daemon runs waits in the socket's accept queue.
- ``NOTIFY_SOCKET`` is a unix datagram socket of the test: it receives READY=1 and STOPPING=1
  (sd_notify(3)).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.support.onions import ONION_A
from tests.support.procs import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# exec the daemon with the inherited fds moved to 3.. and LISTEN_PID = its own pid (sd_listen_fds(3))
ACTIVATE = r'''
import os, sys
fds = [int(f) for f in sys.argv[1].split(",")]
for index, fd in enumerate(fds):
    os.dup2(fd, 3 + index)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=":".join(["onion-gateway"] * len(fds)))
os.execv(sys.executable, [sys.executable, "-m", "onion_gateway", *sys.argv[2:]])
'''


class Notifications:
    """A NOTIFY_SOCKET for the daemon: collects the sd_notify messages it receives."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="og-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def wait_for(self, state: str, timeout_seconds: float = 20.0) -> float:
        """Wait until *state* was received; returns the time it arrived (monotonic)."""
        deadline = time.monotonic() + timeout_seconds
        while state not in self.messages:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {state} from the daemon; got {self.messages}")
            try:
                self.messages.extend(self.sock.recv(4096).decode().split("\n"))
            except socket.timeout:
                pass
        return time.monotonic()

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def listening_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def serve_args(dns_server, tcp_port: int, socketmap_port: int) -> list[str]:
    return ["serve", "--tcp-table", f"127.0.0.1:{tcp_port}", "--socketmap", f"127.0.0.1:{socketmap_port}",
            "--dns-server", dns_server.address, "--log-level", "info"]


def start_with_sockets(sockets: list[socket.socket], args: list[str], notify: Notifications) -> subprocess.Popen:
    fds = [s.fileno() for s in sockets]
    return subprocess.Popen([sys.executable, "-c", ACTIVATE, ",".join(map(str, fds)), *args],
                            pass_fds=fds, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "NOTIFY_SOCKET": notify.path, "PYTHONUNBUFFERED": "1"})


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def get(port: int, key: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(f"get {key}\n".encode())
        return sock.makefile("rb").readline()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate not installed")
def test_systemd_socket_activate_passes_the_sockets_and_readiness_is_notified(dns_server):
    tcp_port, socketmap_port = free_port(), free_port()
    notify = Notifications()
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{tcp_port}", "-l", f"127.0.0.1:{socketmap_port}",
         "--fdname=onion-gateway", "-E", f"NOTIFY_SOCKET={notify.path}", "-E", "PYTHONUNBUFFERED=1",
         "-E", f"PYTHONPATH={ROOT}", sys.executable, "-m", "onion_gateway",
         *serve_args(dns_server, tcp_port, socketmap_port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = ""
    try:
        time.sleep(0.5)
        # the first connection makes systemd-socket-activate exec the daemon, which takes the sockets
        assert get(tcp_port, "a@single.example.test") == f"200 smtptor:[{ONION_A}]:25\n".encode()
        notify.wait_for("READY=1")
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        # one SIGTERM only: a second one means "exit now" to the daemon (and would end it by the signal)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.returncode is None:
            out = stop(proc)
        notify.close()
    assert "using the socket passed by systemd for 127.0.0.1:" in out, out
    assert proc.returncode == 0, out


def test_a_lookup_sent_while_the_daemon_restarts_is_answered_after_the_restart(dns_server):
    tcp_port, socketmap_port = free_port(), free_port()
    sockets = [listening_socket(tcp_port), listening_socket(socketmap_port)]   # the socket unit's part
    notify = Notifications()
    outputs = []
    try:
        first = start_with_sockets(sockets, serve_args(dns_server, tcp_port, socketmap_port), notify)
        notify.wait_for("READY=1")
        assert get(tcp_port, "a@single.example.test") == f"200 smtptor:[{ONION_A}]:25\n".encode()
        outputs.append(stop(first))
        assert first.returncode == 0, outputs[-1]
        notify.wait_for("STOPPING=1", 2)

        # no daemon runs now: the lookup is queued by the kernel on the held socket, not refused
        replies: list[bytes] = []
        client = threading.Thread(target=lambda: replies.append(get(tcp_port, "b@single.example.test")))
        client.start()
        time.sleep(0.5)
        assert client.is_alive()                # connected and waiting, not refused

        notify.messages.clear()
        second = start_with_sockets(sockets, serve_args(dns_server, tcp_port, socketmap_port), notify)
        notify.wait_for("READY=1")
        client.join(20)
        outputs.append(stop(second))
        assert replies == [f"200 smtptor:[{ONION_A}]:25\n".encode()], outputs
    finally:
        for sock in sockets:
            sock.close()
        notify.close()


def test_a_passed_socket_that_matches_no_listener_is_a_clear_error(dns_server):
    stray = listening_socket(free_port())
    notify = Notifications()
    try:
        proc = start_with_sockets([stray], serve_args(dns_server, free_port(), free_port()), notify)
        out, _ = proc.communicate(timeout=30)
    finally:
        stray.close()
        notify.close()
    assert proc.returncode != 0
    assert "matches no configured listener" in out
