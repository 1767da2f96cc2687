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
import shutil
import subprocess
import time
from pathlib import Path

import stem
import stem.connection
import stem.control

from onion_gateway.config import ListenAddress
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
        password = None
        if self.password_file is not None:
            try:
                password = self.password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise TorError(f"cannot read the control password file {self.password_file}: "
                               f"{exc.strerror}") from exc
        try:
            if self.address.is_unix:
                controller = stem.control.Controller.from_socket_file(self.address.path)
            else:
                controller = stem.control.Controller.from_port(address=self.address.host, port=self.address.port)
        except stem.SocketError as exc:
            raise TorError(f"cannot connect to Tor's control port {self.address}: {exc}; is tor running "
                           "with a ControlPort/ControlSocket there?") from exc
        try:
            controller.authenticate(password=password)
        except stem.connection.MissingPassword as exc:
            controller.close()
            raise TorError(f"Tor's control port {self.address} wants a password: "
                           "set setup.tor_control_password_file") from exc
        except (stem.connection.AuthenticationFailure, stem.SocketError) as exc:
            controller.close()
            raise TorError(f"Tor's control port {self.address} refused authentication: {exc}") from exc
        self._controller = controller
        log.debug("connected to tor %s on %s", controller.get_version(), self.address)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._controller is not None:
            self._controller.close()
            self._controller = None

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

    def _hidden_services(self) -> dict:
        try:
            return dict(self._c.get_hidden_service_conf())
        except stem.ControllerError as exc:
            raise TorError(f"GETCONF HiddenServiceOptions failed: {exc}") from exc

    def hidden_service_ports(self, hidden_service_dir: Path) -> list[tuple[int, str, int]] | None:
        """The ``HiddenServicePort`` mappings Tor has for *hidden_service_dir*, or ``None`` if none.

        :returns: ``[(virtual port, target address, target port), ...]``.
        :raises TorError: if GETCONF fails.
        """
        conf = self._hidden_services().get(str(hidden_service_dir))
        return None if conf is None else list(conf.get("HiddenServicePort", []))

    def set_hidden_service(self, hidden_service_dir: Path, onion_port: int, target_host: str,
                           target_port: int, timeout_seconds: float = 10.0) -> str:
        """Make the running Tor serve *hidden_service_dir* with exactly one port mapping; return its address.

        Other services Tor has are kept. Tor creates the directory and key if they do not exist;
        an existing key is reused, so the address stays the same.

        :param hidden_service_dir: the service's directory (its parent must exist:
            :func:`check_hidden_service_dir`).
        :param onion_port: the virtual port (25).
        :param target_host: where Tor forwards to (``127.0.0.1``).
        :param target_port: the target port (the hardened listener).
        :param timeout_seconds: how long to wait for Tor to write the ``hostname`` file.
        :returns: the ``<56 chars>.onion`` address.
        :raises TorError: if Tor refuses the configuration or no valid address appears in time.
        """
        check_hidden_service_dir(hidden_service_dir)
        conf = self._hidden_services()
        wanted = [(onion_port, target_host, target_port)]
        current = conf.get(str(hidden_service_dir))
        if current is None or list(current.get("HiddenServicePort", [])) != wanted:
            entry = dict(current or {})
            entry["HiddenServicePort"] = wanted
            conf[str(hidden_service_dir)] = entry
            try:
                self._c.set_hidden_service_conf(conf)
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
            self._c.set_hidden_service_conf(conf)
        except (stem.ControllerError, stem.SocketError) as exc:
            raise TorError(f"Tor refused to drop the onion service in {hidden_service_dir}: {exc}") from exc
        log.info("tor no longer serves the onion service in %s", hidden_service_dir)
        return True


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
    if shutil.which(tor_program) is None:
        raise TorError(f"{tor_program} not found: is Tor installed?")
    argv = [tor_program, "--verify-config", "-f", str(torrc), "--hush"]
    if defaults_torrc is not None:
        argv += ["--defaults-torrc", str(defaults_torrc)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=VERIFY_TIMEOUT_SECONDS,
                              env={**os.environ, "LC_ALL": "C"})
    except subprocess.TimeoutExpired as exc:
        raise TorError(f"{' '.join(argv)} did not finish in {VERIFY_TIMEOUT_SECONDS} s") from exc
    if done.returncode != 0:
        complaints = [line for line in (done.stdout + done.stderr).splitlines()
                      if "[warn]" in line or "[err]" in line]
        raise TorError(f"tor --verify-config rejected {torrc}: " + (" | ".join(complaints) or done.stdout.strip()))
