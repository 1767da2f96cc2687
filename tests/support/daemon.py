"""Run ``onion-gateway serve`` as a real subprocess on free loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import free_port, wait_for


@dataclass
class ServeProcess:
    """An ``onion-gateway serve`` process with a tcp_table and a socketmap listener.

    :param args: extra command-line arguments (``--dns-server`` etc.).
    :param command: the whole command line to run instead of this checkout's ``python -m onion_gateway
        serve`` on free ports, e.g. ``["/usr/bin/onion-gateway", "serve", "--config", F]``; its listeners
        come from that command (give ``tcp_port``/``socketmap_port`` to match them).
    """

    args: list[str] = field(default_factory=list)
    tcp_port: int = 0
    socketmap_port: int = 0
    proc: subprocess.Popen | None = None
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None
    command: list[str] = field(default_factory=list)

    @property
    def tcp_map(self) -> str:
        return f"tcp:127.0.0.1:{self.tcp_port}"

    @property
    def socketmap(self) -> str:
        return f"socketmap:inet:127.0.0.1:{self.socketmap_port}:onion"

    def start(self, timeout_seconds: float = 15.0) -> "ServeProcess":
        if self.command:
            cmd = self.command
        else:
            self.tcp_port = self.tcp_port or free_port()
            self.socketmap_port = self.socketmap_port or free_port()
            cmd = [sys.executable, "-m", "onion_gateway", "serve",
                   "--tcp-table", f"127.0.0.1:{self.tcp_port}", "--socketmap", f"127.0.0.1:{self.socketmap_port}",
                   *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                     cwd=Path(__file__).resolve().parents[2])
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if " ready: " in line:
                    ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_seconds
        while not ready.is_set():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("onion-gateway serve did not become ready:\n" + self.log())
            ready.wait(0.05)
        return self

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_log(self, text: str, timeout_seconds: float = 10.0) -> None:
        """Wait until *text* appears in the daemon's output; fail with the log after *timeout_seconds*.

        The output is read by a thread, so a line the daemon wrote before answering (or before exiting)
        may reach :attr:`lines` a moment after the test saw the answer: assert on the log with this.
        """
        wait_for(lambda: text in self.log(), timeout_seconds, f"{text!r} in the daemon's log", self.log)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._terminated = True

    _terminated = False     # a test already asked the daemon to stop: stop() must not ask again

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if not self._terminated:    # a second SIGTERM means "exit now" to the daemon
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(2)
        return self.proc.returncode
