"""A single real tor with ``DisableNetwork 1`` on loopback: a control port, no network (LAB-NOTES §5).

Started with ``--defaults-torrc`` an empty file, so nothing from the system's torrc-defaults leaks in.
The control port uses cookie authentication. Tor makes no network connection at all, yet it creates
onion-service keys and ``hostname`` files, which is all setup needs.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import free_port, port_accepts, public_tempdir, tail, wait_for


@dataclass
class TorProcess:
    """tor under *workdir* (``torrc``, ``data/``, ``notice.log``), control port on a free loopback port.

    :param workdir: a directory of its own.
    """

    workdir: Path
    control_port: int = 0
    socks_port: int = 0
    password: str | None = None          # set: HashedControlPassword instead of cookie auth
    unix_control: bool = False           # also a ControlSocket in the data directory
    proc: subprocess.Popen | None = None

    @property
    def torrc(self) -> Path:
        return self.workdir / "torrc"

    @property
    def defaults(self) -> Path:
        return self.workdir / "empty-defaults"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log(self) -> Path:
        return self.workdir / "notice.log"

    @property
    def control(self) -> str:
        return f"127.0.0.1:{self.control_port}"

    @property
    def control_socket(self) -> Path:
        return self.data_dir / "control.sock"

    def write(self) -> "TorProcess":
        """Write the torrc (only if missing: a restart keeps what setup added) and the empty defaults."""
        self.control_port = self.control_port or free_port()
        self.socks_port = self.socks_port or free_port()
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.defaults.write_text("")
        if not self.torrc.exists():
            if self.password is None:
                auth = "CookieAuthentication 1\n"
            else:
                hashed = subprocess.run(["tor", "--quiet", "--hash-password", self.password], capture_output=True,
                                        text=True, check=True).stdout.strip().splitlines()[-1]
                auth = f"HashedControlPassword {hashed}\n"
            self.torrc.write_text(
                f"DataDirectory {self.data_dir}\n"
                "DisableNetwork 1\n"
                f"SocksPort 127.0.0.1:{self.socks_port}\n"
                f"ControlPort 127.0.0.1:{self.control_port}\n"
                + (f"ControlSocket {self.control_socket}\n" if self.unix_control else "")
                + auth
                + f"Log notice file {self.log}\n"
                "AvoidDiskWrites 1\n")
        return self

    def start(self) -> "TorProcess":
        """Start tor and wait for its control port."""
        if not self.torrc.exists():
            self.write()
        self.proc = subprocess.Popen(["tor", "-f", str(self.torrc), "--defaults-torrc", str(self.defaults)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.proc.poll() is None and port_accepts(self.control_port), 15,
                 f"tor control port {self.control}", lambda: tail(self.log))
        return self

    def stop(self) -> None:
        """SIGTERM and wait (a client-only tor exits at once)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def running_tor(prefix: str, **options) -> Iterator[TorProcess]:
    """A started :class:`TorProcess` in a fresh public temp dir named *prefix*; stopped and removed after.

    :param options: :class:`TorProcess` fields (``password``, ``unix_control``).
    """
    from tests.conftest import require

    require("tor")
    proc = TorProcess(public_tempdir(prefix), **options).write().start()
    try:
        yield proc
    finally:
        proc.stop()
        shutil.rmtree(proc.workdir, ignore_errors=True)
