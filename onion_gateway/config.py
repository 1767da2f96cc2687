"""Settings for onion-gateway: defaults in one place, one TOML loader, errors as dotted paths.

The config file (``examples/onion-gateway.toml`` documents every key) has one table per command::

    [serve]
    tcp_table = ["127.0.0.1:6013"]
    socketmap = ["127.0.0.1:6014"]
    dns_servers = ["127.0.0.1:53"]
    ...

Command-line flags override the file: the CLI passes them as a mapping to :func:`serve_settings`,
layered over the file's ``[serve]`` table.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from onion_gateway.address import ListenAddress, parse_listen_address, split_host_port
from onion_gateway.errors import ConfigError

DEFAULT_TCP_TABLE = "127.0.0.1:6013"     # postfix-onion-transport's port, kept for drop-in use
DEFAULT_SOCKETMAP = "127.0.0.1:6014"
DEFAULT_DNS_PORT = 53


def parse_dns_server(text: str, where: str = "dns_servers") -> tuple[str, int]:
    """Parse a DNS server as ``IP``, ``IP:PORT``, ``[IPV6]:PORT`` or a bare IPv6 address.

    :returns: ``(ip, port)``; the port defaults to 53.
    :raises ConfigError: if the host is not an IP address (dnspython needs addresses) or the port is bad.
    """
    try:
        return str(ipaddress.ip_address(text)), DEFAULT_DNS_PORT
    except ValueError:
        pass
    return split_host_port(text, where, default_port=DEFAULT_DNS_PORT)


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Everything ``serve`` and ``lookup`` need. Field names are the ``[serve]`` keys of the config file.
    The defaults here are the only ones: the cache policy and the connection limits take theirs from it.

    :param tcp_table: tcp_table(5) listeners.
    :param socketmap: socketmap_table(5) listeners.
    :param dns_servers: ``(ip, port)`` resolvers to ask; empty means the system resolver (resolv.conf).
    :param service: the SRV service label: ``_<service>._tcp.<domain>``.
    :param transport: the Postfix transport (master.cf service name) put in front of the nexthops.
    :param exclude_domains: domains never routed to an onion (no DNS query for them).
    :param exclude_domains_file: a file of more such domains, one per line (re-read on SIGHUP).
    :param exclude_subdomains: also exclude subdomains of excluded domains.
    :param static_map: a file in onionmx ``tor_transport`` form (``domain  smtptor:[x.onion]:25``),
        answered before DNS (re-read on SIGHUP).
    :param static_routes: the same as a TOML table ``domain = "value"``.
    :param dns_timeout_seconds: the whole budget of one SRV lookup (seconds); past it: temporary failure.
    :param max_nexthops: the most onion nexthops put in one answer.
    :param socketmap_names: socketmap NAMEs accepted; empty accepts any name.
    :param idle_timeout_seconds: close a client connection idle this long (seconds).
    :param request_deadline_seconds: a request must arrive whole within this time of its first byte
        (seconds); a slower sender gets a protocol error and its connection is closed.
    :param max_connections: connections served at once; past it the connection idle longest is closed.
    :param tcp_max_request_bytes: the longest tcp_table request line (bytes).
    :param socketmap_max_request_bytes: the largest socketmap netstring (bytes, at most 10,000).
    :param unix_socket_mode: permission bits of unix-socket listeners (e.g. ``0o660``).
    :param unix_socket_group: group that owns unix-socket listeners (``postfix``), or ``None``.
    :param exclude_postfix_domains: also exclude the domains Postfix itself serves (mydestination,
        virtual_mailbox_domains, virtual_alias_domains, relay_domains), read at start and on SIGHUP.
    :param postfix_config_dir: the Postfix configuration directory to read them from (``None``: default).
    :param own_onions: this gateway's own onion addresses; never routed to (mail would loop back).
    :param require_dnssec: use SRV answers only when the resolver marked them authenticated (AD bit).
    :param pins_file: sqlite file of onion pins, written in batches (``None``: pins kept in memory only;
        a version-1 JSON pins file is converted in place).
    :param pinning: ``"off"``, ``"warn"`` (log and follow a changed onion set) or ``"strict"`` (hold it
        as a temporary failure until ``pins accept``).
    :param strict_pinning_domains: domains pinned strictly whatever ``pinning`` says.
    :param user: drop privileges to this user after binding (non-systemd starts as root), or ``None``.
    :param group: ... and to this group (default: the user's primary group).
    :param cache_max_entries: domains kept in the route cache (an approximate LRU beyond it, see
        docs/daemon.md); pins are kept in the cache entries and evicted with them; 0 disables the cache.
    :param cache_min_ttl_seconds: the shortest time any answer is cached (seconds; raises low DNS TTLs).
    :param cache_max_ttl_seconds: the longest time a found route is cached (seconds).
    :param cache_negative_max_ttl_seconds: the longest time a "no onion route" answer is cached (seconds).
    :param cache_temp_fail_ttl_seconds: how long a DNS failure is cached (seconds); 0 = not cached.
    :param cache_prefetch: refresh entries in use during the last 10 % of their TTL.
    :param cache_serve_stale_seconds: answer an entry up to this long after expiry when DNS fails
        (seconds, RFC 8767); 0 = off.
    :param cache_file: sqlite file the cache is saved to and loaded from at start; ``None`` = no persistence.
    :param cache_save_interval_seconds: how often a changed cache is saved while running (seconds).
    :param metrics_address: ``host:port`` for ``/metrics`` and ``/healthz``; ``None`` = no endpoint.
    :param health_metrics_interval_seconds: with metrics on, compute the onion delivery health gauges
        (deferred onion mail, last delivery, Tor's circuits; docs/health.md) at most this often (seconds);
        0 = no health gauges.
    :param health_tor_control: Tor's control address (``HOST:PORT`` or ``unix:PATH``) for the
        circuit-established gauge; ``None`` = the one setup recorded, if any (docs/health.md).
    :param health_tor_control_password_file: a file holding that control port's password
        (HashedControlPassword), read at each computation; ``None`` = cookie or no authentication.
    :param health_setup_state_dir: setup's state directory, whose record names Tor's control address
        when ``health_tor_control`` is not set; ``None`` = ``[setup] state_dir`` of the same config file,
        else setup's default (/var/lib/onion-gateway-setup).
    """

    tcp_table: tuple[ListenAddress, ...] = (parse_listen_address(DEFAULT_TCP_TABLE),)
    socketmap: tuple[ListenAddress, ...] = (parse_listen_address(DEFAULT_SOCKETMAP),)
    dns_servers: tuple[tuple[str, int], ...] = ()
    service: str = "onion-mx"
    transport: str = "smtptor"
    exclude_domains: frozenset[str] = field(default_factory=frozenset)
    exclude_domains_file: Path | None = None
    exclude_subdomains: bool = False
    static_map: Path | None = None
    static_routes: Mapping[str, str] = field(default_factory=dict)
    dns_timeout_seconds: float = 10.0
    max_nexthops: int = 10
    socketmap_names: frozenset[str] = field(default_factory=frozenset)
    idle_timeout_seconds: float = 300.0
    request_deadline_seconds: float = 10.0
    max_connections: int = 1000
    tcp_max_request_bytes: int = 4096
    socketmap_max_request_bytes: int = 10_000
    exclude_postfix_domains: bool = True
    postfix_config_dir: Path | None = None
    own_onions: frozenset[str] = field(default_factory=frozenset)
    require_dnssec: bool = False
    pins_file: Path | None = None
    pinning: str = "warn"
    strict_pinning_domains: frozenset[str] = field(default_factory=frozenset)
    unix_socket_mode: int = 0o660
    unix_socket_group: str | None = None
    user: str | None = None
    group: str | None = None
    cache_max_entries: int = 100_000
    cache_min_ttl_seconds: float = 30.0
    cache_max_ttl_seconds: float = 3600.0
    cache_negative_max_ttl_seconds: float = 900.0
    cache_temp_fail_ttl_seconds: float = 0.0
    cache_prefetch: bool = True
    cache_serve_stale_seconds: float = 0.0
    cache_file: Path | None = None
    cache_save_interval_seconds: float = 300.0
    metrics_address: ListenAddress | None = None
    health_metrics_interval_seconds: float = 60.0
    health_tor_control: ListenAddress | None = None
    health_tor_control_password_file: Path | None = None
    health_setup_state_dir: Path | None = None


_SERVE_KEYS = frozenset(f.name for f in fields(ServeSettings))
_DAY_SECONDS = 86_400.0
# cache durations: (lowest, highest) accepted value in seconds
_CACHE_SECONDS = {
    "cache_min_ttl_seconds": (0.0, _DAY_SECONDS),
    "cache_max_ttl_seconds": (0.0, 7 * _DAY_SECONDS),
    "cache_negative_max_ttl_seconds": (0.0, 7 * _DAY_SECONDS),
    "cache_temp_fail_ttl_seconds": (0.0, 300.0),
    "cache_serve_stale_seconds": (0.0, 7 * _DAY_SECONDS),
    "cache_save_interval_seconds": (1.0, _DAY_SECONDS),
}


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file.

    :param path: the file.
    :returns: the parsed document as nested dicts.
    :raises ConfigError: if the file cannot be read or is not valid TOML (the message names the file).
    """
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def serve_settings(file_table: Mapping[str, Any] | None = None,
                   overrides: Mapping[str, Any] | None = None,
                   base_dir: Path | None = None) -> ServeSettings:
    """Build :class:`ServeSettings` from the config file's ``[serve]`` table and command-line overrides.

    :param file_table: the ``[serve]`` table of the config file (or ``None``).
    :param overrides: values from the command line, same keys; ``None`` values are ignored.
    :param base_dir: directory that relative file paths in the config file are taken from.
    :returns: validated, frozen settings.
    :raises ConfigError: on an unknown key or a bad value, naming it as ``serve.<key>``.
    """
    merged = layered("serve", _SERVE_KEYS, file_table, overrides)
    kwargs: dict[str, Any] = {}
    for key, value in merged.items():
        kwargs[key] = _convert(key, value, base_dir)
    settings = ServeSettings(**kwargs)
    if settings.cache_min_ttl_seconds > min(settings.cache_max_ttl_seconds, settings.cache_negative_max_ttl_seconds):
        raise ConfigError("serve.cache_min_ttl_seconds: must not exceed cache_max_ttl_seconds or "
                          "cache_negative_max_ttl_seconds")
    return settings


def layered(table: str, keys: Iterable[str], file_table: Mapping[str, Any] | None,
            overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """One config table: the file's values, then the command line's over them (``None`` = not given).

    :param table: the table's name, for errors (``serve``, ``health``).
    :param keys: the keys the table may have.
    :param file_table: the table as read from the TOML file (or ``None``).
    :param overrides: command-line values with the same keys (or ``None``).
    :returns: ``{key: value}`` of every key given, unconverted.
    :raises ConfigError: on an unknown key (``table.key: unknown setting``) or a table that is no table.
    """
    allowed = frozenset(keys)
    merged: dict[str, Any] = {}
    for source in (file_table or {}), (overrides or {}):
        if not isinstance(source, Mapping):
            raise ConfigError(f"{table}: expected a table")
        for key, value in source.items():
            if key not in allowed:
                raise ConfigError(f"{table}.{key}: unknown setting")
            if value is not None:
                merged[key] = value
    return merged


def _as_list(key: str, value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    raise ConfigError(f"serve.{key}: expected a string or a list of strings")


def _convert(key: str, value: Any, base_dir: Path | None) -> Any:
    where = f"serve.{key}"
    if key in ("tcp_table", "socketmap"):
        return tuple(parse_listen_address(str(v), where) for v in _as_list(key, value))
    if key == "dns_servers":
        return tuple(parse_dns_server(str(v), where) for v in _as_list(key, value))
    if key == "own_onions":
        from onion_gateway.onion import OnionCheck, check_onion, normalize_onion
        onions = []
        for v in _as_list(key, value):
            if check_onion(str(v)) is not OnionCheck.VALID:
                raise ConfigError(f"{where}: {v!r} is not a valid v3 onion address")
            onions.append(normalize_onion(str(v)))
        return frozenset(onions)
    if key == "pinning":
        if value not in ("off", "warn", "strict"):
            raise ConfigError(f"{where}: expected \"off\", \"warn\" or \"strict\", got {value!r}")
        return value
    if key in ("exclude_domains", "socketmap_names", "strict_pinning_domains"):
        items: list[str] = []
        for v in _as_list(key, value):
            items.extend(p for p in str(v).replace(",", " ").split() if p)
        return frozenset(items) if key == "socketmap_names" else frozenset(i.lower().rstrip(".") for i in items)
    if key == "metrics_address":
        address = parse_listen_address(str(value), where)
        if address.is_unix:
            raise ConfigError(f"{where}: expected HOST:PORT (HTTP), got {value!r}")
        return address
    if key == "health_tor_control":
        return parse_listen_address(str(value), where)
    if key == "health_metrics_interval_seconds":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value == 0 or 1 <= value <= _DAY_SECONDS):
            raise ConfigError(f"{where}: expected 0 (off) or 1 to {_DAY_SECONDS:g} seconds, got {value!r}")
        return float(value)
    if key in _CACHE_SECONDS:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number of seconds, got {value!r}") from None
        low, high = _CACHE_SECONDS[key]
        if isinstance(value, bool) or not low <= number <= high:
            raise ConfigError(f"{where}: must be between {low:g} and {high:g} seconds, got {value!r}")
        return number
    if key == "cache_max_entries":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000_000:
            raise ConfigError(f"{where}: expected a whole number from 0 (off) to 10000000, got {value!r}")
        return value
    if key in ("exclude_domains_file", "static_map", "postfix_config_dir", "pins_file", "cache_file",
               "health_tor_control_password_file", "health_setup_state_dir"):
        path = Path(str(value))
        return path if path.is_absolute() or base_dir is None else base_dir / path
    if key == "static_routes":
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{where}: expected a table of domain = \"transport:nexthop\"")
        return dict(value)
    if key == "unix_socket_mode":
        text = str(value)
        try:
            mode = int(text, 8) if isinstance(value, str) else int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an octal mode such as \"0660\", got {value!r}") from None
        if not 0 <= mode <= 0o777:
            raise ConfigError(f"{where}: mode out of range: {value!r}")
        return mode
    if key in ("unix_socket_group", "user", "group"):
        if not isinstance(value, str) or not value or any(c.isspace() or c == ":" for c in value):
            raise ConfigError(f"{where}: expected a user or group name, got {value!r}")
        return value
    if key in ("service", "transport"):
        if not isinstance(value, str) or not value or any(c.isspace() or c in ":[]" for c in value):
            raise ConfigError(f"{where}: expected a name without spaces, ':' or brackets, got {value!r}")
        return value
    if key in ("exclude_subdomains", "exclude_postfix_domains", "require_dnssec", "cache_prefetch"):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
        return value
    if key in ("dns_timeout_seconds", "idle_timeout_seconds", "request_deadline_seconds"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number of seconds, got {value!r}") from None
        if not 0 < number <= 3600:
            raise ConfigError(f"{where}: must be between 0 and 3600 seconds, got {number}")
        if key == "dns_timeout_seconds" and number >= 100:
            raise ConfigError(f"{where}: must stay under Postfix's 100 s table timeout, got {number}")
        return number
    if key in ("max_nexthops", "max_connections", "tcp_max_request_bytes", "socketmap_max_request_bytes"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: expected a positive whole number, got {value!r}")
        if key == "socketmap_max_request_bytes" and value > 10_000:
            raise ConfigError(f"{where}: socketmap_table(5) requests are at most 10000 bytes")
        return value
    raise ConfigError(f"{where}: unknown setting")  # pragma: no cover - guarded by _SERVE_KEYS


def read_domain_list(path: Path) -> frozenset[str]:
    """Read a file of domains, one or more per line, ``#`` starting a comment.

    :returns: the lower-cased domains without trailing dots.
    :raises ConfigError: if the file cannot be read.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read domain list {path}: {exc}") from exc
    return frozenset(_domains_in(text.splitlines()))


def _domains_in(lines: Iterable[str]) -> Iterable[str]:
    for line in lines:
        for word in line.split("#", 1)[0].split():
            yield word.lower().rstrip(".")


def read_static_map(path: Path) -> dict[str, str]:
    """Read a static map in onionmx ``tor_transport`` form: ``KEY  VALUE`` per line, ``#`` comments.

    Example line: ``example.org   smtptor:[abc...xyz.onion]:25``. A KEY starting with ``.`` matches
    subdomains, as in transport(5).

    :returns: ``{key: value}`` with keys lower-cased and without trailing dots.
    :raises ConfigError: if the file cannot be read or a line has no value (with the line number).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read static map {path}: {exc}") from exc
    table: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        parts = content.split(None, 1)
        if len(parts) != 2:
            raise ConfigError(f"{path}:{number}: expected 'domain  transport:nexthop', got {content!r}")
        table[parts[0].lower().rstrip(".")] = parts[1].strip()
    return table
