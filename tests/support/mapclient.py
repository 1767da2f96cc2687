"""Minimal blocking clients for the daemon's two protocols (what Postfix sends, one request at a time)."""

from __future__ import annotations

import socket


class TcpTableClient:
    """A persistent tcp_table(5) connection: ``get KEY\\n`` -> ``200 VALUE\\n``."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.file = self.sock.makefile("rb")

    def get(self, key: str) -> str:
        self.sock.sendall(b"get " + key.encode() + b"\n")
        return self.file.readline().decode().rstrip("\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class SocketmapClient:
    """A persistent socketmap_table(5) connection: ``LEN:NAME KEY,`` -> ``LEN:OK VALUE,``."""

    def __init__(self, port: int, name: str = "onion", host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.name = name

    def get(self, key: str) -> str:
        payload = f"{self.name} {key}".encode()
        self.sock.sendall(b"%d:%s," % (len(payload), payload))
        length = b""
        while not length.endswith(b":"):
            length += self.file.read(1)
        data = self.file.read(int(length[:-1]) + 1)
        return data[:-1].decode()

    def close(self) -> None:
        self.file.close()
        self.sock.close()
