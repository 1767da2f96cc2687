"""``onion-gateway setup`` as an installer lifecycle: plan, apply with a journal, roll back, recover.

Shaped after certbot's installers. Map of the module:

- :func:`plan_setup` (no side effects outside a scratch directory): preflight refusals (Postfix < 3.5,
  torsocks missing, an open-relay listener, a HiddenServiceDir Tor cannot create, Tor's control port
  unreachable), then every change as data: :class:`FileChange` for files written whole (wrapper,
  torsocks.conf, torrc piece, the torrc ``%include`` line, systemd unit), :class:`PostconfChange` for
  main.cf/master.cf (the ``postconf -e``/``-M`` commands, run first on a scratch copy so the plan
  holds the exact bytes they produce), and an :class:`OnionStep`.
- :func:`apply_plan`: the one place that writes. Before each change it records the file's current
  bytes in a **journal** under the state directory (fsync'd); then ``postfix check`` and
  ``tor --verify-config`` run on the real files, the onion service is applied through Tor's control
  port, and Postfix is reloaded if it runs. Any failure (or Ctrl-C) restores everything from the journal
  and raises :class:`~onion_gateway.errors.SetupError` naming the failed step. On success the journal
  is folded into the **manifest**: the original bytes of every file onion-gateway ever changed, and the
  files it created.
- :func:`recover_interrupted`: a journal left behind means a run was killed mid-way; the next start
  restores it before doing anything else.
- :func:`rollback`: restores every file in the manifest byte for byte, removes the files setup
  created, and drops the onion service from the running Tor (its key directory is kept: the address
  may be published in DNS; delete the directory by hand to forget it).
- :func:`check_listener_policy`: the "not an open relay" refusal of the onion-facing listener: the
  relay audit's static analysis (:mod:`onion_gateway.audit.policy`) run on the planned configuration.

State directory layout::

    STATE_DIR/manifest.json      {"files": [{"path", "backup" | null, "mode", "uid", "gid"}], "onion": {...},
                                  "managed": {...}, "listener": {"listener": "127.0.0.1:2525", "onion_port": 25,
                                  "hidden_service_dir": PATH, "postfix_config_dir": PATH | null}}
    STATE_DIR/backups/NNNN       original bytes of changed files
    STATE_DIR/journal/journal.json, journal/backups/NNNN   the run in progress (absent when idle)

A second run with the same settings finds nothing to change and writes nothing, not even the state
directory (idempotence is decided on the exact bytes postconf would produce).
"""

from __future__ import annotations

import difflib
import enum
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onion_gateway import postfix
from onion_gateway.audit import analyse_listener
from onion_gateway.audit.policy import Severity
from onion_gateway.config import ServeSettings
from onion_gateway.errors import OnionGatewayError, SetupError, TorError
from onion_gateway.render import (MainCf, MasterCf, SystemdUnit, TorrcInclude, TorrcPiece, TorsocksConf,
                                  Wrapper, render)
from onion_gateway.setup_config import DEFAULT_SOCKS, SetupSettings, default_transport_map
from onion_gateway.tor import TorControl, check_hidden_service_dir, read_onion_address, verify_config

log = logging.getLogger(__name__)

MIN_POSTFIX = (3, 5)            # transport_maps nexthop lists "[a]:25, [b]:25" (postfix 3.5 RELEASE_NOTES)
JOURNAL = "journal"
MANIFEST = "manifest.json"
WRAPPER_NAME = "smtp_tor"


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
    """

    action: OnionAction
    hidden_service_dir: Path
    address: str | None
    current_ports: list[tuple[int, str, int]] | None


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
    :param managed: what setup owns in main.cf/master.cf after this plan: ``{"services": ["name/type",
        ...], "transport_map": table}``; a later run removes what it no longer wants.
    """

    settings: SetupSettings
    files: list[FileChange]
    postconf: list[PostconfChange]
    onion: OnionStep
    notes: list[str] = field(default_factory=list)
    srv_service: str = "onion-mx"
    managed: dict[str, Any] = field(default_factory=dict)
    listener_record: dict[str, Any] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        """True when nothing would change."""
        return not self.files and not self.postconf and self.onion.action is OnionAction.REUSE

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


def prepend_transport_map(ours: str, existing: str, previous: str | None = None) -> str:
    """``transport_maps`` with *ours* first and every map the user had kept, in order.

    :param ours: our table, e.g. ``socketmap:inet:127.0.0.1:6014:onion``.
    :param existing: the current raw value (comma or space separated).
    :param previous: the table an earlier setup run put there (dropped if it is not *ours*).
    :returns: the new value; unchanged if *ours* is already first and *previous* is gone.
    """
    items = [i for i in existing.replace(",", " ").split() if i and (i != previous or i == ours)]
    if items and items[0] == ours and previous in (None, ours):
        return existing.strip()
    rest = [i for i in items if i != ours]
    return ", ".join([ours, *rest])


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
            entries[-1] += line.split()
        else:
            entries.append(line.split())
    result = []
    for words in entries:
        if len(words) < 8:
            raise SetupError(f"master.cf template: entry {' '.join(words)!r} has fewer than 8 fields")
        result.append((f"{words[0]}/{words[1]}", " ".join(words)))
    return result


def main_parameters(text: str) -> list[str]:
    """The ``name = value`` lines of rendered main.cf text (comments and blank lines skipped)."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


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

def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SetupError(f"cannot read {path}: {exc.strerror}") from exc


def _file_change(path: Path, new: str, mode: int, what: str) -> FileChange | None:
    old = _read(path)
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
    wanted.append(("torrc piece", settings.torrc_piece,
                   render(TorrcPiece(hidden_service_dir=str(settings.hidden_service_dir),
                                     onion_port=settings.onion_port, target=listener)), 0o644))
    if settings.torrc is not None:
        torrc_old = _read(settings.torrc) or b""
        include_line = f"%include {settings.torrc_piece}"
        if include_line not in (line.strip() for line in torrc_old.decode("utf-8", "replace").splitlines()):
            text = torrc_old.decode("utf-8", "replace")
            if text and not text.endswith("\n"):
                text += "\n"
            text += render(TorrcInclude(piece=str(settings.torrc_piece)))
            wanted.append(("torrc %include", settings.torrc, text, stat.S_IMODE(settings.torrc.stat().st_mode)))
    else:
        notes.append(f"add '%include {settings.torrc_piece}' to the torrc Tor starts with, or the onion "
                     "service is lost at Tor's next restart")
    if settings.systemd_unit is not None:
        exec_start = f"{_serve_command(settings)} serve --config {settings.serve_config}"
        wanted.append(("systemd unit", settings.systemd_unit, render(SystemdUnit(exec_start=exec_start)), 0o644))
    for what, path, text, mode in wanted:
        if not path.parent.is_dir():
            raise SetupError(f"cannot write the {what}: directory {path.parent} does not exist; nothing was changed")
        change = _file_change(path, text, mode, what)
        if change is not None:
            files.append(change)

    with tempfile.TemporaryDirectory(prefix="onion-gateway-plan-") as scratch_name:
        scratch = Path(scratch_name)
        _check_wrapper_syntax(scratch, render(wrapper))
        managed_before = _load_manifest(settings.state_dir).get("managed") or {}
        postconf_changes, managed = _plan_postconf(settings, scratch, serve.transport, command, transport_map,
                                                   managed_before)
        notes += check_listener_policy(scratch / "postfix", listener)
        if settings.torrc is not None:
            _verify_torrc_in_scratch(settings, scratch)

    onion = _plan_onion(settings, notes)
    if not (daemon_directory / "smtp").exists():
        notes.append(f"{daemon_directory}/smtp does not exist: check daemon_directory")
    if settings.systemd_unit is not None and any(c.path == settings.systemd_unit for c in files):
        notes.append(f"then: systemctl daemon-reload && systemctl enable --now {settings.systemd_unit.name}")
    record = {"listener": listener, "onion_port": settings.onion_port,
              "hidden_service_dir": str(settings.hidden_service_dir),
              "postfix_config_dir": str(cdir) if cdir is not None else None}
    return Plan(settings, files, postconf_changes, onion, notes, serve.service, managed, record)


def _check_wrapper_syntax(scratch: Path, text: str) -> None:
    path = scratch / WRAPPER_NAME
    path.write_text(text)
    done = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise SetupError(f"the rendered smtp_tor wrapper is not valid sh: {done.stderr.strip()}")


def _plan_postconf(settings: SetupSettings, scratch: Path, transport: str, command: str, transport_map: str,
                   before: dict[str, Any]) -> tuple[list[PostconfChange], dict[str, Any]]:
    cdir = _postfix_dir(settings)
    pdir = scratch / "postfix"
    pdir.mkdir()
    originals = {}
    for name in ("main.cf", "master.cf"):
        data = _read(cdir / name)
        if data is None:
            raise SetupError(f"{cdir / name} does not exist: is {cdir} a Postfix configuration directory?")
        originals[name] = data
        shutil.copy2(cdir / name, pdir / name)
    existing = postfix.postconf(settings.postfix_config_dir, "-h", "transport_maps").strip()
    main_text = render(MainCf(transport_maps=prepend_transport_map(transport_map, existing,
                                                                   before.get("transport_map"))))
    master_text = render(MasterCf(transport=transport, command=command,
                                  tls_level=settings.smtp_tls_security_level, listener=str(settings.listener),
                                  relay_restrictions=settings.relay_restrictions,
                                  recipient_restrictions=settings.recipient_restrictions))
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
    return changes, {"services": keys, "transport_map": transport_map}


def _age(path: Path) -> None:
    # Postfix waits (300 ms steps) to read a table or main.cf modified within the current second, in case
    # it is still being written (dict_load_file); the scratch copies are ours and complete, so date them back.
    past = path.stat().st_mtime - 10
    os.utime(path, (past, past))


def _verify_torrc_in_scratch(settings: SetupSettings, scratch: Path) -> None:
    assert settings.torrc is not None
    piece = scratch / "piece.torrc"
    piece.write_text(render(TorrcPiece(hidden_service_dir=str(settings.hidden_service_dir),
                                       onion_port=settings.onion_port, target=str(settings.listener))))
    text = (_read(settings.torrc) or b"").decode("utf-8", "replace")
    include_line = f"%include {settings.torrc_piece}"
    lines = [line for line in text.splitlines() if line.strip() != include_line]
    torrc = scratch / "torrc"
    torrc.write_text("\n".join(lines) + f"\n%include {piece}\n")
    try:
        verify_config(torrc, settings.tor_defaults_torrc)
    except TorError as exc:
        raise SetupError(f"{exc}; nothing was changed") from exc


def _plan_onion(settings: SetupSettings, notes: list[str]) -> OnionStep:
    hs_dir = settings.hidden_service_dir
    with TorControl(settings.tor_control, settings.tor_control_password_file) as tor:
        ports = tor.hidden_service_ports(hs_dir)
        running_torrc = tor.config_file()
    if settings.torrc is not None and running_torrc is not None and running_torrc != settings.torrc:
        notes.append(f"the running Tor reads {running_torrc}, not {settings.torrc}: the onion service "
                     "will not survive a Tor restart unless that torrc includes the piece")
    address = None
    if (hs_dir / "hostname").exists():
        address = read_onion_address(hs_dir)
    wanted = [(settings.onion_port, settings.listener.host, settings.listener.port)]
    if ports == wanted and address is not None:
        return OnionStep(OnionAction.REUSE, hs_dir, address, ports)
    return OnionStep(OnionAction.CONFIGURE if address else OnionAction.CREATE, hs_dir, address, ports)


# ------------------------------------------------------------------------------------- journal

class _Journal:
    """The record of one run in progress: what each path held before this run touched it."""

    def __init__(self, state_dir: Path, context: dict[str, Any]) -> None:
        self.dir = state_dir / JOURNAL
        try:
            self.dir.mkdir(mode=0o700)      # atomic: also keeps a second concurrent run out
        except FileExistsError:
            raise SetupError(f"{self.dir} exists: another setup is running, or an interrupted run must be "
                             "recovered first (run setup again without --dry-run)") from None
        (self.dir / "backups").mkdir(mode=0o700)
        self.data: dict[str, Any] = {"context": context, "files": [], "onion": None}
        self._save()

    def _save(self) -> None:
        _write_json(self.dir / "journal.json", self.data)

    def record_file(self, path: Path) -> None:
        """Back up *path* (or note that it does not exist) before it is changed."""
        if any(e["path"] == str(path) for e in self.data["files"]):
            return
        entry = _backup(path, self.dir / "backups", len(self.data["files"]))
        entry["backup"] = f"{JOURNAL}/backups/{entry['backup']}" if entry["backup"] else None
        self.data["files"].append(entry)
        self._save()

    def record_onion(self, hs_dir: Path, ports: list | None) -> None:
        """Note the onion service's state before Tor is told to serve it."""
        self.data["onion"] = {"hidden_service_dir": str(hs_dir), "dir_existed": hs_dir.exists(),
                              "ports_before": ports}
        self._save()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _backup(path: Path, backup_dir: Path, index: int) -> dict[str, Any]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return {"path": str(path), "backup": None}
    name = f"{index:04d}"
    shutil.copy2(path, backup_dir / name)
    with open(backup_dir / name, "rb") as fh:
        os.fsync(fh.fileno())
    return {"path": str(path), "backup": name, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}


def _restore_file(entry: dict[str, Any], state_dir: Path) -> None:
    path = Path(entry["path"])
    if entry["backup"] is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.onion-gateway-restore")
    shutil.copy2(state_dir / entry["backup"], tmp)
    os.chown(tmp, entry["uid"], entry["gid"])
    os.chmod(tmp, entry["mode"])
    os.replace(tmp, path)


def _write_file(change: FileChange) -> None:
    path = change.path
    tmp = path.with_name(f".{path.name}.onion-gateway-new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, change.new)
        os.fchmod(fd, change.mode)
        if change.old is not None:
            st = path.stat()
            os.fchown(fd, st.st_uid, st.st_gid)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _undo(data: dict[str, Any], state_dir: Path, tor_settings: SetupSettings | None) -> list[str]:
    """Restore a journal's or manifest's files (newest first) and the onion service; report what was done."""
    done = []
    for entry in reversed(data.get("files", [])):
        _restore_file(entry, state_dir)
        done.append(("restored " if entry["backup"] else "removed ") + entry["path"])
    onion = data.get("onion")
    if onion and tor_settings is not None:
        hs_dir = Path(onion["hidden_service_dir"])
        try:
            with TorControl(tor_settings.tor_control, tor_settings.tor_control_password_file) as tor:
                before = onion.get("ports_before")
                if before:
                    (port, host, target), = before[:1]
                    tor.set_hidden_service(hs_dir, port, host, target)
                elif tor.remove_hidden_service(hs_dir):
                    done.append(f"tor no longer serves {hs_dir}")
        except TorError as exc:
            done.append(f"could not reach Tor to drop the onion service ({exc}); its torrc no longer has it")
        if not onion.get("dir_existed") and data.get("kind") == "journal" and hs_dir.exists():
            shutil.rmtree(hs_dir, ignore_errors=True)   # a key made by this failed run, never published
            done.append(f"removed the new key directory {hs_dir}")
    return done


def recover_interrupted(settings: SetupSettings) -> list[str]:
    """Repair a run that was killed mid-way: restore everything its journal recorded.

    :param settings: the settings (state directory, Tor control port).
    :returns: what was restored, one line per file; empty if there was nothing to recover.
    :raises SetupError: if the journal cannot be read or a file cannot be restored.
    """
    jdir = settings.state_dir / JOURNAL
    if not jdir.exists():
        return []
    try:
        data = json.loads((jdir / "journal.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        if not (jdir / "backups").is_dir() or not any((jdir / "backups").iterdir()):
            shutil.rmtree(jdir)        # killed before the first backup: nothing was changed
            return [f"removed an empty journal in {jdir}"]
        raise SetupError(f"cannot read the journal {jdir}/journal.json ({exc}); restore by hand from "
                         f"{jdir}/backups") from exc
    data["kind"] = "journal"
    try:
        done = _undo(data, settings.state_dir, settings)
    except OSError as exc:
        raise SetupError(f"recovering the interrupted run failed: {exc}; the backups are in {jdir}") from exc
    cdir = data.get("context", {}).get("postfix_config_dir")
    _reload_if_running(Path(cdir) if cdir else None, settings.reload)
    shutil.rmtree(jdir)
    log.warning("recovered an interrupted setup run: %s", "; ".join(done) or "nothing had changed yet")
    return done or ["nothing had changed yet"]


def _reload_if_running(config_dir: Path | None, enabled: bool) -> bool:
    if enabled and postfix.is_running(config_dir):
        postfix.reload(config_dir)
        return True
    return False


# --------------------------------------------------------------------------------------- apply

def apply_plan(plan: Plan) -> SetupResult:
    """Carry out *plan*: the one function that writes. All or nothing.

    Order: files written whole; main.cf/master.cf through postconf (the result must equal the plan's
    bytes); ``postfix check``; ``tor --verify-config``; the onion service through the control port;
    ``postfix reload`` if Postfix runs. Each change is journalled first; on any failure everything is
    restored (:func:`_undo`) and nothing is left in the state directory's journal.

    :param plan: from :func:`plan_setup`.
    :returns: the :class:`SetupResult` (address, SRV records, changed files, notes).
    :raises SetupError: naming the failed step and what to do; every change has been undone.
    """
    s = plan.settings
    if plan.is_empty:
        address = plan.onion.address or read_onion_address(s.hidden_service_dir)
        _refresh_listener_record(s.state_dir, plan.listener_record)
        return SetupResult(address, _records(plan, address), [], ["nothing to change", *plan.notes])
    stale = [str(c.path) for c in [*plan.files, *plan.postconf] if _read(c.path) != c.old]
    if stale:
        raise SetupError(f"changed since the plan was made: {', '.join(stale)}; nothing was changed, run setup again")
    s.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cdir = s.postfix_config_dir
    journal = _Journal(s.state_dir, {"postfix_config_dir": str(cdir) if cdir else None, "managed": plan.managed,
                                     "listener": plan.listener_record})
    step = "start"
    try:
        for change in plan.files:
            step = f"writing the {change.what} {change.path}"
            journal.record_file(change.path)
            _write_file(change)
        for pc in plan.postconf:
            step = f"changing {pc.path} with postconf"
            journal.record_file(pc.path)
            for flag, arg in pc.commands:
                postfix.postconf(cdir, flag, arg)
            if pc.path.read_bytes() != pc.new:
                raise SetupError(f"{pc.path} changed while setup ran (the result differs from the plan)")
        step = "postfix check"
        postfix.check(cdir)
        if s.torrc is not None:
            step = f"tor --verify-config -f {s.torrc}"
            verify_config(s.torrc, s.tor_defaults_torrc)
        step = "setting up the onion service through Tor's control port"
        address = plan.onion.address
        if plan.onion.action is not OnionAction.REUSE:
            journal.record_onion(s.hidden_service_dir, plan.onion.current_ports)
            with TorControl(s.tor_control, s.tor_control_password_file) as tor:
                address = tor.set_hidden_service(s.hidden_service_dir, s.onion_port, s.listener.host or "",
                                                 s.listener.port or 0)
        assert address is not None
        step = "postfix reload"
        _reload_if_running(cdir, s.reload)
    except (OnionGatewayError, OSError, KeyboardInterrupt) as exc:
        log.info("setup failed while %s: %s; restoring", step, exc)
        try:
            _undo({**journal.data, "kind": "journal"}, s.state_dir, s)
            _reload_if_running(cdir, s.reload)
        except (OnionGatewayError, OSError) as undo_exc:
            raise SetupError(f"setup failed while {step} ({exc}), and restoring failed too ({undo_exc}): "
                             f"the backups are in {journal.dir}; run setup again to retry the repair") from exc
        shutil.rmtree(journal.dir, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise SetupError(f"setup failed while {step}: {exc}. Every change was undone; fix the cause and run "
                         "setup again (--dry-run shows the plan)") from exc
    _commit(journal, s.state_dir)
    changed = [c.path for c in plan.files] + [c.path for c in plan.postconf]
    return SetupResult(address, _records(plan, address), changed, plan.notes)


def _records(plan: Plan, address: str) -> list[str]:
    s = plan.settings
    return srv_records(s.domains, address, service=plan.srv_service, ttl_seconds=s.srv_ttl_seconds,
                       priority=s.srv_priority, weight=s.srv_weight, port=s.onion_port)


def _load_manifest(state_dir: Path) -> dict[str, Any]:
    path = state_dir / MANIFEST
    if not path.exists():
        return {"files": [], "onion": None}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SetupError(f"cannot read {path}: {exc}") from exc


def _refresh_listener_record(state_dir: Path, record: dict[str, Any]) -> None:
    """Add the listener record to a manifest written before setup recorded it (else nothing is written)."""
    manifest = _load_manifest(state_dir)
    if (state_dir / MANIFEST).exists() and manifest.get("listener") != record:
        manifest["listener"] = record
        _write_json(state_dir / MANIFEST, manifest)


def _commit(journal: _Journal, state_dir: Path) -> None:
    """Fold the journal into the manifest: keep the first-ever original of each file."""
    manifest = _load_manifest(state_dir)
    known = {e["path"] for e in manifest["files"]}
    (state_dir / "backups").mkdir(exist_ok=True, mode=0o700)
    for entry in journal.data["files"]:
        if entry["path"] in known:
            continue
        if entry["backup"] is not None:
            name = f"{len(manifest['files']):04d}-{Path(entry['path']).name}"
            os.replace(state_dir / entry["backup"], state_dir / "backups" / name)
            entry = {**entry, "backup": f"backups/{name}"}
        manifest["files"].append(entry)
    if manifest.get("onion") is None and journal.data["onion"] is not None:
        manifest["onion"] = journal.data["onion"]
    manifest["managed"] = journal.data["context"]["managed"]
    manifest["listener"] = journal.data["context"].get("listener")
    _write_json(state_dir / MANIFEST, manifest)
    shutil.rmtree(journal.dir)


def rollback(settings: SetupSettings) -> list[str]:
    """Undo every setup run: restore each changed file byte for byte, remove each created file.

    The onion service is dropped from the running Tor; its key directory stays (the address may be
    published; remove the directory yourself to forget it). Postfix is checked and reloaded if running.

    :param settings: the settings (state directory, Postfix directory, Tor control port).
    :returns: what was done, one line per item; empty if there was nothing to roll back.
    :raises SetupError: if a file cannot be restored or Postfix rejects the restored configuration.
    """
    recovered = recover_interrupted(settings)
    manifest = _load_manifest(settings.state_dir)
    if not manifest["files"] and not manifest.get("onion"):
        return recovered
    try:
        done = _undo({**manifest, "kind": "manifest"}, settings.state_dir, settings)
        postfix.check(settings.postfix_config_dir)
        _reload_if_running(settings.postfix_config_dir, settings.reload)
    except (OnionGatewayError, OSError) as exc:
        raise SetupError(f"rollback failed: {exc}; the original files are in {settings.state_dir}/backups") from exc
    if manifest.get("onion"):
        done.append(f"kept the onion key directory {manifest['onion']['hidden_service_dir']} (delete it to "
                    "forget the address)")
    shutil.rmtree(settings.state_dir / "backups", ignore_errors=True)
    (settings.state_dir / MANIFEST).unlink()
    try:
        settings.state_dir.rmdir()
    except OSError:
        pass                         # not empty: something else lives there
    return recovered + done
