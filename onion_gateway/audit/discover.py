"""Find the onion-facing Postfix listeners: torrc ``HiddenServicePort`` lines -> master.cf services.

Sources implemented:

* tor(1) "HiddenServicePort VIRTPORT [TARGET]": TARGET is ``PORT``, ``ADDR``, ``ADDR:PORT`` or
  ``unix:PATH``; the default target is 127.0.0.1:VIRTPORT, a bare address takes port VIRTPORT.
  The port lines belong to the HiddenServiceDir above them, whose ``hostname`` file holds the onion name.
* tor(1) "%include PATH": a file, a directory (its files in lexical order, dot-files skipped) or a
  glob pattern; nested up to 31 levels like tor. A relative PATH is taken from the including file's
  directory (tor takes it from its working directory, normally ``/``; absolute paths agree).
* master(5): an ``inet`` service named ``[HOST:]PORT`` listens on HOST, or on every address of
  ``inet_interfaces`` when HOST is absent; ``*`` means all addresses. A ``unix`` service listens on
  ``$queue_directory/private/NAME`` (private column ``y``/``-``) or ``public/NAME`` (``n``).
* ``onion-gateway setup``'s state directory: ``manifest.json`` records the listener it created, its
  onion port, HiddenServiceDir and Postfix directory (:func:`read_setup_state`), so no torrc is needed.
* postscreen(8): it hands the connection to the ``pass`` service named by its ``smtpd_service_name``
  (default ``smtpd``); that smtpd's settings are the ones that decide about relaying.

A Postfix smtpd reached over a unix socket sees the client as ``localhost[127.0.0.1]``
(smtpd_peer.c), so a ``unix:`` target is audited as client 127.0.0.1.

Wire example (torrc)::

    HiddenServiceDir /var/lib/tor/mail
    HiddenServicePort 25 127.0.0.1:2526
    %include /etc/tor/torrc.d/
"""

from __future__ import annotations

import glob
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onion_gateway import postfix
from onion_gateway.errors import ConfigError
from onion_gateway.setup.state import MANIFEST as SETUP_MANIFEST, SetupRecord, read_setup_state  # noqa: F401

log = logging.getLogger(__name__)

MAX_INCLUDE_DEPTH = 31          # tor's MAX_INCLUDE_RECURSION_LEVEL
DEFAULT_TORRC = Path("/etc/tor/torrc")
SMTPD_PROGRAMS = {"smtpd", "postscreen"}


@dataclass(frozen=True)
class Endpoint:
    """Where a listener accepts connections: ``host:port`` over TCP or a unix socket ``path``."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    @property
    def is_unix(self) -> bool:
        """True for a unix-domain socket endpoint (Postfix sees such clients as 127.0.0.1)."""
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: str, default_port: int | None = None) -> "Endpoint":
        """Parse ``HOST:PORT``, ``[V6]:PORT``, ``PORT``, ``HOST`` (with *default_port*) or ``unix:PATH``.

        :param text: the endpoint as written in torrc or on the command line.
        :param default_port: port for a bare address (tor uses the virtual port).
        :returns: an :class:`Endpoint`; a bare port means 127.0.0.1.
        :raises ConfigError: if the text is not an endpoint.
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
            return cls(host="127.0.0.1", port=_port(text))
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
            return cls(host=host, port=_port(port))
        if default_port is None:
            raise ConfigError(f"no port in {text!r} (want HOST:PORT or unix:PATH)")
        return cls(host=host, port=default_port)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"bad port {text!r}") from None
    if not 0 < value < 65536:
        raise ConfigError(f"port out of range: {value}")
    return value


@dataclass(frozen=True)
class OnionPort:
    """One ``HiddenServicePort`` line.

    :param virtual_port: the port Tor clients connect to on the onion address.
    :param target: where Tor connects for it.
    :param service_dir: the HiddenServiceDir it belongs to, or ``None``.
    :param onion: the service's address from ``service_dir/hostname`` if readable, else ``None``.
    :param source: ``file:line`` of the HiddenServicePort line.
    """

    virtual_port: int
    target: Endpoint
    service_dir: str | None
    onion: str | None
    source: str


def parse_torrc(path: Path) -> list[OnionPort]:
    """Every ``HiddenServicePort`` in a torrc and the files it ``%include``\\ s, in tor's reading order.

    :param path: the torrc.
    :returns: the onion ports; a line with a port that cannot be parsed raises.
    :raises ConfigError: if a file cannot be read, an include nests too deep, or a line is malformed.
    """
    ports: list[OnionPort] = []
    state = {"dir": None, "onion": None}
    for source, keyword, value in _torrc_lines(Path(path), 0):
        if keyword == "hiddenservicedir":
            state["dir"] = value
            state["onion"] = _read_hostname(value)
        elif keyword == "hiddenserviceport":
            parts = value.split(None, 1)
            if not parts:
                raise ConfigError(f"{source}: HiddenServicePort needs a port")
            virtual = _port(parts[0])
            target = Endpoint.parse(parts[1], default_port=virtual) if len(parts) > 1 else \
                Endpoint(host="127.0.0.1", port=virtual)
            ports.append(OnionPort(virtual, target, state["dir"], state["onion"], source))
    return ports


def _read_hostname(service_dir: str) -> str | None:
    try:
        return (Path(service_dir) / "hostname").read_text().strip() or None
    except OSError:
        return None


def _torrc_lines(path: Path, depth: int):
    """Yield ``(file:line, lower-case keyword, value)`` with includes expanded in place."""
    if depth > MAX_INCLUDE_DEPTH:
        raise ConfigError(f"{path}: %include nested deeper than {MAX_INCLUDE_DEPTH}")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read torrc {path}: {exc.strerror or exc}") from exc
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):          # continuation line
            pending += line.rstrip()[:-1] + " "
            continue
        line = pending + line
        pending = ""
        line = _strip_comment(line).strip()
        if not line:
            continue
        keyword, value = (line.split(None, 1) + [""])[:2]
        value = value.strip()
        source = f"{path}:{start}"
        if keyword.lower() == "%include":
            for included in _expand_include(value, path.parent):
                yield from _torrc_lines(included, depth + 1)
            continue
        yield source, keyword.lower(), value


def _strip_comment(line: str) -> str:
    in_quotes = False
    for i, ch in enumerate(line):
        if ch == '"':
            in_quotes = not in_quotes
        elif ch == "#" and not in_quotes:
            return line[:i]
    return line


def _expand_include(pattern: str, base: Path) -> list[Path]:
    if pattern.startswith('"') and pattern.endswith('"'):
        pattern = pattern[1:-1]
    if not os.path.isabs(pattern):
        pattern = str(base / pattern)
    paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith("."))
        elif item.exists() or not glob.has_magic(pattern):
            files.append(item)
    return files


@dataclass(frozen=True)
class MasterService:
    """A master.cf entry as ``postconf -F``/``-P`` report it.

    :param name: the service field (``127.0.0.1:2525``, ``smtp``, ``smtpd``).
    :param type: ``inet``, ``unix``, ``pass``, ...
    :param private: the private column (``y``, ``n`` or ``-``).
    :param command: the command with its arguments.
    :param overrides: the ``-o name=value`` settings, unexpanded.
    """

    name: str
    type: str
    private: str
    command: str
    overrides: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def program(self) -> str:
        """The master.cf command's program name (``smtpd``, ``postscreen``), without arguments or path."""
        words = self.command.split()
        return os.path.basename(words[0]) if words else ""

    @property
    def label(self) -> str:
        """``service/type`` as postconf names it."""
        return f"{self.name}/{self.type}"


def read_master(config_dir: Path | None) -> list[MasterService]:
    """All master.cf services with their ``-o`` overrides.

    :raises PostfixError: if postconf fails.
    """
    overrides = postfix.master_overrides(config_dir)
    return [MasterService(f["service"], f["type"], f.get("private", "-"), f.get("command", ""),
                          overrides.get((f["service"], f["type"]), {}))
            for f in postfix.master_fields(config_dir)]


@dataclass(frozen=True)
class ListenerMatch:
    """The master.cf service behind an endpoint, and the smtpd that applies the relay policy.

    :param service: the service listening on the endpoint (smtpd or postscreen).
    :param smtpd: the smtpd service whose settings decide (the same, or postscreen's ``pass`` service).
    :param all_interfaces: the service listens on every address (``*:PORT``, or no host with
        ``inet_interfaces = all``), so it is reachable without Tor too.
    :param bound_addresses: what the service binds to, for the report.
    """

    service: MasterService
    smtpd: MasterService
    all_interfaces: bool
    bound_addresses: str


def find_listener(services: list[MasterService], endpoint: Endpoint, *, inet_interfaces: str,
                  queue_directory: str,
                  pass_service_name: Callable[[MasterService], str] | None = None) -> ListenerMatch | None:
    """Find the smtpd or postscreen service that accepts connections on *endpoint*.

    :param services: from :func:`read_master`.
    :param endpoint: the HiddenServicePort target or ``--listener``.
    :param inet_interfaces: main.cf's expanded ``inet_interfaces`` (used for services without a host).
    :param queue_directory: expanded ``queue_directory`` (where unix services live).
    :param pass_service_name: ``(postscreen service) -> its effective smtpd_service_name``; default
        ``smtpd`` for every postscreen.
    :returns: the match, or ``None`` when no smtpd/postscreen service listens there.
    """
    for service in services:
        if service.program not in SMTPD_PROGRAMS:
            continue
        if endpoint.is_unix:
            if service.type != "unix":
                continue
            sub = "public" if service.private == "n" else "private"
            sock = os.path.join(queue_directory, sub, service.name)
            if os.path.realpath(sock) != os.path.realpath(endpoint.path):
                continue
            bound, everywhere = sock, False
        else:
            if service.type != "inet":
                continue
            hit = _inet_matches(service.name, endpoint, inet_interfaces)
            if hit is None:
                continue
            bound, everywhere = hit
        smtpd = service
        if service.program == "postscreen":
            name = pass_service_name(service) if pass_service_name else "smtpd"
            smtpd = next((s for s in services if s.type == "pass" and s.name == name), None)
            if smtpd is None:
                log.warning("postscreen %s hands off to %s/pass, which master.cf lacks", service.label, name)
                return None
        return ListenerMatch(service, smtpd, everywhere, bound)
    return None


def _inet_matches(name: str, endpoint: Endpoint, inet_interfaces: str) -> tuple[str, bool] | None:
    host, sep, port_text = name.rpartition(":")
    if not sep:
        host = ""
    host = host.strip("[]")
    try:
        port = int(port_text) if port_text.isdigit() else socket.getservbyname(port_text, "tcp")
    except OSError:
        return None
    if port != endpoint.port:
        return None
    if host == "*":
        return f"*:{port}", True
    if host:
        return (name, False) if _same_host(host, endpoint.host) else None
    interfaces = inet_interfaces.replace(",", " ").split()
    if any(i.lower() == "all" for i in interfaces):
        return f"all interfaces:{port}", True
    addresses: list[str] = []
    for item in interfaces:
        if item.lower() == "loopback-only":
            addresses += ["127.0.0.1", "::1"]
        else:
            addresses.append(item.strip("[]"))
    if any(_same_host(a, endpoint.host) for a in addresses):
        exposed = any(not _is_loopback(a) for a in addresses)
        return f"{' '.join(interfaces)} port {port}", exposed
    return None


def _resolve(host: str) -> set[str]:
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except OSError:
        return set()


def _same_host(a: str, b: str | None) -> bool:
    if b is None:
        return False
    return bool(_resolve(a) & _resolve(b))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"

