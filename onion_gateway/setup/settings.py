"""Settings of ``onion-gateway setup``: the ``[setup]`` table of the config file, defaults in one place.

Every path setup touches is a setting, so that a test (or a second Postfix instance on one host) can
point setup at private files instead of ``/etc``::

    [setup]
    postfix_config_dir = "/etc/postfix"
    listener = "127.0.0.1:2525"
    domains = ["example.org"]
    tor_control = "unix:/run/tor/control"
    state_dir = "/var/lib/onion-gateway-setup"
    ...

``examples/onion-gateway.toml`` documents every key. Command-line flags override the file; both go
through :func:`setup_settings`, which names a bad value as ``setup.<key>``.
The transport name and the lookup table Postfix asks come from the ``[serve]`` table (the daemon's
``transport`` and first ``socketmap``/``tcp_table`` listener) unless ``transport_map`` says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from onion_gateway.address import ListenAddress, parse_listen_address
from onion_gateway.config import ServeSettings
from onion_gateway.errors import ConfigError
from onion_gateway.setup.state import DEFAULT_STATE_DIR

DEFAULT_LISTENER = "127.0.0.1:2525"
DEFAULT_SOCKS = "127.0.0.1:9050"
#: Parallel deliveries a sender makes to one destination: Postfix's default_destination_concurrency_limit,
#: which the smtptor transport keeps (a ``smtptor_destination_concurrency_limit`` in main.cf would change
#: it). One sending gateway reaches an onion over one circuit, so this is its connections per circuit.
SENDER_CONCURRENCY = 20
TLS_LEVELS = ("none", "may", "encrypt", "dane", "dane-only", "fingerprint", "verify", "secure")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class SetupSettings:
    """Everything ``onion-gateway setup`` needs. Field names are the ``[setup]`` keys of the config file.

    :param postfix_config_dir: the Postfix configuration directory (``postconf -c``); ``None`` is the
        default instance (``/etc/postfix``).
    :param listener: the hardened onion-facing smtpd, ``IP:PORT`` on loopback; the onion's port 25 points here.
    :param domains: the mail domains to print an ``_onion-mx._tcp`` SRV record for.
    :param transport_map: the Postfix table put in front of ``transport_maps``; empty = derived from the
        ``[serve]`` listeners (``socketmap:inet:HOST:PORT:onion``, else ``tcp:HOST:PORT``).
    :param relay_restrictions: ``smtpd_relay_restrictions`` of the listener (comma-separated); setup
        refuses a value that would relay for loopback (:func:`onion_gateway.setup.plan.check_listener_policy`).
    :param recipient_restrictions: ``smtpd_recipient_restrictions`` of the listener (comma-separated);
        empty (the default) = none: main.cf's list is not inherited (it usually starts with
        ``permit_mynetworks``, and SPF or DNSBL checks would judge every Tor client as 127.0.0.1).
    :param smtp_tls_security_level: TLS level of the smtptor transport (``none``: the onion already
        authenticates and encrypts, as the onionmx documentation argues).
    :param wrapper_path: where the ``smtp_tor`` wrapper goes; empty = ``$daemon_directory/smtp_tor``.
        Elsewhere, master.cf names it by a path relative to daemon_directory (``../../..``).
    :param torsocks: the torsocks program the wrapper runs (name looked up in PATH, or a path).
    :param torsocks_isolation: run ``torsocks -i`` (a separate Tor circuit per connection).
    :param socks: Tor's SocksPort as ``IP:PORT`` (the wrapper's torsocks connects there).
    :param torsocks_conf: where to write a torsocks.conf when ``socks`` is not 127.0.0.1:9050.
    :param tor_control: Tor's control port, ``IP:PORT`` or ``unix:PATH``.
    :param tor_control_password_file: a file holding the control password; empty = cookie or no auth.
    :param torrc: the torrc Tor is started with; setup adds one ``%include`` line for ``torrc_piece``.
        Empty = do not touch it (then include the piece yourself).
    :param torrc_piece: the rendered torrc fragment (HiddenServiceDir + HiddenServicePort).
    :param tor_defaults_torrc: the ``--defaults-torrc`` for ``tor --verify-config`` (Debian's service file).
    :param hidden_service_dir: the onion service's directory (keys, ``hostname``); its parent must exist.
    :param onion_port: the virtual port of the onion service (25 for SMTP).
    :param systemd_unit: where to write the unit for ``onion-gateway serve``; its socket unit (the
        daemon's listeners, held across restarts) goes beside it as ``NAME.socket``; empty = write neither.
    :param serve_config: the config file the unit passes to ``onion-gateway serve``.
    :param serve_command: the command the unit runs (``onion-gateway`` path); empty = found in PATH.
    :param state_dir: backups, manifest and the journal of an unfinished run.
    :param reload: reload Postfix when it is running after a successful change.
    :param srv_ttl_seconds: TTL printed in the SRV records.
    :param srv_priority: SRV priority printed (lower is tried first).
    :param srv_weight: SRV weight printed.
    :param export_circuit_id: per-circuit client identity on the onion listener: the torrc piece gets
        ``HiddenServiceExportCircuitID haproxy`` and the listener ``smtpd_upstream_proxy_protocol=haproxy``
        (``inet_protocols=all``), so Postfix sees each Tor circuit as its own ``fc00:dead:beef:4dad::/64``
        address. ``false``: every onion client is 127.0.0.1 (one anvil bucket for all senders).
    :param onion_max_streams: ``HiddenServiceMaxStreams``: concurrent streams per rendezvous circuit (one
        sending gateway); 0 = unlimited. Must exceed ``listener_connection_count_limit`` (docs/onion-path.md).
    :param onion_max_streams_close_circuit: ``HiddenServiceMaxStreamsCloseCircuit``: close the circuit
        (instead of refusing the stream) when a client goes past ``onion_max_streams``.
    :param onion_pow_defenses: ``HiddenServicePoWDefensesEnabled 1`` when the installed tor supports it.
    :param onion_intro_dos_defense: ``HiddenServiceEnableIntroDoSDefense 1`` when the installed tor supports it.
    :param tor_metrics_port: ``MetricsPort`` for tor's ``tor_hs_*`` counters, ``IP:PORT`` on loopback;
        empty (the default) = none.
    :param listener_connection_count_limit: ``smtpd_client_connection_count_limit`` of the listener:
        concurrent connections per circuit (only with ``export_circuit_id``); 0 = unlimited.
    :param listener_connection_rate_limit: ``smtpd_client_connection_rate_limit`` of the listener:
        connections per circuit per ``anvil_rate_time_unit`` (60 s); 0 = unlimited.
    """

    postfix_config_dir: Path | None = None
    listener: ListenAddress = parse_listen_address(DEFAULT_LISTENER)
    domains: tuple[str, ...] = ()
    transport_map: str = ""
    relay_restrictions: str = "reject_unauth_destination"
    recipient_restrictions: str = ""
    smtp_tls_security_level: str = "none"
    wrapper_path: Path | None = None
    torsocks: str = "torsocks"
    torsocks_isolation: bool = False
    socks: ListenAddress = parse_listen_address(DEFAULT_SOCKS)
    torsocks_conf: Path = Path("/etc/onion-gateway/torsocks.conf")
    tor_control: ListenAddress = ListenAddress(path="/run/tor/control")
    tor_control_password_file: Path | None = None
    torrc: Path | None = Path("/etc/tor/torrc")
    torrc_piece: Path = Path("/etc/tor/onion-gateway.torrc")
    tor_defaults_torrc: Path | None = Path("/usr/share/tor/tor-service-defaults-torrc")
    hidden_service_dir: Path = Path("/var/lib/tor/onion-gateway")
    onion_port: int = 25
    systemd_unit: Path | None = Path("/etc/systemd/system/onion-gateway.service")
    serve_config: Path = Path("/etc/onion-gateway/onion-gateway.toml")
    serve_command: str = ""
    state_dir: Path = DEFAULT_STATE_DIR
    reload: bool = True
    srv_ttl_seconds: int = 3600
    srv_priority: int = 10
    srv_weight: int = 5
    export_circuit_id: bool = True
    onion_max_streams: int = 64
    onion_max_streams_close_circuit: bool = True
    onion_pow_defenses: bool = True
    onion_intro_dos_defense: bool = True
    tor_metrics_port: ListenAddress | None = None
    listener_connection_count_limit: int = 30
    listener_connection_rate_limit: int = 3600


_SETUP_KEYS = frozenset(f.name for f in fields(SetupSettings))
_OPTIONAL_PATHS = ("postfix_config_dir", "wrapper_path", "tor_control_password_file", "torrc",
                   "tor_defaults_torrc", "systemd_unit")
_PATHS = ("torsocks_conf", "torrc_piece", "hidden_service_dir", "serve_config", "state_dir")


def setup_settings(file_table: Mapping[str, Any] | None = None,
                   overrides: Mapping[str, Any] | None = None,
                   base_dir: Path | None = None) -> SetupSettings:
    """Build :class:`SetupSettings` from the config file's ``[setup]`` table and command-line overrides.

    :param file_table: the ``[setup]`` table (or ``None``).
    :param overrides: command-line values with the same keys; ``None`` values are ignored.
    :param base_dir: the directory relative paths in the file are taken from (the file's directory).
    :returns: validated, frozen settings.
    :raises ConfigError: on an unknown key or a bad value, named ``setup.<key>``.
    """
    kwargs: dict[str, Any] = {}
    for source, relative_to in ((file_table or {}), base_dir), ((overrides or {}), None):
        for key, value in source.items():
            if key not in _SETUP_KEYS:
                raise ConfigError(f"setup.{key}: unknown setting")
            if value is not None:
                kwargs[key] = _convert(key, value, relative_to)
    settings = SetupSettings(**kwargs)
    check_onion_limits(settings)
    return settings


def check_onion_limits(settings: SetupSettings) -> None:
    """Refuse limits that would turn a legitimate sender away (docs/onion-path.md, "Limits").

    One sending gateway reaches us over one rendezvous circuit, so its destination concurrency is the
    number of connections that circuit carries at once: it must fit under the listener's per-circuit
    count limit, and that limit under Tor's per-circuit stream cap (else Tor closes the circuit, and
    every delivery on it fails, before Postfix could answer with a polite 421).

    :param settings: the settings to check.
    :raises ConfigError: naming the keys whose values do not fit together.
    """
    concurrency = SENDER_CONCURRENCY
    count = settings.listener_connection_count_limit
    streams = settings.onion_max_streams
    if settings.export_circuit_id and count and concurrency > count:
        raise ConfigError(f"setup.listener_connection_count_limit: {count} is below {concurrency}, the destination "
                          "concurrency of a default Postfix sender: its deliveries would be refused with 421")
    if streams and settings.export_circuit_id and (not count or count >= streams):
        raise ConfigError(f"setup.onion_max_streams: {streams} must be above setup.listener_connection_count_limit "
                          f"({count or 'unlimited'}): Tor would close the sender's circuit before Postfix answers 421")
    if streams and concurrency >= streams:
        raise ConfigError(f"setup.onion_max_streams: {streams} must be above {concurrency}, the destination "
                          "concurrency of a default Postfix sender")


def _path(where: str, value: Any, base_dir: Path | None) -> Path:
    if not isinstance(value, (str, Path)) or not str(value):
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    path = Path(value)
    return path if path.is_absolute() or base_dir is None else base_dir / path


def _convert(key: str, value: Any, base_dir: Path | None) -> Any:
    where = f"setup.{key}"
    if key in _OPTIONAL_PATHS:
        return None if value == "" else _path(where, value, base_dir)
    if key in _PATHS:
        return _path(where, value, base_dir)
    if key in ("listener", "socks"):
        address = parse_listen_address(str(value), where)
        if address.is_unix:
            raise ConfigError(f"{where}: expected IP:PORT, got {value!r}")
        if not address.port:
            raise ConfigError(f"{where}: port 0 is not a real port")
        if key == "listener" and not (address.host or "").startswith("127.") and address.host != "::1":
            raise ConfigError(f"{where}: the onion-facing listener must be on loopback, got {value!r}")
        return address
    if key == "tor_control":
        return parse_listen_address(str(value), where)
    if key == "tor_metrics_port":
        if value == "":
            return None
        address = parse_listen_address(str(value), where)
        if address.is_unix or not address.port or not ((address.host or "").startswith("127.") or address.host == "::1"):
            raise ConfigError(f"{where}: expected IP:PORT on loopback (tor's metrics are not for the network), "
                              f"got {value!r}")
        return address
    if key == "domains":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of domains")
        domains: list[str] = []
        for item in items:
            for word in str(item).replace(",", " ").split():
                domain = word.lower().rstrip(".")
                if not _DOMAIN.match(domain):
                    raise ConfigError(f"{where}: {word!r} is not a domain name")
                if domain not in domains:
                    domains.append(domain)
        return tuple(domains)
    if key in ("relay_restrictions", "recipient_restrictions"):
        words = [w for w in str(value).replace(",", " ").split() if w]
        if (not words and key == "relay_restrictions") or \
                not all(re.fullmatch(r"[A-Za-z0-9_:./-]+", w) for w in words):
            raise ConfigError(f"{where}: expected smtpd restriction names, got {value!r}")
        return ",".join(words)
    if key == "smtp_tls_security_level":
        if value not in TLS_LEVELS:
            raise ConfigError(f"{where}: expected one of {', '.join(TLS_LEVELS)}, got {value!r}")
        return value
    if key in ("transport_map", "torsocks", "serve_command"):
        if not isinstance(value, str) or any(c in value for c in "\n\r\"'`$\\"):
            raise ConfigError(f"{where}: expected a plain string without quotes, $ or newlines, got {value!r}")
        return value.strip()
    if key in ("torsocks_isolation", "reload", "export_circuit_id", "onion_max_streams_close_circuit",
               "onion_pow_defenses", "onion_intro_dos_defense"):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
        return value
    if key in ("onion_max_streams", "listener_connection_count_limit", "listener_connection_rate_limit"):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
            raise ConfigError(f"{where}: expected a whole number from 0 to 65535, got {value!r}")
        return value
    if key in ("onion_port", "srv_ttl_seconds", "srv_priority", "srv_weight"):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= (
                2**31 - 1 if key == "srv_ttl_seconds" else 65535):
            raise ConfigError(f"{where}: expected a whole number in range, got {value!r}")
        if key == "onion_port" and value == 0:
            raise ConfigError(f"{where}: port 0 is not a real port")
        return value
    raise ConfigError(f"{where}: unknown setting")  # pragma: no cover - guarded by _SETUP_KEYS


def daemon_table(protocol: str, address: ListenAddress, name: str | None = None) -> str:
    """The one function that names a lookup daemon's listener as a Postfix table.

    :param protocol: ``"tcp_table"`` (tcp_table(5)) or ``"socketmap"`` (socketmap_table(5)).
    :param address: the listener; an IPv6 host is written in brackets (``[::1]:6014``).
    :param name: the socketmap name (``onion``); ``None`` leaves it off (a prefix to match tables by).
    :returns: ``tcp:HOST:PORT``, ``socketmap:inet:HOST:PORT:NAME`` or ``socketmap:unix:PATH:NAME``.
    :raises ConfigError: for a tcp_table on a unix socket (Postfix's tcp: client speaks TCP only).
    """
    if protocol == "tcp_table":
        if address.is_unix:
            raise ConfigError(f"tcp_table on {address}: Postfix's tcp: table needs a TCP address")
        return f"tcp:{address}"
    table = f"socketmap:unix:{address.path}" if address.is_unix else f"socketmap:inet:{address}"
    return table if name is None else f"{table}:{name}"


def default_transport_map(serve: ServeSettings) -> str:
    """The Postfix table that asks the ``serve`` daemon, from its listeners.

    socketmap is preferred: when the daemon is down Postfix fails at once (tcp_table retries for 10 s).

    :param serve: the daemon's settings.
    :returns: e.g. ``"socketmap:inet:127.0.0.1:6014:onion"``, ``"socketmap:inet:[::1]:6014:onion"`` or
        ``"tcp:127.0.0.1:6013"``.
    :raises ConfigError: when the daemon has no listener.
    """
    for address in serve.socketmap:
        return daemon_table("socketmap", address, next(iter(sorted(serve.socketmap_names)), "onion"))
    for address in serve.tcp_table:
        if not address.is_unix:
            return daemon_table("tcp_table", address)
    raise ConfigError("serve: no socketmap or TCP tcp_table listener for Postfix to ask")


def parse_daemon_table(table: str) -> tuple[str, ListenAddress, str | None]:
    """The inverse of :func:`daemon_table`: ``(protocol, address, socketmap name or None)``.

    :raises ConfigError: when *table* is not a tcp: or socketmap: table.
    """
    if table.startswith("tcp:"):
        return "tcp_table", parse_listen_address(table[len("tcp:"):], "transport_map"), None
    if table.startswith("socketmap:unix:"):
        path, _, name = table[len("socketmap:unix:"):].rpartition(":")
        return "socketmap", ListenAddress(path=path), name or None
    if table.startswith("socketmap:inet:"):
        rest, _, name = table[len("socketmap:inet:"):].rpartition(":")
        return "socketmap", parse_listen_address(rest, "transport_map"), name or None
    raise ConfigError(f"transport_map {table!r} is not a tcp: or socketmap: table of the lookup daemon")
