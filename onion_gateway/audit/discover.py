"""Find the onion-facing Postfix listeners: torrc ``HiddenServicePort`` lines -> master.cf services.

Sources implemented:

* tor(1) ``--dump-config short``: Tor itself reads the torrc (:func:`onion_ports`); the hand-written
  reader below (:func:`parse_torrc`) only names the file and line of each port and stands in when Tor
  cannot answer.
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

from onion_gateway import postfix, tor
from onion_gateway.address import ListenAddress, torrc_target
from onion_gateway.address import parse_port as _port       # read_setup_state's name for it
from onion_gateway.errors import ConfigError, TorError
from onion_gateway.setup.state import MANIFEST as SETUP_MANIFEST, SetupRecord, read_setup_state  # noqa: F401

log = logging.getLogger(__name__)

MAX_INCLUDE_DEPTH = 31          # tor's MAX_INCLUDE_RECURSION_LEVEL
DEFAULT_TORRC = Path("/etc/tor/torrc")
SMTPD_PROGRAMS = {"smtpd", "postscreen"}


@dataclass(frozen=True)
class OnionPort:
    """One ``HiddenServicePort`` line.

    :param virtual_port: the port Tor clients connect to on the onion address.
    :param target: where Tor connects for it.
    :param service_dir: the HiddenServiceDir it belongs to, or ``None``.
    :param onion: the service's address from ``service_dir/hostname`` if readable, else ``None``.
    :param source: ``file:line`` of the HiddenServicePort line (or the torrc, when only Tor could tell).
    :param discovered_by: ``"tor --dump-config"`` when Tor itself read the torrc, else ``"torrc parser"``.
    """

    virtual_port: int
    target: ListenAddress
    service_dir: str | None
    onion: str | None
    source: str
    discovered_by: str = "torrc parser"


def onion_ports(torrc: Path, tor_program: str = "tor") -> list[OnionPort]:
    """Every ``HiddenServicePort`` of a torrc, as Tor itself reads it (``tor --dump-config``, which expands
    includes, quoting and defaults and validates the file).

    Tor's dump does not say which file a line came from: :func:`parse_torrc` still reads the files for
    that (``file:line`` in the report), and stands in for Tor when Tor cannot answer (tor not installed,
    or it refuses to validate the torrc as this user, e.g. a HiddenServiceDir it does not own).

    :param torrc: the torrc.
    :param tor_program: the tor binary.
    :returns: the onion ports in Tor's order.
    :raises ConfigError: if neither Tor nor the parser can read the torrc.
    """
    try:
        lines = tor.dump_config(Path(torrc), tor_program=tor_program)
    except TorError as exc:
        log.info("Tor cannot answer for %s (%s): reading it with the torrc parser", torrc, exc)
        return parse_torrc(Path(torrc))
    try:
        sources = {(p.virtual_port, p.target): p.source for p in parse_torrc(Path(torrc))}
    except ConfigError:
        sources = {}
    return _ports_from_options(lines, sources, f"{torrc} (tor --dump-config)", "tor --dump-config")


def running_onion_ports(control: ListenAddress, password_file: Path | None = None) -> list[OnionPort]:
    """Every ``HiddenServicePort`` of a running Tor, asked over its control port (``GETCONF
    HiddenServiceOptions``): what Tor uses now, whatever torrc it was started with.

    :param control: Tor's ControlPort or ControlSocket.
    :param password_file: the control password file, or ``None`` (cookie or no authentication).
    :returns: the onion ports in Tor's order; ``source`` names the control port.
    :raises TorError: if Tor cannot be asked.
    :raises ConfigError: if Tor reports a port line that cannot be parsed.
    """
    lines = tor.hidden_service_options(control, password_file)
    return _ports_from_options(lines, {}, f"Tor control {control}", "GETCONF HiddenServiceOptions")


def _ports_from_options(lines: list[tuple[str, str]], sources: dict, default_source: str,
                        discovered_by: str) -> list[OnionPort]:
    ports: list[OnionPort] = []
    service_dir, onion = None, None
    for keyword, value in lines:
        if keyword.lower() == "hiddenservicedir":
            service_dir, onion = value, _read_hostname(value)
        elif keyword.lower() == "hiddenserviceport":
            virtual_text, _, target_text = value.partition(" ")
            virtual = _port(virtual_text)
            target = torrc_target(target_text, virtual)
            ports.append(OnionPort(virtual, target, service_dir, onion, sources.get((virtual, target), default_source),
                                   discovered_by))
    return ports


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
            target = torrc_target(parts[1] if len(parts) > 1 else "", virtual)
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


def find_listener(services: list[MasterService], endpoint: ListenAddress, *, inet_interfaces: str,
                  queue_directory: str,
                  pass_service_name: Callable[[MasterService], str] | None = None) -> ListenerMatch | None:
    """The first of :func:`find_listeners`, or ``None``."""
    matches = find_listeners(services, endpoint, inet_interfaces=inet_interfaces, queue_directory=queue_directory,
                             pass_service_name=pass_service_name)
    return matches[0] if matches else None


def find_listeners(services: list[MasterService], endpoint: ListenAddress, *, inet_interfaces: str,
                   queue_directory: str,
                   pass_service_name: Callable[[MasterService], str] | None = None) -> list[ListenerMatch]:
    """Every smtpd or postscreen service that accepts connections on *endpoint*, in master.cf order.

    Two inet services can bind the same address and port (``127.0.0.1:2525`` and a host-less ``2525``
    with ``inet_interfaces = 127.0.0.1``): master(8) sets SO_REUSEPORT and the kernel hands each
    connection to either of them, so each one can receive a Tor client.

    :param services: from :func:`read_master`.
    :param endpoint: the HiddenServicePort target or ``--listener``.
    :param inet_interfaces: main.cf's expanded ``inet_interfaces`` (used for services without a host).
    :param queue_directory: expanded ``queue_directory`` (where unix services live).
    :param pass_service_name: ``(postscreen service) -> its effective smtpd_service_name``; default
        ``smtpd`` for every postscreen.
    :returns: the matches; empty when no smtpd/postscreen service listens there. A postscreen whose
        ``pass`` service is missing is logged and left out.
    """
    matches: list[ListenerMatch] = []
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
                continue
        matches.append(ListenerMatch(service, smtpd, everywhere, bound))
    return matches


def _inet_matches(name: str, endpoint: ListenAddress, inet_interfaces: str) -> tuple[str, bool] | None:
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
    v6 = ":" in (endpoint.host or "")
    if host == "*" or host == ("::" if v6 else "0.0.0.0"):    # a wildcard of the endpoint's family
        # (Postfix sets IPV6_V6ONLY, so [::] never receives an IPv4 connection)
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

