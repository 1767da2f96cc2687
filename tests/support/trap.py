"""A loopback SMTP "trap": a listener that records every connection and turns it away with a 421.

Used as a test Postfix's ``relayhost`` (its normal transport): a test can then prove that mail did, or
did not, take the normal (clear-net) route, instead of only seeing a refused connection in a log.
Nothing is ever accepted: each connection gets ``421 4.3.2`` and is closed, so the mail stays deferred.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

GREETING = b"421 4.3.2 trap.test clear-route trap: not accepting mail\r\n"


@dataclass
class SmtpTrap:
    """Listen on 127.0.0.1:``port`` (a free port when 0) and count connections.

    :param port: TCP port; 0 picks a free one at :meth:`start`.
    """

    port: int = 0
    connections: list[tuple[str, int]] = field(default_factory=list)
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> "SmtpTrap":
        """Bind and start accepting in a daemon thread.

        :returns: self.
        :raises OSError: if the port cannot be bound.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name=f"smtp-trap-{self.port}", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, peer = self._sock.accept()
            except OSError:
                return  # closed by stop()
            with self._lock:
                self.connections.append(peer)
            try:
                conn.sendall(GREETING)
            except OSError:
                pass
            finally:
                conn.close()

    def count(self) -> int:
        """How many connections reached the trap so far."""
        with self._lock:
            return len(self.connections)

    def stop(self) -> None:
        """Close the listener (idempotent)."""
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None
