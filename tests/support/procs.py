"""Small helpers for tests that run real processes on loopback."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


_HANDED_OUT: set[tuple[int, int]] = set()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that was free a moment ago (TCP by default; pass SOCK_DGRAM for UDP), and never
    handed out before in this test run.

    The kernel may give the same ephemeral port to two binds in a row; a fixture that takes a dozen ports
    before starting Postfix then got two services on one port now and then (Postfix binds both), and an
    audit probed the wrong one. So each port is returned once per run.
    """
    for _ in range(1000):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if (kind, port) not in _HANDED_OUT:
            _HANDED_OUT.add((kind, port))
            return port
    raise AssertionError("no free port that was not handed out before")


def free_tcp_udp_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (DNS servers bind both)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free TCP+UDP port on 127.0.0.1")


def wait_for(condition: Callable[[], bool], timeout_seconds: float, what: str,
             diagnostics: Callable[[], str] | None = None, interval: float = 0.05) -> None:
    """Poll *condition* until true; fail with *what* and the diagnostics after *timeout_seconds*."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    extra = diagnostics() if diagnostics else ""
    raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}\n{extra}")


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    """True if a TCP connection to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def public_tempdir(prefix: str) -> Path:
    """A fresh directory under /tmp traversable by other users (Postfix runs as user postfix).

    pytest's tmp_path is 0700 under /tmp/pytest-of-root, which user postfix cannot enter (LAB-NOTES §2).
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return path


def tail(path: Path, lines: int = 40) -> str:
    """The last *lines* lines of a log file, or a note that it does not exist."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} not readable)"
