"""Setup's state record: what ``onion-gateway setup`` built, read by ``status``, ``audit-open-relay`` and
the lookup daemon instead of each re-reading a copied file name.

The record lives in ``STATE_DIR/manifest.json`` under the key ``listener`` (the name of the first
version of the record, kept so that manifests written by older setups still read)::

    {"files": [...], "onion": {...}, "managed": {...},
     "listener": {"listener": "127.0.0.1:2525", "onion_port": 25,
                  "hidden_service_dir": "/var/lib/tor/onion-gateway", "postfix_config_dir": null,
                  "tor_control": "unix:/run/tor/control", "onion_address": "<56>.onion",
                  "domains": ["example.org"], "transport_map": "socketmap:inet:127.0.0.1:6014:onion",
                  "serve_config": "/etc/onion-gateway/onion-gateway.toml"}}

Keys after ``postfix_config_dir`` are absent in records written before they existed; they read as
``None``/empty. This module imports nothing from the rest of :mod:`onion_gateway.setup` or from the
audit, so every reader can import it alone.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onion_gateway.address import ListenAddress, parse_listen_address
from onion_gateway.errors import ConfigError

MANIFEST = "manifest.json"
JOURNAL = "journal.json"
DEFAULT_STATE_DIR = Path("/var/lib/onion-gateway-setup")
DAEMON_STATE_DIR = Path("/var/lib/onion-gateway")
"""The daemon unit's ``StateDirectory=``: systemd chowns it, recursively, to the daemon's (dynamic) user
at every start (systemd.exec(5)), so root's setup records must never live inside it."""
OLD_DEFAULT_STATE_DIR = DAEMON_STATE_DIR / "setup"
"""Where setup kept its records up to 0.1.0: inside :data:`DAEMON_STATE_DIR`."""


def check_not_in_daemon_state_dir(state_dir: Path) -> None:
    """Refuse a state directory inside the daemon's ``StateDirectory=`` (:data:`DAEMON_STATE_DIR`).

    systemd hands that tree to the daemon's user at each start: setup's records there would be the
    daemon's to change, and the trust check (:func:`check_state_dir`) would refuse them after the
    daemon's first start. When the state directory is the default and the records are still where
    setup kept them up to 0.1.0, the error says how to move them.

    :param state_dir: setup's ``state_dir``.
    :raises ConfigError: naming the directory and what to do; nothing was changed.
    """
    path = Path(os.path.abspath(state_dir))
    if path == DEFAULT_STATE_DIR and not (path / MANIFEST).exists() and (OLD_DEFAULT_STATE_DIR / MANIFEST).exists():
        raise ConfigError(
            f"setup's records are in {OLD_DEFAULT_STATE_DIR}, inside the daemon's StateDirectory (systemd gives "
            f"it to the daemon's user at every start); check them and move them to the new default: "
            f"mv {OLD_DEFAULT_STATE_DIR} {DEFAULT_STATE_DIR} && chown -R root:root {DEFAULT_STATE_DIR} && "
            f"chmod 0700 {DEFAULT_STATE_DIR}; nothing was changed")
    if path == DAEMON_STATE_DIR or DAEMON_STATE_DIR in path.parents:
        raise ConfigError(f"setup.state_dir: {path} is inside {DAEMON_STATE_DIR}, the daemon's StateDirectory, "
                          f"which systemd gives to the daemon's user at every start; use another directory "
                          f"(default {DEFAULT_STATE_DIR})")


@dataclass(frozen=True)
class SetupRecord:
    """What ``onion-gateway setup`` built, as it recorded it (one record per state directory).

    :param listener: the hardened onion-facing smtpd (Tor's HiddenServicePort target).
    :param onion_port: the onion service's virtual port (25).
    :param hidden_service_dir: the HiddenServiceDir, or ``None`` if not known.
    :param postfix_config_dir: the Postfix configuration directory setup changed (``None``: the default).
    :param source: where the record was read, for reports.
    :param tor_control: Tor's control address (``IP:PORT`` or ``unix:PATH``), ``None`` if not recorded.
    :param onion_address: the gateway's own onion address (``<56 chars>.onion``), ``None`` if not recorded.
    :param domains: the mail domains setup printed SRV records for.
    :param transport_map: the daemon's table setup put in ``transport_maps``.
    :param serve_config: the config file the lookup daemon's unit runs with.
    """

    listener: ListenAddress
    onion_port: int
    hidden_service_dir: str | None
    postfix_config_dir: Path | None
    source: str
    tor_control: ListenAddress | None = None
    onion_address: str | None = None
    domains: tuple[str, ...] = ()
    transport_map: str | None = None
    serve_config: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as stored under the manifest's ``listener`` key (see the module docstring)."""
        return {"listener": str(self.listener), "onion_port": self.onion_port,
                "hidden_service_dir": self.hidden_service_dir,
                "postfix_config_dir": str(self.postfix_config_dir) if self.postfix_config_dir else None,
                "tor_control": str(self.tor_control) if self.tor_control else None,
                "onion_address": self.onion_address, "domains": list(self.domains),
                "transport_map": self.transport_map,
                "serve_config": str(self.serve_config) if self.serve_config else None}

    def as_onion_port(self):
        """The record as the torrc line it stands for (with the onion name read from ``hostname``).

        :returns: an :class:`onion_gateway.audit.discover.OnionPort` (imported here: the audit depends
            on this module, not the other way round).
        """
        from onion_gateway.audit.discover import OnionPort

        onion = self.onion_address or (_read_hostname(self.hidden_service_dir) if self.hidden_service_dir else None)
        return OnionPort(self.onion_port, self.listener, self.hidden_service_dir, onion,
                         self.source)


def record_from_json(record: Any, source: str) -> SetupRecord:
    """Parse the manifest's ``listener`` value.

    :raises ConfigError: when it holds no listener or a bad value (the message starts with *source*).
    """
    if not isinstance(record, dict) or not record.get("listener"):
        raise ConfigError(f"{source} records no listener (written by an older setup): run setup again, "
                          "or use --listener")
    try:
        port = record.get("onion_port", 25)
        if isinstance(port, bool) or not str(port).isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"port out of range: {port!r}")
        listener = parse_listen_address(str(record["listener"]), "listener")
        control = record.get("tor_control")
        tor_control = parse_listen_address(str(control), "tor_control") if control else None
    except ConfigError as exc:
        if "bad port" in str(exc):
            exc = ConfigError(f"listener: port out of range in {record['listener']!r}")
        raise ConfigError(f"{source}: {exc}") from exc
    config_dir = record.get("postfix_config_dir")
    serve_config = record.get("serve_config")
    domains = record.get("domains") or ()
    return SetupRecord(listener, int(port), record.get("hidden_service_dir") or None,
                       Path(config_dir) if config_dir else None, f"{source} (setup record)",
                       tor_control=tor_control, onion_address=record.get("onion_address") or None,
                       domains=tuple(str(d) for d in domains if isinstance(d, str)),
                       transport_map=record.get("transport_map") or None,
                       serve_config=Path(serve_config) if serve_config else None)


def load_manifest(state_dir: Path) -> dict[str, Any]:
    """The manifest of *state_dir* as a dict (``{"files": [], "onion": None}`` when there is none).

    :raises ConfigError: when it exists but cannot be read or parsed.
    """
    path = Path(state_dir) / MANIFEST
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)       # a planted symlink is never followed
        with os.fdopen(fd, "rb") as fh:
            data = json.loads(fh.read())
    except FileNotFoundError:
        return {"runs": [], "changes": []}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"cannot read {path}: not a JSON object")
    return data


def read_setup_state(state_dir: Path) -> SetupRecord:
    """The record in setup's state directory (``STATE_DIR/manifest.json``, key ``listener``).

    Written by :func:`onion_gateway.setup.apply.apply_plan` after a successful run, removed by
    ``setup --rollback``.

    :param state_dir: setup's ``state_dir``.
    :returns: the :class:`SetupRecord`.
    :raises ConfigError: if there is no manifest (setup never ran, or was rolled back), it cannot be
        read, it holds no listener record (written by a setup older than this record), or *state_dir*
        lies inside the daemon's StateDirectory (:func:`check_not_in_daemon_state_dir`).
    """
    check_not_in_daemon_state_dir(state_dir)
    path = Path(state_dir) / MANIFEST
    if not path.exists():
        raise ConfigError(f"{path} does not exist: setup has not run with this state directory "
                          "(or was rolled back)")
    return record_from_json(load_manifest(state_dir).get("listener"), str(path))


def _read_hostname(service_dir: str) -> str | None:
    try:
        return (Path(service_dir) / "hostname").read_text().strip() or None
    except OSError:
        return None


def check_state_dir(state_dir: Path, *, create: bool) -> bool:
    """Trust the state directory only if nobody but its owner (root) can change it.

    The directory must be owned by the effective user (root) and not writable by group or others, and
    so must each parent up to the first directory owned by root that others cannot write to; a
    root-owned directory with the sticky bit (``/tmp``) counts as safe, as its entries cannot be
    replaced by others. A symlink anywhere on the path is resolved first and the real path checked.

    :param state_dir: setup's ``state_dir``.
    :param create: create it (mode 0700, missing parents 0755) when it does not exist.
    :returns: ``True`` if it exists (after creating it), ``False`` if it does not and *create* is off.
    :raises SetupError: naming the first untrusted directory; nothing was changed.
    :raises ConfigError: for a directory inside the daemon's StateDirectory
        (:func:`check_not_in_daemon_state_dir`).
    """
    from onion_gateway.errors import SetupError

    check_not_in_daemon_state_dir(state_dir)

    euid = os.geteuid()
    path = Path(os.path.realpath(state_dir))
    if not path.exists():
        _check_parents(path.parent, euid)
        if not create:
            return False
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if euid != 0 and st.st_uid == 0:
        import errno

        raise SetupError(f"the state directory {path} belongs to root") from PermissionError(
            errno.EACCES, "the state directory belongs to root", str(path))
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != euid or st.st_mode & 0o022:
        raise SetupError(f"refusing the state directory {path}: it must be a directory owned by uid {euid} "
                         f"and not writable by group or others (it is uid {st.st_uid}, mode "
                         f"{stat.S_IMODE(st.st_mode):04o}); nothing was changed")
    _check_parents(path.parent, euid)
    return True


def _check_parents(start: Path, euid: int) -> None:
    from onion_gateway.errors import SetupError

    current = start
    while True:
        if current.exists():
            st = os.stat(current)
            if st.st_uid not in (0, euid) or (st.st_mode & 0o022 and not (st.st_uid == 0 and st.st_mode & stat.S_ISVTX)):
                raise SetupError(f"refusing the state directory: its parent {current} can be changed by "
                                 f"others (uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); nothing was changed")
            if st.st_uid == 0 and not st.st_mode & 0o022:
                return                                   # the first root-owned directory others cannot write
            if st.st_uid == 0 and st.st_mode & stat.S_ISVTX:
                return
        if current.parent == current:
            return
        current = current.parent


class StateLock:
    """``flock(2)`` on ``STATE_DIR/lock`` for a whole run: a second setup waits for nothing, it refuses.

    :raises SetupError: (on enter) when another setup holds the lock.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "lock"
        self.fd: int | None = None

    def __enter__(self) -> "StateLock":
        import fcntl

        from onion_gateway.errors import SetupError

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise SetupError(f"another onion-gateway setup is running ({self.path} is locked)") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
