"""Plan ``onion-gateway setup``: every change as data, worked out without touching the real files.

- :func:`plan_setup` (no side effects outside a scratch directory): preflight refusals (Postfix < 3.5,
  torsocks missing, an open-relay listener, a HiddenServiceDir Tor cannot create, Tor's control port
  unreachable), then every change as data: :class:`FileChange` for files written whole (wrapper,
  torsocks.conf, torrc piece, the torrc ``%include`` line, systemd service and socket units), :class:`PostconfChange` for
  main.cf/master.cf (the ``postconf -e``/``-M`` commands, run first on a scratch copy so the plan
  holds the exact bytes they produce), and an :class:`OnionStep`.
- :func:`check_listener_policy`: the "not an open relay" refusal of the onion-facing listener: the
  relay audit's static analysis (:mod:`onion_gateway.audit.policy`) run on the planned configuration.

:mod:`onion_gateway.setup.apply` carries a plan out. A second run with the same settings finds nothing
to change and writes nothing, not even the state directory (idempotence is decided on the exact bytes
postconf would produce).
"""

from __future__ import annotations

import difflib
import enum
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onion_gateway import postfix
from onion_gateway.audit import analyse_listener
from onion_gateway.audit.policy import Severity
from onion_gateway.config import ServeSettings
from onion_gateway.errors import ConfigError, SetupError, TorError
from onion_gateway.postfix_syntax import split_fields, split_list
from onion_gateway.render import (MainCf, MasterCf, OwnDomains, SystemdSocket, SystemdUnit, TorrcInclude, TorrcPiece,
                                  TorsocksConf, Wrapper, render)
from onion_gateway.setup.onionpath import listener_client_checks, listener_inspection, torrc_piece
from onion_gateway.setup.settings import DEFAULT_SOCKS, SetupSettings, default_transport_map
from onion_gateway.setup.state import JOURNAL, check_state_dir, load_manifest
from onion_gateway.tor import TorControl, check_hidden_service_dir, read_onion_address, verify_config

log = logging.getLogger(__name__)

MIN_POSTFIX = (3, 5)            # transport_maps nexthop lists "[a]:25, [b]:25" (postfix 3.5 RELEASE_NOTES)
WRAPPER_NAME = "smtp_tor"
OWN_DOMAINS_TABLE = "onion-gateway-own-domains.regexp"   # in the Postfix configuration directory
PROBE_KEY = "*"                 # the daemon answers "*" as not found without asking DNS


class OnionAction(enum.Enum):
    """What setup does with the onion service."""

    REUSE = "reuse"            # Tor already serves it with the right port: nothing to do
    CONFIGURE = "configure"    # the key exists, Tor must be told to serve it (address known)
    CREATE = "create"          # no key yet: Tor creates one (new address)


@dataclass(frozen=True)
class FileChange:
    """One file written whole.

    :param path: the file.
    :param old: its bytes now, ``None`` if it does not exist.
    :param new: its bytes after setup.
    :param mode: permission bits after setup.
    :param what: a short description for the plan.
    """

    path: Path
    old: bytes | None
    new: bytes
    mode: int
    what: str

    def diff(self) -> str:
        """A unified diff from the current to the new content (``/dev/null`` for a new file)."""
        return _diff(self.path, self.old, self.new)


@dataclass(frozen=True)
class PostconfChange:
    """main.cf or master.cf changed by postconf commands (never edited as text).

    :param path: main.cf or master.cf.
    :param commands: postconf arguments, e.g. ``[("-e", "transport_maps = ...")]``.
    :param old: the file's bytes now.
    :param new: the bytes the commands produce (computed on a scratch copy).
    """

    path: Path
    commands: tuple[tuple[str, str], ...]
    old: bytes
    new: bytes

    def diff(self) -> str:
        """A unified diff of the file, preceded by the postconf commands."""
        lines = [f"postconf {flag} '{arg}'" for flag, arg in self.commands]
        return "\n".join(lines) + "\n" + _diff(self.path, self.old, self.new)


@dataclass(frozen=True)
class OnionStep:
    """The onion service as planned.

    :param action: what happens.
    :param hidden_service_dir: its directory.
    :param address: the address if the key already exists, else ``None`` (Tor makes a new one).
    :param current_ports: what Tor serves from that directory now (``None``: nothing).
    :param options: the service's other options setup sets (:func:`.onionpath.service_options`).
    :param current_options: the other options Tor has for it now (``None``: Tor does not serve it).
    """

    action: OnionAction
    hidden_service_dir: Path
    address: str | None
    current_ports: list[tuple[int, str, int]] | None
    options: tuple[tuple[str, str], ...] = ()
    current_options: dict[str, str] | None = None


@dataclass
class Plan:
    """Everything setup would change. :func:`apply_plan` carries it out.

    :param settings: the settings it was made from.
    :param files: whole-file writes.
    :param postconf: main.cf/master.cf changes.
    :param onion: the onion service step.
    :param notes: things the postmaster should know (warnings, next steps).
    :param srv_service: the SRV service label (``onion-mx``).
    :param listener_record: what the relay audit needs to find the listener without a torrc
        (``audit-open-relay --state-dir``): ``{"listener", "onion_port", "hidden_service_dir",
        "postfix_config_dir"}``, written to the manifest's ``listener`` key on success.
    :param blocker: why this plan must not be applied yet although it is sound (the lookup daemon does
        not answer at the table setup would put in transport_maps, so switching would defer all mail),
        with the exact command that fixes it; ``None`` when it can be applied.
    :param start_units: the systemd units setup must enable and start, in order (the socket unit, then
        the service), and wait for before it switches transport_maps, when the daemon does not answer yet
        and systemd runs; empty: nothing to start.
    :param daemon_table: the daemon's table (``socketmap:inet:127.0.0.1:6014:onion``).
    :param managed: what setup owns in main.cf/master.cf and the running Tor after this plan:
        ``{"services": ["name/type", ...], "transport_map": table, "own_table": table,
        "tor": {"hidden_service_dir": dir, "metrics_port": "IP:PORT" | None}}``; a later run removes what
        it no longer wants, rollback takes the Tor part out of the running Tor.
    """

    settings: SetupSettings
    files: list[FileChange]
    postconf: list[PostconfChange]
    onion: OnionStep
    notes: list[str] = field(default_factory=list)
    srv_service: str = "onion-mx"
    managed: dict[str, Any] = field(default_factory=dict)
    listener_record: dict[str, Any] = field(default_factory=dict)
    blocker: str | None = None
    start_units: tuple[str, ...] = ()
    daemon_table: str = ""

    @property
    def is_empty(self) -> bool:
        """True when nothing would change."""
        return (not self.files and not self.postconf and self.onion.action is OnionAction.REUSE
                and not self.start_units)

    def describe(self) -> str:
        """The plan as text: unified diffs of every file and postconf change, and the onion step."""
        parts = [c.diff() for c in self.files] + [c.diff() for c in self.postconf]
        step = self.onion
        if step.action is OnionAction.REUSE:
            parts.append(f"onion service: Tor already serves {step.address} from {step.hidden_service_dir}\n")
        elif step.action is OnionAction.CONFIGURE:
            parts.append(f"onion service: tell Tor (control port) to serve {step.address} from "
                         f"{step.hidden_service_dir}, port {self.settings.onion_port} -> {self.settings.listener}\n")
        else:
            parts.append(f"onion service: Tor creates a new key in {step.hidden_service_dir} and serves it, "
                         f"port {self.settings.onion_port} -> {self.settings.listener}\n")
        return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


@dataclass(frozen=True)
class SetupResult:
    """What a finished setup reports.

    :param address: the onion address (never the key).
    :param srv_records: the DNS records to publish, one per domain.
    :param changed: the files changed (empty when nothing had to change).
    :param notes: next steps and warnings.
    """

    address: str
    srv_records: list[str]
    changed: list[Path]
    notes: list[str]


def _diff(path: Path, old: bytes | None, new: bytes) -> str:
    a = [] if old is None else old.decode("utf-8", "replace").splitlines(keepends=True)
    b = new.decode("utf-8", "replace").splitlines(keepends=True)
    text = "".join(difflib.unified_diff(a, b, "/dev/null" if old is None else f"a{path}", f"b{path}"))
    return text if text else f"(mode change only: {path})\n"


def srv_records(domains: tuple[str, ...] | list[str], address: str, *, service: str = "onion-mx",
                ttl_seconds: int = 3600, priority: int = 10, weight: int = 5, port: int = 25) -> list[str]:
    """The SRV records (RFC 2782) a receiving provider publishes, one per domain.

    :returns: lines like ``_onion-mx._tcp.example.com. 3600 IN SRV 10 5 25 <addr>.onion.``.
    """
    return [f"_{service}._tcp.{d}. {ttl_seconds} IN SRV {priority} {weight} {port} {address}."
            for d in domains]


def prepend_transport_map(ours: str | Sequence[str], existing: str,
                          previous: str | Sequence[str] | None = None) -> str:
    """``transport_maps`` with *ours* first and every map the user had kept, in order.

    The value is split as Postfix splits it (:func:`onion_gateway.postfix_syntax.split_list`: commas and
    white space, ``{ ... }`` groups kept whole, ``$name`` left alone), so ``inline:{ {a = b}, c = d }``
    stays one table.

    :param ours: our tables in the order they must come first, e.g. ``["regexp:/etc/postfix/own.regexp",
        "socketmap:inet:127.0.0.1:6014:onion"]`` (a single table may be given as a string).
    :param existing: the current raw value.
    :param previous: the tables an earlier setup run put there (dropped if they are not in *ours*).
    :returns: the new value; *existing* unchanged (stripped) if it already starts with *ours* and holds
        no stale table of ours.
    """
    ours_list = [ours] if isinstance(ours, str) else list(ours)
    prev_list = [] if previous is None else [previous] if isinstance(previous, str) else [p for p in previous if p]
    items = split_list(existing)
    kept = [i for i in items if i not in prev_list or i in ours_list]
    if kept == items and items[:len(ours_list)] == ours_list:
        return existing.strip()
    rest = [i for i in kept if i not in ours_list]
    return ", ".join([*ours_list, *rest])


def master_entries(text: str) -> list[tuple[str, str]]:
    """Split rendered master.cf text into ``postconf -M`` arguments.

    :param text: master.cf(5) lines; ``#`` comments and blank lines are skipped, a line starting with
        white space continues the previous entry.
    :returns: ``[("name/type", "name type private unpriv chroot wakeup maxproc command args"), ...]``.
    :raises SetupError: on a continuation line with no entry before it or an entry with too few fields.
    """
    entries: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            if not entries:
                raise SetupError(f"master.cf template: continuation line without an entry: {line!r}")
            entries[-1] += split_fields(line)
        else:
            entries.append(split_fields(line))
    result = []
    for words in entries:
        if len(words) < 8:
            raise SetupError(f"master.cf template: entry {' '.join(words)!r} has fewer than 8 fields")
        result.append((f"{words[0]}/{words[1]}", " ".join(words)))
    return result


def main_parameters(text: str) -> list[str]:
    """The ``name = value`` lines of rendered main.cf text (comments and blank lines skipped)."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def check_listener_port(config_dir: Path | None, listener, ours: Sequence[str] = ()) -> None:
    """Refuse a listener address that a master.cf service already uses (master(5) service names).

    An ``inet`` service named ``[HOST:]PORT`` (PORT a number or a services(5) name) listens on HOST, or
    on every ``inet_interfaces`` address when HOST is absent (or ``*``): either way it shares the port
    with a listener on that port, and the kernel would spread connections between the two. Services
    setup itself made (*ours*, ``name/type``) are not in the way.

    :param config_dir: the Postfix configuration directory.
    :param listener: the planned listener (a :class:`~onion_gateway.config.ListenAddress`).
    :param ours: the services an earlier setup run made.
    :raises SetupError: naming the service in the way; nothing was changed.
    :raises PostfixError: if postconf fails.
    """
    import socket

    for service in postfix.master_fields(config_dir):
        if service.get("type") != "inet" or f"{service.get('service')}/inet" in ours:
            continue
        name = service.get("service", "")
        host, sep, port_text = name.rpartition(":")
        host = host.strip("[]") if sep else ""
        try:
            port = int(port_text) if port_text.isdigit() else socket.getservbyname(port_text, "tcp")
        except OSError:
            continue
        if port != listener.port:
            continue
        if host in ("", "*", "0.0.0.0", "::") or host == listener.host or \
                (host == "localhost" and listener.host in ("127.0.0.1", "::1")):
            raise SetupError(f"the listener {listener} would share its port with the master.cf service "
                             f"{name}/inet ({service.get('command', '').split()[0] if service.get('command') else '?'})"
                             "; choose another --listener port; nothing was changed")


def check_listener_policy(config_dir: Path, listener: str) -> list[str]:
    """Refuse a listener that would relay for onion clients; return the lesser warnings.

    The one relay-policy analysis of the project does the judging: the audit's static analysis
    (:func:`onion_gateway.audit.analyse_listener`, i.e. ``postconf -x -o ...`` with the listener's
    master.cf options, then every restriction list walked as smtpd does, for a client at 127.0.0.1).
    Setup runs it on the scratch copy of the planned main.cf/master.cf, so a critical finding stops the
    run before anything is written. A finding is critical when a Tor client can relay (a permit before
    the unauthorized-destination reject, XCLIENT for loopback, ``relay_domains`` covering ``onion``,
    no reject at all); a permit masked by the other relay list, an opaque policy service and the like
    are warnings: setup proceeds and prints them as notes.

    :param config_dir: the (scratch) Postfix configuration directory holding the planned files.
    :param listener: the listener's endpoint, ``IP:PORT``.
    :returns: one note per warning finding (empty for the hardened template on a sane main.cf).
    :raises SetupError: naming every critical finding (title, effective value, where it was set), or
        when the planned master.cf has no smtpd on *listener*.
    :raises PostfixError: if postconf fails.
    """
    report = analyse_listener(listener, config_dir)
    if report.policy is None:
        raise SetupError(f"the planned master.cf has no smtpd listening on {listener}; nothing was changed")
    critical = [f for f in report.findings if f.severity is Severity.CRITICAL]
    if critical:
        reasons = "; ".join(f"{f.title} [{f.check.value}: {f.value} (set in {f.source})]" for f in critical)
        raise SetupError(f"the listener {listener} would be an open relay for onion clients "
                         f"(relay audit of the planned configuration): {reasons}; nothing was changed")
    return [f"relay audit of the listener {listener}: {f.title} [{f.check.value}: {f.value} (set in {f.source})]"
            for f in report.findings if f.severity is Severity.WARNING]


# --------------------------------------------------------------------------------------------- plan

def read_bytes(path: Path) -> bytes | None:
    """The bytes of *path*, ``None`` if it does not exist.

    :raises SetupError: when it exists but cannot be read.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SetupError(f"cannot read {path}: {exc.strerror}") from exc


def _file_change(path: Path, new: str, mode: int, what: str) -> FileChange | None:
    old = read_bytes(path)
    data = new.encode("utf-8")
    if old == data and stat.S_IMODE(path.stat().st_mode) == mode:
        return None
    return FileChange(path, old, data, mode, what)


def _postfix_dir(settings: SetupSettings) -> Path:
    if settings.postfix_config_dir is not None:
        return settings.postfix_config_dir
    return Path(postfix.postconf(None, "-h", "config_directory").strip())


def _serve_command(settings: SetupSettings) -> str:
    if settings.serve_command:
        return settings.serve_command
    found = shutil.which("onion-gateway")
    return found if found else f"{sys.executable} -m onion_gateway"


def plan_setup(settings: SetupSettings, serve: ServeSettings | None = None) -> Plan:
    """Work out every change setup would make, changing nothing.

    :param settings: the setup settings.
    :param serve: the daemon's settings (its transport name and listeners); defaults if ``None``.
    :returns: the :class:`Plan`.
    :raises SetupError: when setup refuses: Postfix older than 3.5, torsocks missing, the listener
        would be an open relay, the HiddenServiceDir is unusable, a torrc is missing or rejected, or an
        interrupted run has not been recovered yet.
    :raises PostfixError: when postconf fails.
    :raises TorError: when Tor's control port cannot be reached or refuses.
    """
    serve = serve or ServeSettings()
    cdir = settings.postfix_config_dir
    check_state_dir(settings.state_dir, create=False)       # refuses a state directory others can change
    if (settings.state_dir / JOURNAL).exists():
        raise SetupError(f"an interrupted run left {settings.state_dir / JOURNAL}: run setup without "
                         "--dry-run to repair it first")
    version = postfix.mail_version(cdir)
    if version < MIN_POSTFIX:
        raise SetupError(f"Postfix {'.'.join(map(str, version))} is too old: onion-gateway needs 3.5 or "
                         "later (transport_maps nexthop lists); nothing was changed")
    torsocks = shutil.which(settings.torsocks)
    if torsocks is None:
        raise SetupError(f"{settings.torsocks} not found: install torsocks (apt install torsocks); "
                         "nothing was changed")
    try:
        check_hidden_service_dir(settings.hidden_service_dir)
    except TorError as exc:
        raise SetupError(f"{exc}; nothing was changed") from exc
    if settings.torrc is not None and not settings.torrc.is_file():
        raise SetupError(f"torrc {settings.torrc} does not exist: set setup.torrc to the torrc Tor runs "
                         "with (or to \"\" to manage the %include yourself); nothing was changed")

    daemon_directory = Path(postfix.get_parameter(cdir, "daemon_directory"))
    wrapper_path = settings.wrapper_path or daemon_directory / WRAPPER_NAME
    # master(8) runs "$daemon_directory/<command>": a wrapper elsewhere is named by a relative path
    command = WRAPPER_NAME if wrapper_path == daemon_directory / WRAPPER_NAME else \
        os.path.relpath(wrapper_path, daemon_directory)
    listener = str(settings.listener)
    transport_map = settings.transport_map or default_transport_map(serve)
    real_cdir = _postfix_dir(settings)
    own_table_path = real_cdir / OWN_DOMAINS_TABLE
    own_table = f"regexp:{own_table_path}"
    notes: list[str] = []

    files: list[FileChange] = []
    custom_socks = str(settings.socks) != DEFAULT_SOCKS
    wrapper = Wrapper(daemon_directory=str(daemon_directory), torsocks=settings.torsocks,
                      isolation=settings.torsocks_isolation,
                      torsocks_conf=str(settings.torsocks_conf) if custom_socks else "")
    wanted: list[tuple[str, Path, str, int]] = [("smtp_tor wrapper", wrapper_path, render(wrapper), 0o755)]
    if custom_socks:
        wanted.append(("torsocks.conf", settings.torsocks_conf,
                       render(TorsocksConf(host=settings.socks.host or "", port=settings.socks.port or 0)), 0o644))
    piece = torrc_piece(settings, notes)
    wanted.append(("torrc piece", settings.torrc_piece, render(piece), 0o644))
    if settings.torrc is not None:
        torrc_old = read_bytes(settings.torrc) or b""
        include_line = f"%include {settings.torrc_piece}"
        torrc_lines = [line.strip() for line in torrc_old.decode("utf-8", "replace").splitlines()]
        covered = any(_included_besides(line, settings.torrc, settings.torrc_piece) is not None
                      for line in torrc_lines)
        if covered:
            notes.append(f"{settings.torrc} already reads {settings.torrc_piece} through an %include of its "
                         "directory: no %include line added")
        elif include_line not in torrc_lines:
            text = torrc_old.decode("utf-8", "replace")
            if text and not text.endswith("\n"):
                text += "\n"
            text += render(TorrcInclude(piece=str(settings.torrc_piece)))
            wanted.append(("torrc %include", settings.torrc, text, stat.S_IMODE(settings.torrc.stat().st_mode)))
    else:
        notes.append(f"add '%include {settings.torrc_piece}' to the torrc Tor starts with, or the onion "
                     "service is lost at Tor's next restart")
    unit = packaged_unit(settings)
    socket_name = None                     # the socket unit that holds the daemon's listening sockets
    if unit is not None:
        notes.append(f"the Debian package's {unit} runs the daemon with {PACKAGED_SERVE_CONFIG}: no unit written")
        socket_name = unit.with_suffix(".socket").name if unit.with_suffix(".socket").is_file() else None
    elif settings.systemd_unit is not None:
        exec_start = f"{_serve_command(settings)} serve --config {settings.serve_config}"
        socket_path = settings.systemd_unit.with_suffix(".socket")
        socket_name = socket_path.name
        wanted.append(("systemd unit", settings.systemd_unit,
                       render(SystemdUnit(exec_start=exec_start, socket=socket_name)), 0o644))
        wanted.append(("systemd socket unit", socket_path,
                       render(systemd_socket(serve, settings.systemd_unit.name)), 0o644))
    wanted.append(("own-domains table", own_table_path,
                   render(OwnDomains(_own_domain_entries(settings, (own_table, transport_map), notes))), 0o644))
    for what, path, text, mode in wanted:
        if not path.parent.is_dir():
            raise SetupError(f"cannot write the {what}: directory {path.parent} does not exist; nothing was changed")
        change = _file_change(path, text, mode, what)
        if change is not None:
            files.append(change)

    with tempfile.TemporaryDirectory(prefix="onion-gateway-plan-") as scratch_name:
        scratch = Path(scratch_name)
        _check_wrapper_syntax(scratch, render(wrapper))
        managed_before = _manifest_or_error(settings.state_dir).get("managed") or {}
        check_listener_port(settings.postfix_config_dir, settings.listener, managed_before.get("services", []))
        postconf_changes, managed = _plan_postconf(settings, scratch, serve.transport, command,
                                                   (own_table, transport_map),
                                                   managed_before, notes)
        notes += check_listener_policy(scratch / "postfix", listener)
        if settings.torrc is not None:
            _verify_torrc_in_scratch(settings, scratch, piece)

    onion = _plan_onion(settings, notes, piece.options)
    if not (daemon_directory / "smtp").exists():
        notes.append(f"{daemon_directory}/smtp does not exist: check daemon_directory")
    if settings.systemd_unit is not None and socket_name is not None and \
            any(c.path.parent == settings.systemd_unit.parent and c.what.startswith("systemd") for c in files):
        notes.append(f"the units {settings.systemd_unit.name} and {socket_name} in {settings.systemd_unit.parent} are "
                     f"new or changed: systemctl daemon-reload && systemctl enable {socket_name} "
                     f"{settings.systemd_unit.name}; a daemon running without the socket unit moves to it with "
                     f"systemctl stop {settings.systemd_unit.name} && systemctl start {socket_name} "
                     f"{settings.systemd_unit.name} (the daemon must already answer before setup switches transport_maps)")
    # what setup puts into the running Tor beyond the control-port SETCONF: rollback takes it out again
    managed["tor"] = {"hidden_service_dir": str(settings.hidden_service_dir),
                      "metrics_port": piece.metrics_port or None}
    record = {"listener": listener, "onion_port": settings.onion_port,
              "hidden_service_dir": str(settings.hidden_service_dir),
              "postfix_config_dir": str(cdir) if cdir is not None else None,
              "tor_control": str(settings.tor_control), "domains": list(settings.domains),
              "transport_map": transport_map, "serve_config": str(settings.serve_config)}
    blocker = None
    start_units: tuple[str, ...] = ()
    problem = daemon_problem(transport_map, cdir)
    if problem is not None and (unit is not None or settings.systemd_unit is not None) and systemd_running():
        start_units = tuple(n for n in (socket_name, (unit or settings.systemd_unit).name) if n)
        notes.append(f"the lookup daemon does not answer yet: setup installs, enables and starts "
                     f"{' and '.join(start_units)} and waits for it to answer before it switches transport_maps")
    elif problem is not None:
        blocker = (f"the lookup daemon does not answer at {transport_map} ({problem}); switching transport_maps "
                   f"now would defer all mail. Start it first:\n  {_serve_command(settings)} serve --config "
                   f"{settings.serve_config}\nthen run setup again; nothing was changed")
    return Plan(settings, files, postconf_changes, onion, notes, serve.service, managed, record, blocker,
                start_units, transport_map)


#: Where the Debian package installs its units (systemd.unit(5): the vendor unit directories).
PACKAGED_UNIT_DIRS = (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
#: The config file the packaged unit's ExecStart passes (debian/rules, scripts/packaged_units.py).
PACKAGED_SERVE_CONFIG = Path("/etc/onion-gateway/onion-gateway.toml")
DEFAULT_UNIT = Path("/etc/systemd/system/onion-gateway.service")


def systemd_socket(serve: ServeSettings, service: str = DEFAULT_UNIT.name) -> SystemdSocket:
    """The socket unit of the daemon's listeners (systemd.socket(5)): one ``ListenStream`` per tcp_table
    and socketmap listener of *serve*, as the daemon matches passed sockets to them
    (:func:`onion_gateway.lookup.systemd.match_listeners`), unix sockets with its mode and group.

    :param serve: the daemon's settings (the ``[serve]`` table the unit's config file holds).
    :param service: the service unit the sockets are passed to.
    :returns: the :class:`~onion_gateway.render.SystemdSocket` context.
    """
    listeners = [*serve.tcp_table, *serve.socketmap]
    return SystemdSocket(listen_streams=tuple(a.path if a.is_unix else str(a) for a in listeners),
                         socket_mode=f"{serve.unix_socket_mode:04o}", socket_group=serve.unix_socket_group,
                         service=service)


def packaged_unit(settings: SetupSettings) -> Path | None:
    """The Debian package's ``onion-gateway.service`` when setup should use it instead of writing a unit.

    It is used when setup would write the default ``/etc/systemd/system/onion-gateway.service``, no such
    file exists there (a unit there, yours or an earlier setup's, overrides the package's and is kept
    managed as before), and the daemon's config is the package's conffile (the unit passes that one).

    :param settings: the setup settings (``systemd_unit``, ``serve_config``).
    :returns: the packaged unit's path, or ``None``: write (or do not write) a unit as configured.
    """
    if settings.systemd_unit != DEFAULT_UNIT or DEFAULT_UNIT.exists() or \
            settings.serve_config != PACKAGED_SERVE_CONFIG:
        return None
    return next((d / DEFAULT_UNIT.name for d in PACKAGED_UNIT_DIRS if (d / DEFAULT_UNIT.name).is_file()), None)


def systemd_running() -> bool:
    """True when systemd is the init system (sd_booted(3): ``/run/systemd/system`` exists) and
    ``systemctl`` is installed."""
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def daemon_problem(table: str, config_dir: Path | None) -> str | None:
    """Ask the lookup daemon through *table* the way trivial-rewrite will (``postmap -q '*' TABLE``).

    The daemon answers ``*`` as not found without asking DNS, so a healthy daemon gives exit 1 without a
    ``query error``; a daemon that is down or does not speak the protocol gives a query error.

    :param table: the Postfix table, e.g. ``socketmap:inet:127.0.0.1:6014:onion``.
    :param config_dir: the Postfix configuration directory (``None``: the default instance).
    :returns: ``None`` when it answers, else Postfix's complaint in one line.
    """
    code, _out, err = postfix.postmap_query(PROBE_KEY, table, config_dir)
    if code == 0 or "error" not in err:
        return None
    lines = [line.split(": ", 1)[-1] for line in err.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"postmap exit {code}"


def _own_domain_entries(settings: SetupSettings, ours: tuple[str, str], notes: list[str]) -> tuple[tuple[str, str], ...]:
    """The gateway's own domains with what the user's transport tables answer for each (``:`` if none).

    Own domains are setup's ``domains`` and every domain Postfix delivers or relays for
    (:func:`onion_gateway.postfix.own_domains`). A user table that routes an own domain (``own.example
    lmtp:...``) keeps doing so: its answer goes into the regexp table, which is asked first.
    """
    cdir = settings.postfix_config_dir
    listed, unlisted = postfix.own_domains(cdir)
    for table in unlisted:
        notes.append(f"the domains in {table} cannot be listed: mail for them waits for the lookup daemon "
                     "when it is down (add them to setup.domains)")
    domains = sorted(set(settings.domains) | {d for d in listed if d and not d.startswith("$")})
    existing = postfix.postconf(cdir, "-h", "transport_maps").strip()
    user_tables = [t for t in split_list(existing) if t not in ours and not t.endswith(OWN_DOMAINS_TABLE)]
    entries = []
    for domain in domains:
        result = ":"
        for table in user_tables:
            code, out, _err = postfix.postmap_query(domain, table, cdir)
            if code == 0 and out.strip():
                result = out.strip().splitlines()[0]
                break
        entries.append((domain, result))
    return tuple(entries)


def _check_wrapper_syntax(scratch: Path, text: str) -> None:
    path = scratch / WRAPPER_NAME
    path.write_text(text)
    done = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise SetupError(f"the rendered smtp_tor wrapper is not valid sh: {done.stderr.strip()}")


def _plan_postconf(settings: SetupSettings, scratch: Path, transport: str, command: str,
                   ours: tuple[str, str], before: dict[str, Any],
                   notes: list[str]) -> tuple[list[PostconfChange], dict[str, Any]]:
    cdir = _postfix_dir(settings)
    pdir = scratch / "postfix"
    pdir.mkdir()
    originals = {}
    for name in ("main.cf", "master.cf"):
        data = read_bytes(cdir / name)
        if data is None:
            raise SetupError(f"{cdir / name} does not exist: is {cdir} a Postfix configuration directory?")
        originals[name] = data
        shutil.copy2(cdir / name, pdir / name)
    existing = postfix.postconf(settings.postfix_config_dir, "-h", "transport_maps").strip()
    previous = [before.get("own_table"), before.get("transport_map")]
    main_text = render(MainCf(transport_maps=prepend_transport_map(ours, existing, previous)))
    inspection, inspection_source = listener_inspection(settings.postfix_config_dir)
    client_checks: tuple[tuple[str, str], ...] = ()
    if settings.export_circuit_id:           # onion clients are circuit addresses only behind the PROXY header
        client_checks, removed = listener_client_checks(settings.postfix_config_dir)
        notes += removed
    master_text = render(MasterCf(transport=transport, command=command,
                                  tls_level=settings.smtp_tls_security_level, listener=str(settings.listener),
                                  relay_restrictions=settings.relay_restrictions,
                                  recipient_restrictions=settings.recipient_restrictions,
                                  proxy_protocol=settings.export_circuit_id,
                                  connection_count_limit=settings.listener_connection_count_limit,
                                  connection_rate_limit=settings.listener_connection_rate_limit,
                                  inspection=inspection, inspection_source=inspection_source,
                                  client_checks=client_checks))
    entries = master_entries(master_text)
    keys = [key for key, _ in entries]
    stale = [key for key in before.get("services", []) if key not in keys]     # e.g. the listener moved
    commands = {"main.cf": tuple(("-e", p) for p in main_parameters(main_text)),
                "master.cf": tuple([("-MX", key) for key in stale]
                                   + [("-M", f"{key}={entry}") for key, entry in entries])}
    changes = []
    # master.cf first: postconf reads main.cf for every command and waits while main.cf is younger than
    # a second, so changing main.cf last saves that wait on the real files
    for name in ("master.cf", "main.cf"):
        for flag, arg in commands[name]:
            postfix.postconf(pdir, flag, arg)
            _age(pdir / name)
        new = (pdir / name).read_bytes()
        if new != originals[name]:
            changes.append(PostconfChange(cdir / name, commands[name], originals[name], new))
    return changes, {"services": keys, "own_table": ours[0], "transport_map": ours[1]}


def _age(path: Path) -> None:
    # Postfix waits (300 ms steps) to read a table or main.cf modified within the current second, in case
    # it is still being written (dict_load_file); the scratch copies are ours and complete, so date them back.
    past = path.stat().st_mtime - 10
    os.utime(path, (past, past))


def _verify_torrc_in_scratch(settings: SetupSettings, scratch: Path, context: TorrcPiece) -> None:
    assert settings.torrc is not None
    piece = scratch / "piece.torrc"
    piece.write_text(render(context))
    text = (read_bytes(settings.torrc) or b"").decode("utf-8", "replace")
    include_line = f"%include {settings.torrc_piece}"
    lines = []
    for line in text.splitlines():
        if line.strip() == include_line:
            continue
        others = _included_besides(line.strip(), settings.torrc, settings.torrc_piece)
        if others is None:
            lines.append(line)
        else:                               # the directory include, minus the real piece: ours replaces it
            lines += [f"%include {other}" for other in others]
    torrc = scratch / "torrc"
    torrc.write_text("\n".join(lines) + f"\n%include {piece}\n")
    try:
        verify_config(torrc, settings.tor_defaults_torrc)
    except TorError as exc:
        raise SetupError(f"{exc}; nothing was changed") from exc


def _included_besides(line: str, torrc: Path, piece: Path) -> list[Path] | None:
    """If torrc line *line* is an ``%include`` of a directory or glob that covers *piece* (tor(1): a
    directory's files in lexical order, dot-files skipped), the other files it includes; else ``None``.
    A relative path is taken from the torrc's directory (as :mod:`onion_gateway.audit.discover` does)."""
    import fnmatch
    import glob as globbing

    if not line.startswith("%include"):
        return None
    pattern = line[len("%include"):].strip()
    if not pattern:
        return None
    base = Path(pattern) if Path(pattern).is_absolute() else torrc.parent / pattern
    piece_real = Path(os.path.realpath(piece))
    if base.is_dir() or pattern.endswith("/"):
        if Path(os.path.realpath(base)) != piece_real.parent or piece.name.startswith("."):
            return None
        return sorted(p for p in base.iterdir() if p.is_file() and not p.name.startswith(".")
                      and Path(os.path.realpath(p)) != piece_real)
    if any(ch in pattern for ch in "*?[") and fnmatch.fnmatch(str(piece), str(base)):
        return sorted(Path(p) for p in globbing.glob(str(base)) if Path(os.path.realpath(p)) != piece_real)
    return None


def _plan_onion(settings: SetupSettings, notes: list[str], options: tuple[tuple[str, str], ...] = ()) -> OnionStep:
    hs_dir = settings.hidden_service_dir
    with TorControl(settings.tor_control, settings.tor_control_password_file) as tor:
        ports = tor.hidden_service_ports(hs_dir)
        current_options = tor.hidden_service_extra_options(hs_dir)
        running_torrc = tor.config_file()
    if settings.torrc is not None and running_torrc is not None and running_torrc != settings.torrc:
        notes.append(f"the running Tor reads {running_torrc}, not {settings.torrc}: the onion service "
                     "will not survive a Tor restart unless that torrc includes the piece")
    address = None
    if (hs_dir / "hostname").exists():
        address = read_onion_address(hs_dir)
    wanted = [(settings.onion_port, settings.listener.host, settings.listener.port)]
    if ports == wanted and address is not None and current_options == dict(options):
        return OnionStep(OnionAction.REUSE, hs_dir, address, ports, options, current_options)
    return OnionStep(OnionAction.CONFIGURE if address else OnionAction.CREATE, hs_dir, address, ports, options,
                     current_options)


def _manifest_or_error(state_dir: Path) -> dict[str, Any]:
    try:
        return load_manifest(state_dir)
    except ConfigError as exc:
        raise SetupError(str(exc)) from exc
