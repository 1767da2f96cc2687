"""Health checks behind ``onion-gateway status``: is every piece of the onion route in place and answering?

Each check returns a :class:`Check` (a :class:`Verdict` plus one line of detail) and never raises for
the thing it inspects: an unreachable Tor, a silent daemon or a missing SRV record is a ``FAIL``
verdict, not an exception. :func:`run_status` runs the checks a :class:`StatusSettings` asks for, in
the order mail uses them::

    check            asks                                                           source
    tor_control      AUTHENTICATE, GETINFO status/bootstrap-phase, net/listeners/socks  control-spec.txt §3.9, §4.1.10
    onion_service    GETINFO hs/service/desc/id/<id> (served here), HSFETCH <id>    control-spec.txt §3.26, §4.1.25
                     answered by an HSDir (published)
    map_listener     one real lookup of "*" (answered without DNS) per listener     tcp_table(5), socketmap_table(5)
    srv_record       _<service>._tcp.<domain>. IN SRV through the daemon's resolvers  RFC 2782, rend-spec-v3 §6
    transport_maps   postconf -hx transport_maps names one of the daemon's listeners  postconf(5) transport_maps
    smtptor_service  postconf -M <transport>/unix exists, its command (the smtp_tor  master(5), postconf(5)
                     wrapper) is an executable file; effective
                     smtp_dns_support_level=disabled and smtp_host_lookup=native
    relay_audit      the relay audit of every onion-facing listener the torrc names  (README.md, Relay audit)
                     (static analysis + live probes, never DATA): safe
    tor_circuits, smtptor_queue, partner_queue, partner_onion, smtptor_delivery:    docs/health.md
                     onion delivery health (postqueue -j, Postfix's log, GETINFO
                     status/circuit-established, HSFETCH); :func:`check_delivery_health`

The Tor questions go through :mod:`onion_gateway.tor` (the only module importing stem).
Nothing here prints: the CLI formats the report.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onion_gateway import postfix
from onion_gateway.address import ListenAddress
from onion_gateway.config import ServeSettings
from onion_gateway.errors import PostfixError, TorError
from onion_gateway.onion import OnionCheck, check_onion, normalize_onion

log = logging.getLogger(__name__)

DEFAULT_TOR_CONTROL = ListenAddress(path="/run/tor/control")     # Debian's ControlSocket, setup's default
PROBE_KEY = "*"                     # routing answers "*" as not found without asking DNS
PROBE_TIMEOUT_SECONDS = 5.0
DEFAULT_SOCKETMAP_NAME = "onion"
_TCP_REPLY = re.compile(rb"^(200|400|500) ")
_SOCKETMAP_STATUS = ("OK", "NOTFOUND", "TEMP", "TIMEOUT", "PERM")


class Verdict(enum.Enum):
    """How one check went. Ordered: a report is as bad as its worst check."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        """0 for OK, 1 for WARN, 2 for FAIL."""
        return list(Verdict).index(self)


@dataclass(frozen=True, slots=True)
class Check:
    """The result of one check.

    :param name: the check (``"tor_control"``, ``"map_listener"``, ``"srv_record"``, ...).
    :param target: what was checked (``"127.0.0.1:9051"``, ``"socketmap 127.0.0.1:6014"``, a domain).
    :param verdict: the :class:`Verdict`.
    :param detail: one line for a human: what was found, or why it failed.
    :param suggestion: for a non-OK verdict, one line of what to do about it (``""`` when there is none).
    """

    name: str
    target: str
    verdict: Verdict
    detail: str
    suggestion: str = ""


@dataclass(frozen=True, slots=True)
class StatusReport:
    """All checks of one ``status`` run, in the order they ran."""

    checks: tuple[Check, ...]

    @property
    def verdict(self) -> Verdict:
        """The worst verdict (``OK`` for an empty report)."""
        return max((c.verdict for c in self.checks), key=lambda v: v.rank, default=Verdict.OK)

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings allowed)."""
        return self.verdict is not Verdict.FAIL


@dataclass(frozen=True)
class StatusSettings:
    """What ``status`` checks.

    :param serve: the daemon's settings: its listeners, resolvers, SRV service label and transport name.
    :param tor_control: Tor's control address (``IP:PORT`` or ``unix:PATH``) whose SocksPort carries
        smtptor; ``None`` skips the Tor check.
    :param tor_password: control-port password; ``None`` uses cookie (or no) authentication.
    :param postfix_config_dir: the Postfix configuration directory (``None`` = the default instance);
        checked only when *check_postfix* is true.
    :param check_postfix: run the transport_maps and smtptor checks.
    :param domains: domains whose SRV record must point at *onion*.
    :param onion: the onion address those records must name; ``None`` accepts any valid v3 target.
    :param timeout_seconds: budget of each network check (seconds).
    :param audit_torrc: the torrc whose ``HiddenServicePort`` lines name the onion-facing listeners to
        audit for open relaying; ``None`` skips the audit.
    :param audit_test_domain: the foreign domain the audit's probes try to relay to.
    :param audit_record: setup's :class:`~onion_gateway.setup.state.SetupRecord`: its listener is
        audited instead of the torrc's (no torrc needed).
    :param health: onion delivery health settings (a :class:`onion_gateway.health.report.HealthSettings`:
        thresholds, log source); ``None`` skips those checks. They run only with *check_postfix*.
    """

    serve: ServeSettings = field(default_factory=ServeSettings)
    tor_control: ListenAddress | None = DEFAULT_TOR_CONTROL
    tor_password: str | None = None
    postfix_config_dir: Path | None = None
    check_postfix: bool = True
    domains: tuple[str, ...] = ()
    onion: str | None = None
    timeout_seconds: float = PROBE_TIMEOUT_SECONDS
    audit_torrc: Path | None = None
    audit_test_domain: str = "example.com"
    audit_record: object | None = None
    health: Any = None


# --- Tor -------------------------------------------------------------------------------------------------


def check_tor(address: ListenAddress, password: str | None = None,
              timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> Check:
    """Is the Tor control port reachable and Tor fully bootstrapped?

    :param address: the control address, ``IP:PORT`` or ``unix:PATH``.
    :param password: control-port password, or ``None`` for cookie/no authentication.
    :param timeout_seconds: connect budget (seconds).
    :returns: ``OK`` at 100 %, ``FAIL`` below it or when the port does not answer. A bootstrapped Tor
        without a SocksPort is ``WARN`` (the smtptor transport needs one).
    """
    from onion_gateway.tor import bootstrap_status

    target = str(address)
    try:
        status = bootstrap_status(address, password, timeout_seconds)
    except TorError as exc:
        return Check("tor_control", target, Verdict.FAIL, str(exc))
    detail = f"tor {status.version}, bootstrapped {status.progress}% ({status.summary})"
    if status.progress < 100:
        return Check("tor_control", target, Verdict.FAIL, detail)
    if not status.socks_listeners:
        return Check("tor_control", target, Verdict.WARN, detail + "; no SocksPort listener")
    return Check("tor_control", target, Verdict.OK, detail + f"; SocksPort {', '.join(status.socks_listeners)}")


def check_onion_service(address: ListenAddress, onion: str, password: str | None = None,
                        timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> Check:
    """Does the Tor at *address* serve *onion*, and is its descriptor on the network?

    :param address: the control address, ``IP:PORT`` or ``unix:PATH``.
    :param onion: this gateway's onion address.
    :param password: control-port password, or ``None`` for cookie/no authentication.
    :param timeout_seconds: budget of the control connection and of the descriptor fetch (seconds).
    :returns: ``OK`` when an HSDir returned the descriptor; ``FAIL`` when this Tor does not serve the
        address, the fetch failed or timed out, or the control port does not answer.
    """
    from onion_gateway.tor import onion_service_status

    target = normalize_onion(onion)
    try:
        state = onion_service_status(address, target, password, timeout_seconds)
    except TorError as exc:
        return Check("onion_service", target, Verdict.FAIL, str(exc))
    verdict = Verdict.OK if state.hosted and state.published else Verdict.FAIL
    prefix = "published: " if verdict is Verdict.OK else ("not published: " if state.hosted else "")
    return Check("onion_service", target, verdict, prefix + state.detail)


# --- the daemon's listeners --------------------------------------------------------------------------------


def check_map_listener(address: ListenAddress, protocol: str, socketmap_name: str = DEFAULT_SOCKETMAP_NAME,
                       timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> Check:
    """Send one real lookup of ``*`` to a daemon listener and judge the reply's framing.

    Wire (tcp_table(5) / socketmap_table(5))::

        get *\\n          ->  500 not%20found\\n
        7:onion *,       ->  9:NOTFOUND ,

    :param address: the listener (TCP or unix socket).
    :param protocol: ``"tcp_table"`` or ``"socketmap"``.
    :param socketmap_name: the socketmap NAME to send (one the daemon accepts).
    :param timeout_seconds: connect + reply budget (seconds).
    :returns: ``OK`` for a well-formed reply, ``FAIL`` for no connection, no reply or a garbled one.
    :raises ValueError: for an unknown *protocol* (a programming error).
    """
    if protocol == "tcp_table":
        request = f"get {PROBE_KEY}\n".encode()
    elif protocol == "socketmap":
        payload = f"{socketmap_name} {PROBE_KEY}".encode()
        request = b"%d:%s," % (len(payload), payload)
    else:
        raise ValueError(f"unknown map protocol {protocol!r}")
    target = f"{protocol} {address}"
    started = time.monotonic()
    try:
        reply = _exchange(address, request, protocol, timeout_seconds)
    except OSError as exc:
        return Check("map_listener", target, Verdict.FAIL, f"no answer: {exc.strerror or exc}")
    elapsed_ms = (time.monotonic() - started) * 1000
    text = reply.decode("ascii", errors="replace").strip()
    if protocol == "tcp_table":
        good = bool(_TCP_REPLY.match(reply)) and reply.endswith(b"\n")
    else:
        body = _netstring_payload(reply)
        good = body is not None and body.split(" ", 1)[0] in _SOCKETMAP_STATUS
    if not good:
        return Check("map_listener", target, Verdict.FAIL, f"not a {protocol} reply: {text[:80]!r}")
    return Check("map_listener", target, Verdict.OK, f"answered {text[:80]!r} in {elapsed_ms:.0f} ms")


def _exchange(address: ListenAddress, request: bytes, protocol: str, timeout_seconds: float) -> bytes:
    """Send *request*, read one reply (a line, or one netstring). :raises OSError: on any socket trouble."""
    if address.is_unix:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = address.path
    else:
        family = socket.AF_INET6 if ":" in (address.host or "") else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        target = (address.host, address.port)
    with sock:
        sock.settimeout(timeout_seconds)
        sock.connect(target)
        sock.sendall(request)
        reply = b""
        deadline = time.monotonic() + timeout_seconds
        while not _reply_complete(reply, protocol):
            if time.monotonic() > deadline:
                raise TimeoutError("reply incomplete")
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply


def _reply_complete(reply: bytes, protocol: str) -> bool:
    if protocol == "tcp_table":
        return reply.endswith(b"\n")
    return _netstring_payload(reply) is not None


def _netstring_payload(data: bytes) -> str | None:
    """The payload of one complete netstring ``LEN:DATA,``, or ``None`` if incomplete or malformed."""
    length, colon, rest = data.partition(b":")
    if not colon or not length.isdigit() or len(rest) < int(length) + 1 or rest[int(length):int(length) + 1] != b",":
        return None
    return rest[: int(length)].decode("utf-8", errors="replace")


# --- DNS -----------------------------------------------------------------------------------------------------


def check_srv(domain: str, expected_onion: str | None, serve: ServeSettings,
              timeout_seconds: float | None = None) -> Check:
    """Does ``_<service>._tcp.<domain>`` have an SRV record naming *expected_onion*?

    Asked through the same resolvers the daemon uses (``serve.dns_servers``; none = the system's).

    :param domain: the mail domain (A-label or U-label).
    :param expected_onion: the onion the record must name, or ``None`` to accept any valid v3 target.
    :param serve: the daemon's settings (resolvers, SRV service label, DNS timeout).
    :param timeout_seconds: DNS budget (seconds); default the daemon's ``dns_timeout_seconds``.
    :returns: ``OK`` when a record names the onion; ``FAIL`` for no record, another target, or a DNS
        failure (a record that cannot be read cannot be confirmed).
    """
    from onion_gateway.lookup.dns import DnsStatus, SrvResolver
    from onion_gateway.lookup.routing import Router, RoutingTable, normalize_domain

    normal = normalize_domain(domain)
    if normal is None:
        return Check("srv_record", domain, Verdict.FAIL, "not a domain name")
    try:
        resolver = SrvResolver(serve.dns_servers, timeout_seconds or serve.dns_timeout_seconds)
    except Exception as exc:  # dnspython: NoResolverConfiguration when resolv.conf is unusable
        return Check("srv_record", domain, Verdict.FAIL, f"no usable resolver: {exc}")
    qname = Router(resolver, RoutingTable(), service=serve.service).srv_name(normal)
    answer = asyncio.run(resolver.query(qname))
    target = qname.to_text()
    if answer.status is not DnsStatus.ANSWER:
        reason = "DNS failure" if answer.status.is_temporary else "no SRV record"
        return Check("srv_record", target, Verdict.FAIL, f"{reason}: {answer.detail or answer.status.value}")
    shown = ", ".join(f"{r.priority} {r.weight} {r.port} {r.target}" for r in answer.records)
    if expected_onion is not None:
        want = normalize_onion(expected_onion)
        if any(r.target == want for r in answer.records):
            return Check("srv_record", target, Verdict.OK, shown)
        return Check("srv_record", target, Verdict.FAIL, f"does not name {want}: {shown}")
    if any(check_onion(r.target) is OnionCheck.VALID for r in answer.records):
        return Check("srv_record", target, Verdict.OK, shown)
    return Check("srv_record", target, Verdict.FAIL, f"no valid v3 onion target: {shown}")


# --- Postfix -------------------------------------------------------------------------------------------------


def daemon_tables(serve: ServeSettings) -> list[str]:
    """The Postfix table names that reach the daemon's listeners, without the socketmap NAME.

    :returns: e.g. ``["tcp:127.0.0.1:6013", "socketmap:inet:127.0.0.1:6014"]``, named by
        :func:`onion_gateway.setup.settings.daemon_table` (the name setup writes).
    """
    from onion_gateway.setup.settings import daemon_table

    return ([daemon_table("tcp_table", a) for a in serve.tcp_table if not a.is_unix]
            + [daemon_table("socketmap", a) for a in serve.socketmap])


def uses_daemon(transport_maps: str, serve: ServeSettings) -> str | None:
    """The entry of a ``transport_maps`` value that queries the daemon, or ``None``.

    :param transport_maps: the expanded parameter value (split as Postfix splits lists; a ``proxy:``
        prefix is allowed).
    :param serve: the daemon's settings (its listeners).
    """
    from onion_gateway.postfix_syntax import split_list

    wanted = daemon_tables(serve)
    for entry in split_list(transport_maps.strip()):
        table = entry[len("proxy:"):] if entry.startswith("proxy:") else entry
        for prefix in wanted:
            if table == prefix or (prefix.startswith("socketmap:") and table.startswith(prefix + ":")):
                return entry
    return None


def check_transport_maps(config_dir: Path | None, serve: ServeSettings) -> Check:
    """Does Postfix's ``transport_maps`` query one of the daemon's listeners?

    :param config_dir: Postfix configuration directory (``None`` = default).
    :param serve: the daemon's settings.
    :returns: ``OK`` naming the entry, ``FAIL`` with the actual value (or postconf's complaint).
    """
    target = f"{config_dir or '/etc/postfix'} transport_maps"
    try:
        value = postfix.postconf(config_dir, "-h", "-x", "transport_maps").strip()
    except PostfixError as exc:
        return Check("transport_maps", target, Verdict.FAIL, str(exc))
    entry = uses_daemon(value, serve)
    if entry is None:
        return Check("transport_maps", target, Verdict.FAIL,
                     f"does not query the daemon ({' or '.join(daemon_tables(serve))}): {value!r}")
    return Check("transport_maps", target, Verdict.OK, f"queries the daemon: {entry}")


def check_smtptor_service(config_dir: Path | None, transport: str) -> Check:
    """Is the onion transport in master.cf, with an smtp client that cannot leak names to DNS?

    Reads ``postconf -M <transport>/unix`` and the service's effective ``smtp_dns_support_level`` and
    ``smtp_host_lookup`` (main.cf overridden by the service's ``-o`` options). Both must be
    ``disabled`` / ``native``: only then does the .onion go through getaddrinfo(), which torsocks maps,
    instead of a clear-net DNS query (LAB-NOTES §6).

    :returns: ``OK`` with the command, ``FAIL`` when the service is missing or may use DNS.
    """
    target = f"{config_dir or '/etc/postfix'} master.cf {transport}/unix"
    try:
        line = postfix.postconf(config_dir, "-M", f"{transport}/unix").strip()
        if not line:
            return Check("smtptor_service", target, Verdict.FAIL, "no such master.cf service")
        fields = line.split()
        overrides = [fields[i + 1] for i in range(8, len(fields) - 1) if fields[i] == "-o"]
        values = postfix.get_parameters(config_dir, ["smtp_dns_support_level", "smtp_host_lookup",
                                                     *SMTPTOR_CACHE_PARAMETERS], overrides=overrides)
    except PostfixError as exc:
        return Check("smtptor_service", target, Verdict.FAIL, str(exc))
    command = fields[7] if len(fields) > 7 else "?"
    problems = []
    program = _service_program(config_dir, command)
    if program is None:
        problems.append(f"its command {command} is not an executable file")
    if values["smtp_dns_support_level"] != "disabled":
        problems.append(f"smtp_dns_support_level={values['smtp_dns_support_level'] or '(default)'}")
    if values["smtp_host_lookup"] != "native":
        problems.append(f"smtp_host_lookup={values['smtp_host_lookup']}")
    if problems:
        dns_risk = len(problems) > (program is None)
        return Check("smtptor_service", target, Verdict.FAIL, ", ".join(problems)
                     + (": onion names could go to DNS (need disabled/native)" if dns_risk else ""))
    cache = smtptor_cache_problem(values)
    if cache is not None:
        return Check("smtptor_service", target, Verdict.WARN, f"command {command} ({program}); {cache}")
    return Check("smtptor_service", target, Verdict.OK, f"command {command} ({program})")


#: The parameters that turn smtp(8)'s connection cache on (postconf(5), CONNECTION_CACHE_README).
SMTPTOR_CACHE_PARAMETERS = ("smtp_connection_cache_on_demand", "smtp_connection_cache_destinations")


def smtptor_cache_problem(values: dict[str, str]) -> str | None:
    """Why the Tor transport would use the connection cache, or ``None`` when it cannot.

    Under torsocks a cached connection must be passed to scache(8) over a unix socket; torsocks refuses
    ("Inet socket passing detected. Denying it."), smtp logs ``problem talking to service private/scache``
    and each delivery stalls for seconds (docs/onion-path.md measured 11 s against 1.1 s for 50 messages).

    :param values: the transport's effective :data:`SMTPTOR_CACHE_PARAMETERS` (main.cf + its ``-o``).
    :returns: one line naming the settings that enable caching, or ``None``.
    """
    problems = []
    if values.get("smtp_connection_cache_on_demand", "").strip().lower() != "no":
        problems.append(f"smtp_connection_cache_on_demand = {values.get('smtp_connection_cache_on_demand') or 'yes'}")
    if values.get("smtp_connection_cache_destinations", "").strip():
        problems.append(f"smtp_connection_cache_destinations = {values['smtp_connection_cache_destinations']}")
    if not problems:
        return None
    return (", ".join(problems) + ": the connection cache is on for the Tor transport, and torsocks refuses to "
            "pass sockets to scache (deliveries stall); set -o smtp_connection_cache_on_demand=no and -o "
            "smtp_connection_cache_destinations= on it (onion-gateway setup does)")


def _service_program(config_dir: Path | None, command: str) -> Path | None:
    """The file master(8) runs for a service *command*: ``$daemon_directory/<command>`` (a relative
    path like ``../../../srv/smtp_tor`` included), or *command* itself when absolute; ``None`` when it
    is not an executable file.

    :raises PostfixError: if postconf fails.
    """
    path = Path(command)
    if not path.is_absolute():
        path = Path(postfix.get_parameter(config_dir, "daemon_directory")) / command
    return path.resolve() if path.is_file() and os.access(path, os.X_OK) else None


# --- the relay audit -----------------------------------------------------------------------------------------


def check_relay_audit(torrc: Path, config_dir: Path | None, test_domain: str = "example.com",
                      timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> Check:
    """Can any onion-facing listener named by *torrc* relay? (``onion-gateway audit-open-relay``.)

    :param torrc: the torrc to read (``%include`` followed).
    :param config_dir: the Postfix configuration directory.
    :param test_domain: the foreign domain the probes try to relay to (one the server can resolve,
        or the probes end "inconclusive").
    :param timeout_seconds: per-command budget of the probes (seconds).
    :returns: ``OK`` when every listener is safe (audit exit 0); ``FAIL`` with the outcome and first
        reason otherwise, or when no listener was found.
    """
    from onion_gateway.audit import AuditOptions, audit_torrc, overall_exit_code
    from onion_gateway.errors import OnionGatewayError

    target = str(torrc)
    options = AuditOptions(config_dir=config_dir, test_domain=test_domain, timeout_seconds=timeout_seconds)
    try:
        reports = audit_torrc(torrc, options)
    except OnionGatewayError as exc:
        return Check("relay_audit", target, Verdict.FAIL, str(exc))
    if not reports:
        return Check("relay_audit", target, Verdict.FAIL, "no HiddenServicePort leads to a Postfix smtpd")
    shown = ", ".join(f"{r.target} {r.outcome.name.lower()}" for r in reports)
    if overall_exit_code(reports) != 0:
        reasons = [reason for r in reports for reason in r.reasons][:1]
        return Check("relay_audit", target, Verdict.FAIL, shown + (f": {reasons[0]}" if reasons else ""))
    return Check("relay_audit", target, Verdict.OK, shown)


def check_setup_listener(record, config_dir: Path | None, test_domain: str = "example.com",
                         timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> Check:
    """The relay audit of the listener setup recorded (:func:`onion_gateway.audit.audit_setup`).

    :param record: a :class:`~onion_gateway.setup.state.SetupRecord`.
    :returns: ``OK`` when the audit says safe, else ``FAIL`` with the outcome and first reason.
    """
    from onion_gateway.audit import AuditOptions, audit_setup
    from onion_gateway.errors import OnionGatewayError

    target = str(record.listener)
    try:
        report = audit_setup(record, AuditOptions(config_dir=config_dir, test_domain=test_domain,
                                                  timeout_seconds=timeout_seconds))
    except OnionGatewayError as exc:
        return Check("relay_audit", target, Verdict.FAIL, str(exc))
    if report.outcome.value != 0:
        reasons = list(report.reasons)[:1]
        return Check("relay_audit", target, Verdict.FAIL,
                     report.outcome.name.lower() + (f": {reasons[0]}" if reasons else ""))
    return Check("relay_audit", target, Verdict.OK, f"{target} safe (setup record {record.source})")


def settings_for_host(serve: ServeSettings | None, setup_table: dict | None, base_dir: Path | None,
                      state_dir: Path | None, flags: dict) -> StatusSettings:
    """What ``status`` checks on a host: the command-line *flags* first, then setup's state record (and,
    without ``--config``, the daemon's config file the record names: its resolvers and listeners), then
    the config file's ``[setup]``/``[serve]`` tables, then the defaults (Debian's ``unix:/run/tor/control``).

    :param serve: the ``[serve]`` settings of ``--config`` (``None``: no config file).
    :param setup_table: the config file's ``[setup]`` table (``None``: none).
    :param base_dir: the config file's directory (relative paths in it).
    :param state_dir: ``--state-dir`` (``None``: the ``[setup]`` table's, else setup's default).
    :param flags: ``tor_control`` (text), ``tor_password``, ``tor_control_password_file`` (text; without
        it and without ``tor_password``, ``[setup] tor_control_password_file`` when setup's settings give
        the address), ``postfix_config_dir``, ``domains``, ``onion``,
        ``check_tor``, ``check_postfix``, ``audit``, ``torrc``, ``test_domain``, ``timeout_seconds``,
        ``dns_servers``.
    :returns: the :class:`StatusSettings`.
    :raises ConfigError: on a bad flag, table or record.
    :raises TorError: when a control password file cannot be read.
    """
    from dataclasses import replace

    from onion_gateway.config import parse_listen_address
    from onion_gateway.tor import read_password_file
    from onion_gateway.setup.settings import parse_daemon_table, setup_settings
    from onion_gateway.setup.state import DEFAULT_STATE_DIR, MANIFEST, read_setup_state

    setup = setup_settings(setup_table or {}, None, base_dir) if setup_table is not None else None
    state = state_dir or (setup.state_dir if setup else None) or DEFAULT_STATE_DIR
    record = read_setup_state(state) if (Path(state) / MANIFEST).exists() else None
    if serve is None and record is not None and record.serve_config is not None \
            and Path(record.serve_config).is_file():
        # the daemon's own config file, as setup recorded it: its resolvers, listeners and transport
        from onion_gateway.config import load_config_file, serve_settings

        path = Path(record.serve_config)
        serve = serve_settings(load_config_file(path).get("serve", {}), None, path.resolve().parent)
    if serve is None:
        serve = ServeSettings()
        if record is not None and record.transport_map:
            protocol, address, name = parse_daemon_table(record.transport_map)
            serve = replace(serve, socketmap=(address,) if protocol == "socketmap" else (),
                            tcp_table=(address,) if protocol == "tcp_table" else ())
    if flags.get("dns_servers"):
        from onion_gateway.config import parse_dns_server

        serve = replace(serve, dns_servers=tuple(parse_dns_server(d) for d in flags["dns_servers"]))
    control = password = None
    if flags.get("check_tor", True):
        text = flags.get("tor_control")
        control = (parse_listen_address(text, "--tor-control") if text else
                   (record.tor_control if record and record.tor_control else
                    (setup.tor_control if setup else DEFAULT_TOR_CONTROL)))
        password = flags.get("tor_password")
        if password is None and flags.get("tor_control_password_file"):
            password = read_password_file(Path(flags["tor_control_password_file"]))
        elif password is None and not text and setup is not None and setup.tor_control_password_file:
            password = read_password_file(setup.tor_control_password_file)     # setup's Tor, setup's password
    config_dir = (flags.get("postfix_config_dir") or (record.postfix_config_dir if record else None)
                  or (setup.postfix_config_dir if setup else None) or serve.postfix_config_dir)
    check_postfix = flags.get("check_postfix", True)
    audit = check_postfix and flags.get("audit", True)
    return StatusSettings(serve=serve, tor_control=control, tor_password=password,
                          postfix_config_dir=config_dir, check_postfix=check_postfix,
                          domains=tuple(flags.get("domains") or (record.domains if record else ())),
                          onion=flags.get("onion") or (record.onion_address if record else None),
                          timeout_seconds=flags.get("timeout_seconds", PROBE_TIMEOUT_SECONDS),
                          audit_torrc=(flags.get("torrc") or Path("/etc/tor/torrc")) if audit else None,
                          audit_test_domain=flags.get("test_domain") or "example.com",
                          audit_record=record if audit and not flags.get("torrc") else None)


# --- onion delivery health ------------------------------------------------------------------------------------


def check_delivery_health(settings: StatusSettings) -> list[Check]:
    """Onion delivery health (issue 16): Tor's circuits, deferred onion mail, partner onions, the log.

    See :func:`onion_gateway.health.report.status_checks` (docs/health.md explains each verdict).

    :returns: ``tor_circuits``, ``smtptor_queue``, ``partner_queue``/``partner_onion`` per partner with
        deferred mail, ``smtptor_delivery``; never raises for what it inspects.
    """
    from onion_gateway.health.report import status_checks

    return status_checks(settings)


# --- all of it -----------------------------------------------------------------------------------------------


def run_status(settings: StatusSettings) -> StatusReport:
    """Run every check *settings* asks for: Tor, each daemon listener, each domain's SRV, Postfix.

    :returns: the :class:`StatusReport` (never raises for what it checks).
    :raises ValueError: if ``settings.onion`` is not a valid v3 onion address.
    """
    if settings.onion is not None:
        normalize_onion(settings.onion)   # a typo here must not read as "your DNS is wrong"
    checks: list[Check] = []
    if settings.tor_control is not None:
        checks.append(check_tor(settings.tor_control, password=settings.tor_password,
                                timeout_seconds=settings.timeout_seconds))
        if settings.onion is not None:
            checks.append(check_onion_service(settings.tor_control, settings.onion, password=settings.tor_password,
                                              timeout_seconds=settings.timeout_seconds))
    serve = settings.serve
    name = next(iter(sorted(serve.socketmap_names)), DEFAULT_SOCKETMAP_NAME)
    for address in serve.tcp_table:
        checks.append(check_map_listener(address, "tcp_table", timeout_seconds=settings.timeout_seconds))
    for address in serve.socketmap:
        checks.append(check_map_listener(address, "socketmap", name, timeout_seconds=settings.timeout_seconds))
    for domain in settings.domains:
        checks.append(check_srv(domain, settings.onion, serve))
    if settings.check_postfix:
        checks.append(check_transport_maps(settings.postfix_config_dir, serve))
        checks.append(check_smtptor_service(settings.postfix_config_dir, serve.transport))
    if settings.audit_record is not None:
        checks.append(check_setup_listener(settings.audit_record, settings.postfix_config_dir,
                                           settings.audit_test_domain, settings.timeout_seconds))
    elif settings.audit_torrc is not None:
        checks.append(check_relay_audit(settings.audit_torrc, settings.postfix_config_dir,
                                        settings.audit_test_domain, settings.timeout_seconds))
    if settings.health is not None and settings.check_postfix:
        checks.extend(check_delivery_health(settings))
    for check in checks:
        log.debug("status %s %s: %s %s", check.name, check.target, check.verdict.value, check.detail)
    return StatusReport(tuple(checks))


def format_report(report: StatusReport) -> Sequence[str]:
    """One line per check: ``ok    tor_control      127.0.0.1:9051  tor 0.4.9.11, bootstrapped 100% ...``;
    a check with a suggestion ends with `` -- `` and the suggestion."""
    return [f"{c.verdict.value:<5} {c.name:<16} {c.target}  {c.detail}"
            + (f" -- {c.suggestion}" if c.suggestion else "") for c in report.checks]
