"""The seam to Tor: its control port (through stem, imported here only) and ``tor --verify-config``.

Map of the module:

- :class:`TorControl`: a connected, authenticated control connection (TCP or unix socket; cookie,
  password or no auth) with the few operations setup needs: the running torrc's path and the onion
  services Tor loads from directories (``GETCONF``/``SETCONF HiddenServiceDir``, control-spec §3.3-3.4).
- :func:`verify_config`: ``tor --verify-config -f TORRC`` before anything relies on a torrc.
- :func:`check_hidden_service_dir`: refuse a directory Tor cannot create. This matters: a ``SETCONF``
  naming a ``HiddenServiceDir`` whose parent does not exist makes tor 0.4.9 log "Acting on config options
  left us in a broken state. Dying." and **exit** (seen on this project's lab machine), so setup must
  never send one.
- :func:`read_onion_address`: the ``hostname`` file Tor writes into the directory (rend-spec-v3 §6 address).
- :func:`bootstrap_status` and :func:`onion_service_status`: what ``onion-gateway status`` asks a Tor
  (bootstrap phase and SocksPorts; whether an onion service is hosted here and its descriptor can be
  fetched back from the network's HSDirs).

Design decision: a ``HiddenServiceDir`` that Tor loads, not an ephemeral ``ADD_ONION``
------------------------------------------------------------------------------------------------------
The address must survive Tor restarts and reboots. An ephemeral service (``ADD_ONION ED25519-V3``)
is forgotten whenever Tor restarts; something would have to notice every restart and re-add it from
a key file we keep, and mail to us bounces (well, defers) for as long as nobody has. With a
``HiddenServiceDir`` named in a torrc piece (``%include``-d by the main torrc) Tor itself loads the
service at every start, before it accepts anything else; no extra process, no window. The key is
created by Tor, as Tor's own user, in a 0700 directory with a 0600 ``hs_ed25519_secret_key``; it never
passes through onion-gateway (nothing here reads it, so nothing can print or log it). Setup applies the
same service to the running Tor through the control port (``SETCONF``), so no Tor restart is needed and
a wrong setting is refused by Tor before anything depends on it. The price: setup must be able to write
the torrc piece and read the ``hostname`` file, i.e. run on the Tor host as root, which it must anyway
to change Postfix.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import stem
import stem.connection
import stem.control

from onion_gateway.address import ListenAddress
from onion_gateway.errors import TorError
from onion_gateway.onion import OnionCheck, check_onion

log = logging.getLogger(__name__)

VERIFY_TIMEOUT_SECONDS = 60


class TorControl:
    """An authenticated connection to Tor's control port; use as a context manager.

    :param address: ``IP:PORT`` or ``unix:PATH`` of the ControlPort/ControlSocket.
    :param password_file: a file holding the control password (HashedControlPassword), or ``None``
        for cookie authentication (the cookie file is found through PROTOCOLINFO) or no auth.
    :raises TorError: on entering, when Tor cannot be reached or refuses authentication.
    """

    def __init__(self, address: ListenAddress, password_file: Path | None = None) -> None:
        self.address = address
        self.password_file = password_file
        self._controller: stem.control.Controller | None = None

    def __enter__(self) -> "TorControl":
        password = read_password_file(self.password_file) if self.password_file is not None else None
        controller = connect(self.address, password)
        self._controller = controller
        log.debug("connected to tor %s on %s", controller.get_version(), self.address)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._controller is not None:
            self._controller.close()
            self._controller = None

    @property
    def controller(self) -> stem.control.Controller:
        """The authenticated stem Controller of the open connection, for read-only questions that have
        no method here (:mod:`onion_gateway.health.tor_health`: GETINFO, HSFETCH).

        :raises TorError: if the connection is not open (outside the ``with`` block).
        """
        return self._c

    @property
    def _c(self) -> stem.control.Controller:
        if self._controller is None:
            raise TorError("the Tor control connection is not open")
        return self._controller

    def version(self) -> str:
        """Tor's version string, e.g. ``"0.4.9.11"``.

        :raises TorError: if the connection fails.
        """
        try:
            return str(self._c.get_version()).split()[0]
        except (stem.ControllerError, ValueError) as exc:
            raise TorError(f"GETINFO version failed: {exc}") from exc

    def config_file(self) -> Path | None:
        """The torrc the running Tor was started with (``GETINFO config-file``), or ``None``."""
        try:
            text = self._c.get_info("config-file", None)
        except stem.ControllerError as exc:
            raise TorError(f"GETINFO config-file failed: {exc}") from exc
        return Path(text) if text else None

    def conf_values(self, name: str) -> list[str]:
        """The values the running Tor has for the option *name* (``GETCONF NAME``, control-spec §3.3),
        one per line of a LINELIST option such as ``MetricsPort``; ``[]`` when it is unset.

        :raises TorError: if Tor refuses the GETCONF.
        """
        try:
            return [v for v in self._c.get_conf(name, [], multiple=True) if v]
        except (stem.ControllerError, stem.SocketError) as exc:
            raise TorError(f"GETCONF {name} failed: {exc}") from exc

    def set_conf_values(self, name: str, values: Sequence[str]) -> None:
        """Give the running Tor exactly *values* for the option *name*: ``SETCONF NAME=V1 NAME=V2``, or
        ``RESETCONF NAME`` (its default) when *values* is empty (control-spec §3.1-3.2; memory only).

        :raises TorError: if Tor refuses the change.
        """
        try:
            if values:
                self._c.set_options([(name, v) for v in values])
            else:
                self._c.reset_conf(name)
        except (stem.ControllerError, stem.SocketError) as exc:
            raise TorError(f"Tor refused to set {name}: {exc}") from exc

    def _hidden_services(self) -> dict:
        """Every onion service of the running Tor: ``{dir: {"HiddenServicePort": [entry...], option: value}}``.

        Parsed here rather than by stem, whose parser rejects targets that are not IPv4 (``unix:PATH``,
        ``[::1]:PORT``) and so made setup fail on a Tor that serves any such onion. Wire example
        (control-spec.txt §3.3 GETCONF)::

            250-HiddenServiceDir=/var/lib/tor/mail
            250-HiddenServicePort=25 127.0.0.1:2525
            250-HiddenServicePort=80 unix:/run/www.sock
            250 HiddenServiceVersion=3

        A port entry is ``(virtual port, host, port)`` for an IP target (IPv6 without brackets) and the
        raw text (``"80 unix:/run/www.sock"``) otherwise; raw entries are written back unchanged.
        """
        try:
            response = self._c.msg("GETCONF HiddenServiceOptions")
        except (stem.ControllerError, stem.SocketError) as exc:
            raise TorError(f"GETCONF HiddenServiceOptions failed: {exc}") from exc
        services: dict = {}
        directory = None
        for _code, _divider, content in response.content():
            key, sep, value = content.partition("=")
            if not sep:
                continue
            if key == "HiddenServiceDir":
                directory = value
                services[directory] = {"HiddenServicePort": []}
            elif directory is None:
                continue
            elif key == "HiddenServicePort":
                services[directory]["HiddenServicePort"].append(_port_entry(value))
            else:
                services[directory][key] = value
        return services

    def hidden_service_ports(self, hidden_service_dir: Path) -> list[tuple[int, str, int]] | None:
        """The ``HiddenServicePort`` mappings Tor has for *hidden_service_dir*, or ``None`` if none.

        :returns: ``[(virtual port, target address, target port), ...]``.
        :raises TorError: if GETCONF fails.
        """
        conf = self._hidden_services().get(str(hidden_service_dir))
        if conf is None:
            return None
        return [entry if isinstance(entry, tuple) else _raw_port(entry) for entry in conf.get("HiddenServicePort", [])]

    def hidden_service_extra_options(self, hidden_service_dir: Path) -> dict[str, str] | None:
        """The options other than ``HiddenServicePort`` Tor has for *hidden_service_dir* (``GETCONF
        HiddenServiceOptions``), e.g. ``{"HiddenServiceMaxStreams": "64"}``; ``None`` if Tor has no such service.

        :raises TorError: if GETCONF fails.
        """
        conf = self._hidden_services().get(str(hidden_service_dir))
        if conf is None:
            return None
        return {k: str(v) for k, v in conf.items() if k != "HiddenServicePort"}

    def set_hidden_service(self, hidden_service_dir: Path, onion_port: int, target_host: str,
                           target_port: int, timeout_seconds: float = 10.0,
                           options: Sequence[tuple[str, str]] | None = None) -> str:
        """Make the running Tor serve *hidden_service_dir* with exactly one port mapping; return its address.

        Other services Tor has are kept. Tor creates the directory and key if they do not exist;
        an existing key is reused, so the address stays the same.

        :param hidden_service_dir: the service's directory (its parent must exist:
            :func:`check_hidden_service_dir`).
        :param onion_port: the virtual port (25).
        :param target_host: where Tor forwards to (``127.0.0.1``).
        :param target_port: the target port (the hardened listener).
        :param timeout_seconds: how long to wait for Tor to write the ``hostname`` file.
        :param options: the service's other options (``[("HiddenServiceExportCircuitID", "haproxy"),
            ...]``), replacing those Tor has; ``None`` keeps Tor's as they are.
        :returns: the ``<56 chars>.onion`` address.
        :raises TorError: if Tor refuses the configuration or no valid address appears in time.
        """
        check_hidden_service_dir(hidden_service_dir)
        conf = self._hidden_services()
        wanted = [(onion_port, target_host, target_port)]
        current = conf.get(str(hidden_service_dir))
        extra = None if options is None else {k: str(v) for k, v in options}
        current_extra = {k: str(v) for k, v in (current or {}).items() if k != "HiddenServicePort"}
        if current is None or list(current.get("HiddenServicePort", [])) != wanted or \
                (extra is not None and extra != current_extra):
            entry = {"HiddenServicePort": wanted, **(current_extra if extra is None else extra)}
            conf[str(hidden_service_dir)] = entry
            try:
                self._c.set_hidden_service_conf(_writable(conf))
            except (stem.ControllerError, stem.SocketError) as exc:
                raise TorError(f"Tor refused the onion service in {hidden_service_dir}: {exc}") from exc
            log.info("tor now serves the onion service in %s (port %s -> %s:%s)", hidden_service_dir,
                     onion_port, target_host, target_port)
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                return read_onion_address(hidden_service_dir)
            except TorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def remove_hidden_service(self, hidden_service_dir: Path) -> bool:
        """Stop serving *hidden_service_dir* (the directory and key stay on disk).

        :returns: ``True`` if Tor had it.
        :raises TorError: if Tor refuses the change.
        """
        conf = self._hidden_services()
        if conf.pop(str(hidden_service_dir), None) is None:
            return False
        try:
            self._c.set_hidden_service_conf(_writable(conf))
        except (stem.ControllerError, stem.SocketError) as exc:
            raise TorError(f"Tor refused to drop the onion service in {hidden_service_dir}: {exc}") from exc
        log.info("tor no longer serves the onion service in %s", hidden_service_dir)
        return True


def _port_entry(value: str):
    """``"25 127.0.0.1:2525"`` -> ``(25, "127.0.0.1", 2525)``; ``"25 [::1]:2525"`` -> ``(25, "::1", 2525)``;
    ``"25"`` -> ``(25, "127.0.0.1", 25)``; anything else (``unix:``) stays text."""
    parts = value.split()
    try:
        virtual = int(parts[0])
        if len(parts) == 1:
            return (virtual, "127.0.0.1", virtual)
        target = parts[1]
        if target.isdigit():
            return (virtual, "127.0.0.1", int(target))
        if target.startswith("["):
            host, _, port = target[1:].partition("]:")
            return (virtual, host, int(port))
        host, sep, port = target.rpartition(":")
        if sep and "." in host and port.isdigit():
            return (virtual, host, int(port))
    except (ValueError, IndexError):
        pass
    return value


def _raw_port(value: str) -> tuple:
    """A text entry as ``(virtual port, "unix:PATH", 0)`` for callers that compare mappings."""
    parts = value.split(None, 1)
    try:
        return (int(parts[0]), parts[1] if len(parts) > 1 else "", 0)
    except ValueError:
        return (0, value, 0)


def _writable(conf: dict) -> dict:
    """The conf with tuple ports rendered as Tor writes them (IPv6 in brackets) for stem's SETCONF."""
    out: dict = {}
    for directory, options in conf.items():
        entry = dict(options)
        ports = []
        for port in options.get("HiddenServicePort", []):
            if isinstance(port, (tuple, list)):
                virtual, host, target = port
                if str(host).startswith("unix:"):
                    ports.append(f"{virtual} {host}")
                else:
                    ports.append(f"{virtual} [{host}]:{target}" if ":" in str(host) else f"{virtual} {host}:{target}")
            else:
                ports.append(port)
        entry["HiddenServicePort"] = ports
        out[directory] = entry
    return out


def check_hidden_service_dir(hidden_service_dir: Path) -> None:
    """Refuse a HiddenServiceDir that Tor could not create (Tor exits on such a SETCONF).

    :param hidden_service_dir: an absolute path whose parent exists; if the path exists it is a directory.
    :raises TorError: naming what is wrong.
    """
    if not hidden_service_dir.is_absolute():
        raise TorError(f"HiddenServiceDir {hidden_service_dir} must be an absolute path")
    if hidden_service_dir.exists() and not hidden_service_dir.is_dir():
        raise TorError(f"HiddenServiceDir {hidden_service_dir} exists and is not a directory")
    if not hidden_service_dir.parent.is_dir():
        raise TorError(f"the parent of HiddenServiceDir {hidden_service_dir} does not exist: Tor would "
                       f"exit on it; create {hidden_service_dir.parent} (owned by Tor's user) first")


def read_onion_address(hidden_service_dir: Path) -> str:
    """The address in the ``hostname`` file Tor writes into a HiddenServiceDir.

    :returns: ``<56 base32 chars>.onion`` with a valid rend-spec-v3 checksum.
    :raises TorError: if the file is missing, unreadable or holds no valid v3 address.
    """
    path = hidden_service_dir / "hostname"
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TorError(f"cannot read {path}: {exc}") from exc
    if check_onion(text) is not OnionCheck.VALID:
        raise TorError(f"{path} does not hold a valid v3 onion address")
    return text


def verify_config(torrc: Path, defaults_torrc: Path | None = None, tor_program: str = "tor") -> None:
    """Run ``tor --verify-config -f TORRC [--defaults-torrc FILE]`` (tor(1)).

    :param torrc: the torrc to check, with everything it includes.
    :param defaults_torrc: the defaults file Tor is started with (Debian's service passes
        ``/usr/share/tor/tor-service-defaults-torrc``); ``None`` lets tor use its built-in default.
    :raises TorError: if tor is missing or rejects the configuration (with tor's own warnings).
    """
    args = ["--verify-config", "-f", str(torrc), "--hush"]
    if defaults_torrc is not None:
        args += ["--defaults-torrc", str(defaults_torrc)]
    run_tor_checked(tor_program, args, f"tor --verify-config rejected {torrc}")


def supported_options(names: Iterable[str], tor_program: str = "tor") -> set[str]:
    """Which of the torrc options *names* the installed tor accepts (``tor --list-torrc-options``, tor(1)).

    ``HiddenServicePoWDefensesEnabled`` also needs tor's ``pow`` module (``tor --list-modules`` says
    ``pow: yes``; a tor built without it knows the option name but cannot defend).

    :param names: option names, e.g. ``["HiddenServicePoWDefensesEnabled"]``.
    :param tor_program: the tor binary.
    :returns: the subset tor supports.
    :raises TorError: if tor is missing or fails.
    """
    listed = set(run_tor_checked(tor_program, ["--list-torrc-options"], "tor --list-torrc-options failed")
                 .stdout.split())
    wanted = {name for name in names if name in listed}
    if "HiddenServicePoWDefensesEnabled" in wanted:
        modules = run_tor_checked(tor_program, ["--list-modules"], "tor --list-modules failed").stdout
        if not re.search(r"^pow: yes$", modules, re.M):
            wanted.discard("HiddenServicePoWDefensesEnabled")
    return wanted


# --- status: bootstrap phase and onion-service publication ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class TorBootstrap:
    """What the control port said about the bootstrap.

    :param version: tor's version, e.g. ``"0.4.9.11"``.
    :param progress: 0-100.
    :param summary: tor's SUMMARY text (``"Done"``).
    :param socks_listeners: ``("127.0.0.1:9050", ...)`` from ``net/listeners/socks``.
    """

    version: str
    progress: int
    summary: str
    socks_listeners: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OnionServiceState:
    """Whether a Tor hosts an onion service and whether its descriptor is on the network.

    :param hosted: this Tor has a current descriptor of its own for the address (it runs the service).
    :param published: an ``HSFETCH`` of the address came back with the descriptor from an HSDir.
    :param detail: one line for a human (the HSDir that answered, or why not).
    """

    hosted: bool
    published: bool
    detail: str


def read_password_file(path: Path) -> str:
    """The control password in *path* (its text without surrounding whitespace).

    :raises TorError: if the file cannot be read.
    """
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TorError(f"cannot read the control password file {path}: {exc.strerror}") from exc


def connect(address: ListenAddress, password: str | None = None,
            timeout_seconds: float | None = None) -> stem.control.Controller:
    """The one way onion-gateway opens Tor's control connection: ``IP:PORT`` (ControlPort) or
    ``unix:PATH`` (ControlSocket, Debian's ``/run/tor/control``), authenticated; the caller closes it.

    :param address: the control address.
    :param password: the control password, or ``None`` for cookie (found through PROTOCOLINFO) or no auth.
    :param timeout_seconds: connect budget (stem's sockets have none of their own); ``None``: no limit.
    :raises TorError: if Tor cannot be reached, wants a password, or refuses authentication.
    """
    previous = socket.getdefaulttimeout()
    if timeout_seconds is not None:
        socket.setdefaulttimeout(timeout_seconds)
    try:
        if address.is_unix:
            controller = stem.control.Controller.from_socket_file(address.path)
        else:
            controller = stem.control.Controller.from_port(address=address.host, port=address.port)
    except stem.SocketError as exc:
        raise TorError(f"cannot connect to Tor's control port {address}: {exc}; is tor running with a "
                       "ControlPort/ControlSocket there?") from exc
    finally:
        socket.setdefaulttimeout(previous)
    try:
        controller.authenticate(password=password)
    except stem.connection.MissingPassword as exc:
        controller.close()
        raise TorError(f"Tor's control port {address} wants a password: set setup.tor_control_password_file "
                       "(status: --tor-password)") from exc
    except (stem.connection.AuthenticationFailure, stem.SocketError) as exc:
        controller.close()
        raise TorError(f"Tor's control port {address} refused authentication: {exc}") from exc
    return controller


def bootstrap_status(address: ListenAddress, password: str | None = None,
                     timeout_seconds: float = 5.0) -> TorBootstrap:
    """Ask a Tor ControlPort for its bootstrap phase and SocksPorts.

    Wire example (control-spec.txt §4.1.10)::

        GETINFO status/bootstrap-phase
        250-status/bootstrap-phase=NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"

    :param address: the control address, ``IP:PORT`` or ``unix:PATH``.
    :param password: control-port password, or ``None`` for cookie/no authentication.
    :param timeout_seconds: connect budget (seconds).
    :returns: a :class:`TorBootstrap`.
    :raises TorError: if the port cannot be reached, authentication fails, or tor refuses GETINFO.
    """
    controller = connect(address, password, timeout_seconds)
    try:
        phase = controller.get_info("status/bootstrap-phase")
        socks = controller.get_info("net/listeners/socks", "")
        version = str(controller.get_version()).split()[0]
    except (stem.ControllerError, stem.SocketError) as exc:
        raise TorError(f"Tor control port {address}: GETINFO failed: {exc}") from exc
    finally:
        controller.close()
    progress = re.search(r"\bPROGRESS=(\d+)", phase)
    summary = re.search(r'\bSUMMARY="([^"]*)"', phase)
    return TorBootstrap(version, int(progress.group(1)) if progress else 0,
                        summary.group(1) if summary else phase,
                        tuple(s.strip('"') for s in socks.split()))


def onion_service_status(address: ListenAddress, onion: str, password: str | None = None,
                         timeout_seconds: float = 5.0) -> OnionServiceState:
    """Is *onion* served by the Tor on ``host:port``, and can its descriptor be fetched from the network?

    Two questions on one control connection (control-spec.txt §3.9 GETINFO, §3.26 HSFETCH, §4.1.25 HS_DESC)::

        GETINFO hs/service/desc/id/<56 chars>      250+... the descriptor this Tor built for its own service
        HSFETCH <56 chars>                         250 OK, then events:
        650 HS_DESC RECEIVED <56 chars> NO_AUTH $<HSDir fingerprint>~<nick> <blinded id>
        650 HS_DESC FAILED <56 chars> NO_AUTH $<HSDir> <id> REASON=NOT_FOUND

    The first says this Tor runs the service; only the second proves the descriptor was uploaded, since
    it comes back from an HSDir exactly as a sending gateway's Tor would fetch it.

    :param address: the control address, ``IP:PORT`` or ``unix:PATH``.
    :param onion: the address, ``<56 chars>.onion``.
    :param password: control-port password, or ``None`` for cookie/no authentication.
    :param timeout_seconds: budget for connecting and for the fetch (seconds).
    :returns: an :class:`OnionServiceState` (a missing or unpublished service is a value, not an error).
    :raises TorError: if the control port cannot be reached or refuses a command.
    """
    service_id = onion.lower().removesuffix(".onion")
    controller = connect(address, password, timeout_seconds)
    try:
        try:
            controller.get_info(f"hs/service/desc/id/{service_id}")
        except stem.OperationFailed as exc:     # 552: not a service of this Tor, no descriptor built yet
            return OnionServiceState(False, False, f"this Tor does not serve it, or has no descriptor for it "
                                                   f"yet ({exc})")
        except (stem.ControllerError, stem.SocketError) as exc:
            raise TorError(f"Tor control port {address}: GETINFO hs/service/desc failed: {exc}") from exc
        events: queue.Queue = queue.Queue()

        def listener(event) -> None:
            if getattr(event, "address", None) == service_id:
                events.put(event)

        try:
            controller.add_event_listener(listener, stem.control.EventType.HS_DESC)
            reply = controller.msg(f"HSFETCH {service_id}")
        except (stem.ControllerError, stem.SocketError) as exc:
            raise TorError(f"Tor control port {address}: HSFETCH failed: {exc}") from exc
        if not reply.is_ok():
            return OnionServiceState(True, False, f"HSFETCH refused: {reply}")
        failures: list[str] = []
        deadline = time.monotonic() + timeout_seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = events.get(timeout=left)
            except queue.Empty:
                break
            action = str(event.action)
            if action == "RECEIVED":
                return OnionServiceState(True, True, f"descriptor fetched back from HSDir {event.directory}")
            if action == "FAILED":
                failures.append(f"{event.directory}: {event.reason or 'failed'}")
        shown = "; ".join(failures[-3:]) or "no answer"
        return OnionServiceState(True, False, f"descriptor not fetched within {timeout_seconds:g} s ({shown})")
    finally:
        controller.close()


# --- the relay audit: what Tor itself reads from a torrc ----------------------------------------------------


def dump_config(torrc: Path, defaults_torrc: Path | None = None, tor_program: str = "tor") -> list[tuple[str, str]]:
    """The options Tor reads from *torrc*: ``tor --dump-config short -f TORRC --hush`` (tor(1)).

    Tor expands ``%include`` (files, directories, globs), continuation lines, quoting and comments
    itself and validates the result; nothing is started, no network is used.

    Wire example (stdout)::

        HiddenServiceDir /var/lib/tor/mail
        HiddenServicePort 25 127.0.0.1:2525

    :param torrc: the torrc.
    :param defaults_torrc: the defaults file Tor is started with, or ``None`` for tor's built-in one.
    :param tor_program: the tor binary.
    :returns: ``(Keyword, value)`` pairs in Tor's order (options at their default are left out).
    :raises TorError: if tor is missing, times out or rejects the configuration (with its warnings).
    """
    argv = ["--dump-config", "short", "-f", str(torrc), "--hush"]
    if defaults_torrc is not None:
        argv += ["--defaults-torrc", str(defaults_torrc)]
    done = run_tor_checked(tor_program, argv, f"tor --dump-config rejected {torrc}")
    pairs = []
    for line in done.stdout.splitlines():
        keyword, _, value = line.strip().partition(" ")
        if keyword and not keyword.startswith("#"):
            pairs.append((keyword, value.strip()))
    return pairs


def hidden_service_options(address: ListenAddress, password_file: Path | None = None) -> list[tuple[str, str]]:
    """The onion services a running Tor has: ``GETCONF HiddenServiceOptions`` (control-spec.txt §3.3).

    Wire example (reply)::

        250-HiddenServiceDir=/var/lib/tor/mail
        250 HiddenServicePort=25 127.0.0.1:2525

    :param address: Tor's ControlPort/ControlSocket.
    :param password_file: the control password file, or ``None`` for cookie or no authentication.
    :returns: ``(Keyword, value)`` pairs in Tor's order (``HiddenServiceDir``, ``HiddenServicePort``, ...).
    :raises TorError: if Tor cannot be reached, refuses authentication or the command.
    """
    with TorControl(address, password_file) as control:
        try:
            reply = control._c.msg("GETCONF HiddenServiceOptions")
        except (stem.ControllerError, stem.SocketError) as exc:
            raise TorError(f"GETCONF HiddenServiceOptions on {address} failed: {exc}") from exc
    if not reply.is_ok():
        raise TorError(f"GETCONF HiddenServiceOptions on {address} refused: {reply}")
    pairs = []
    for _, _, content in reply.content():
        keyword, sep, value = content.partition("=")
        if sep:
            pairs.append((keyword.strip(), value.strip()))
    return pairs


def run_tor_checked(tor_program: str, args: list[str], refusal: str) -> subprocess.CompletedProcess:
    """Run ``TOR_PROGRAM ARGS`` (a command that exits, such as ``--verify-config``/``--dump-config``).

    :param tor_program: the tor binary.
    :param args: its arguments.
    :param refusal: the start of the error message when tor exits non-zero (its warnings follow).
    :returns: the finished process (exit status 0).
    :raises TorError: if tor is missing, does not finish within ``VERIFY_TIMEOUT_SECONDS`` or exits non-zero.
    """
    if shutil.which(tor_program) is None:
        raise TorError(f"{tor_program} not found: is Tor installed?")
    argv = [tor_program, *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=VERIFY_TIMEOUT_SECONDS,
                              env={**os.environ, "LC_ALL": "C"})
    except subprocess.TimeoutExpired as exc:
        raise TorError(f"{' '.join(argv)} did not finish in {VERIFY_TIMEOUT_SECONDS} s") from exc
    if done.returncode != 0:
        complaints = [line for line in (done.stdout + done.stderr).splitlines()
                      if "[warn]" in line or "[err]" in line]
        raise TorError(f"{refusal}: " + (" | ".join(complaints) or done.stderr.strip() or done.stdout.strip()))
    return done
