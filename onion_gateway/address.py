"""One listener-address type for the whole package: a TCP ``host:port`` or a unix socket path.

Three written forms reach it, each with its own parser:

* config form, :func:`parse_listen_address` (the ``[serve]``/``[setup]`` keys): ``IP:PORT``,
  ``[IPV6]:PORT`` or ``unix:PATH``; the host must be an IP address, port 0 ("any free port") allowed.
* listener form, :meth:`ListenAddress.parse` (``audit-open-relay --listener``, setup's record):
  ``HOST:PORT``, ``[V6]:PORT``, a bare ``PORT`` (127.0.0.1) or ``unix:PATH``; host names allowed,
  port 1-65535.
* torrc form, :func:`torrc_target` (tor(1) "HiddenServicePort VIRTPORT [TARGET]"): TARGET is ``PORT``,
  ``ADDR``, ``ADDR:PORT`` or ``unix:PATH`` (``unix:"PATH"`` quoted); the default target is
  127.0.0.1:VIRTPORT and a bare address takes port VIRTPORT.

Wire examples::

    127.0.0.1:6013          -> ListenAddress(host="127.0.0.1", port=6013)
    [::1]:6014              -> ListenAddress(host="::1", port=6014)
    unix:/run/og/map.sock   -> ListenAddress(path="/run/og/map.sock")
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from onion_gateway.errors import ConfigError

__all__ = ["ListenAddress", "parse_listen_address", "parse_port", "split_host_port", "torrc_target"]


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where a listener accepts connections: a TCP ``host:port`` or a unix socket ``unix:PATH``.

    :param host: IP address (or, in the listener form, a host name) for TCP; ``None`` for unix.
    :param port: TCP port, 0 for "any free port" (tests); ``None`` for unix.
    :param path: the socket path for unix listeners, else ``None``.
    """

    host: str | None = None
    port: int | None = None
    path: str | None = None

    @property
    def is_unix(self) -> bool:
        """True for a unix-domain socket listener (Postfix sees such clients as 127.0.0.1)."""
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in (self.host or "") else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, default_port: int | None = None) -> "ListenAddress":
        """Parse the listener form: ``HOST:PORT``, ``[V6]:PORT``, ``PORT``, ``HOST`` (with *default_port*)
        or ``unix:PATH`` (``unix:"PATH"`` too).

        :param text: the address as written on the command line, in torrc or in setup's record.
        :param default_port: port for a bare host (tor uses the virtual port); ``None``: a port is required.
        :returns: a :class:`ListenAddress`; a bare port means 127.0.0.1.
        :raises ConfigError: if the text is not an address, or the port is not 1-65535.
        """
        text = text.strip()
        if text.startswith("unix:"):
            path = text[5:]
            if path.startswith('"') and path.endswith('"') and len(path) >= 2:
                path = path[1:-1]
            if not path:
                raise ConfigError(f"empty unix socket path in {text!r}")
            return cls(path=path)
        if text.isdigit():
            return cls(host="127.0.0.1", port=parse_port(text))
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep:
                raise ConfigError(f"unterminated [ in {text!r}")
            port = rest[1:] if rest.startswith(":") else ""
        elif text.count(":") == 1:
            host, _, port = text.partition(":")
        else:
            host, port = text, ""
        if not host:
            raise ConfigError(f"no address in {text!r}")
        if port:
            return cls(host=host, port=parse_port(port))
        if default_port is None:
            raise ConfigError(f"no port in {text!r} (want HOST:PORT or unix:PATH)")
        return cls(host=host, port=default_port)


def parse_listen_address(text: str, where: str = "address") -> ListenAddress:
    """Parse the config form: ``IP:PORT``, ``[IPV6]:PORT`` or ``unix:PATH``.

    :param text: the address as written by the user.
    :param where: the dotted setting name, for the error message.
    :returns: a :class:`ListenAddress`.
    :raises ConfigError: if the host is not an IP address, the port is not 0-65535, or the path is empty.
    """
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path:
            raise ConfigError(f"{where}: unix socket path is empty in {text!r}")
        return ListenAddress(path=path)
    host, port = split_host_port(text, where, default_port=None)
    return ListenAddress(host=host, port=port)


def torrc_target(value: str, virtual_port: int) -> ListenAddress:
    """The target of ``HiddenServicePort VIRTPORT [TARGET]`` (tor(1)).

    :param value: TARGET as written (``""`` when the line has none).
    :param virtual_port: VIRTPORT: the port of the default target and of a bare address.
    :returns: the :class:`ListenAddress` Tor connects to.
    :raises ConfigError: if TARGET is malformed.
    """
    if not value.strip():
        return ListenAddress(host="127.0.0.1", port=virtual_port)
    return ListenAddress.parse(value, default_port=virtual_port)


def split_host_port(text: str, where: str, default_port: int | None) -> tuple[str, int]:
    """Split ``IP:PORT``, ``[IPV6]:PORT`` (or a bare IP with *default_port*) into ``(ip, port)``.

    :param where: the dotted setting name, for the error message.
    :param default_port: port for a bare address; ``None``: a port is required.
    :returns: ``(normalised ip, port)``.
    :raises ConfigError: if the host is not an IP address or the port is not 0-65535.
    """
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else None
        if not sep or (rest and port_text is None):
            raise ConfigError(f"{where}: expected [IPV6]:PORT, got {text!r}")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, None
    if port_text is None:
        if default_port is None:
            raise ConfigError(f"{where}: expected HOST:PORT or unix:PATH, got {text!r}")
        port = default_port
    else:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ConfigError(f"{where}: bad port in {text!r}")
        port = int(port_text)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise ConfigError(f"{where}: {host!r} is not an IP address (in {text!r})") from None
    return host, port


def parse_port(text: str) -> int:
    """A TCP port to connect to (1-65535) from its text; :raises ConfigError: if it is not one."""
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"bad port {text!r}") from None
    if not 0 < value < 65536:
        raise ConfigError(f"port out of range: {value}")
    return value
