"""The reverter: setup's changes as typed records, a crash-safe journal, and undo that keeps later edits.

Shaped after certbot's ``Reverter``, but a record says what setup changed, not a copy of the file:

==================  =====================================  =============================================
record              setup did                              undo (only if the thing is still as setup left it)
==================  =====================================  =============================================
:class:`ParamChange`   ``postconf -e name = after``         ``postconf -e name = before`` / ``postconf -X``;
                                                            an edited list value loses only setup's items
:class:`ServiceChange` ``postconf -M key=after`` / ``-MX``  ``postconf -M key=before`` / ``postconf -MX key``
:class:`FileWrite`     wrote a whole file (content blob)    restore the old blob / remove; an edited file is
                                                            moved aside to ``PATH.onion-gateway-kept``
:class:`LineAppend`    appended one line (torrc %include)   remove that line, keep every other line
:class:`OnionChange`   told Tor to serve an onion           restore Tor's ports / stop serving it
==================  =====================================  =============================================

Every undo compares the current state with ``after`` and ``before`` first, so it is idempotent: a
recovery killed half-way is simply run again. Records are written to the journal *before* the change is
made (write-ahead); an undo of a change that never happened finds ``before`` and does nothing.

State directory (:mod:`.state` checks it is root's and not writable by others; files are opened with
``O_NOFOLLOW``)::

    STATE_DIR/lock            flock(2)'d for the whole run: one setup at a time
    STATE_DIR/journal.json    {"run": ID, "changes": [...]} of the run in progress (absent when idle)
    STATE_DIR/blobs/SHA256    file contents (before and after), written before a record names them
    STATE_DIR/manifest.json   {"runs": [ID...], "changes": [...], "managed": {...}, "listener": {...}}

Commit = one atomic replace of manifest.json (which names the run), then unlink journal.json: a kill
between the two is recognised at the next start (the run is in the manifest) and only the journal is
removed. :func:`fault_point` is the fault-injection hook: the tests arm it to kill the process at
every journal step in turn (``ONION_GATEWAY_FAULT_AT=N`` kills at the Nth step).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import stat
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from onion_gateway import postfix
from onion_gateway.errors import SetupError
from onion_gateway.postfix_syntax import split_fields, split_list

log = logging.getLogger(__name__)

FAULT_ENV = "ONION_GATEWAY_FAULT_AT"          # kill -9 ourselves at the Nth fault point (tests only)
FAULT_LOG_ENV = "ONION_GATEWAY_FAULT_LOG"     # append each fault point's name to this file (tests only)
KEPT_SUFFIX = ".onion-gateway-kept"
_fault_count = 0


def fault_point(name: str) -> None:
    """A journal step: the tests' fault-injection hook (no effect unless the environment arms it).

    :param name: the step (for the log the tests read to count the steps).
    """
    global _fault_count
    _fault_count += 1
    log_path = os.environ.get(FAULT_LOG_ENV)
    if log_path:
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(f"{_fault_count} {name}\n")
    armed = os.environ.get(FAULT_ENV)
    if armed and armed.isdigit() and int(armed) == _fault_count:
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------------ records

@dataclass(frozen=True)
class ParamChange:
    """A main.cf parameter setup set with ``postconf -e``.

    :param config_dir: the Postfix configuration directory (``None``: the default instance).
    :param name: the parameter.
    :param before: its explicit value before (``None``: not set in main.cf).
    :param after: the value setup set.
    """

    config_dir: str | None
    name: str
    before: str | None
    after: str


@dataclass(frozen=True)
class ServiceChange:
    """A master.cf service setup added, replaced (``postconf -M``) or removed (``postconf -MX``).

    :param config_dir: the Postfix configuration directory.
    :param key: ``name/type``.
    :param before: the entry before (``name type private ... command args``), ``None`` if absent.
    :param after: the entry setup left, ``None`` if it removed it.
    """

    config_dir: str | None
    key: str
    before: str | None
    after: str | None


@dataclass(frozen=True)
class FileWrite:
    """A file setup wrote whole.

    :param path: the file (a symlink's target when the path was a link: the link stays a link).
    :param before: the blob (sha256) of its content before, ``None`` if it did not exist.
    :param after: the blob of what setup wrote.
    :param mode: its permission bits before (``None`` if it did not exist).
    :param uid: its owner before.
    :param gid: its group before.
    """

    path: str
    before: str | None
    after: str
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class LineAppend:
    """Lines setup appended to a file it does not own (the torrc ``%include`` and its header).

    :param path: the file.
    :param line: the appended text (one or more lines); undo removes exactly these lines wherever they are.
    """

    path: str
    line: str


@dataclass(frozen=True)
class OnionChange:
    """Tor was told (control port) to serve the onion service of *hidden_service_dir*.

    :param hidden_service_dir: the HiddenServiceDir.
    :param dir_existed: whether the directory (the key) existed before.
    :param ports_before: what Tor served from it before (``[[port, host, target_port]]``), ``None``: nothing.
    :param options_before: the service's other options Tor had before (``{"HiddenServiceMaxStreams": "64"}``),
        restored with the ports; ``None`` in records written before it was kept (Tor's are then left as they are).
    """

    hidden_service_dir: str
    dir_existed: bool
    ports_before: list | None
    options_before: dict | None = None


@dataclass(frozen=True)
class UnitStart:
    """setup enabled and started a systemd unit (the lookup daemon) that was not running.

    :param unit: the unit name (``onion-gateway.service``).
    """

    unit: str


Change = ParamChange | ServiceChange | FileWrite | LineAppend | OnionChange | UnitStart
_TYPES: dict[str, type] = {"param": ParamChange, "service": ServiceChange, "file": FileWrite,
                           "line": LineAppend, "onion": OnionChange, "unit": UnitStart}


def systemctl(*args: str) -> None:
    """Run ``systemctl ARGS`` (the one place setup talks to systemd).

    :raises SetupError: when it fails, with its stderr.
    """
    import subprocess

    try:
        done = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"systemctl {' '.join(args)}: {exc}") from exc
    if done.returncode != 0:
        raise SetupError(f"systemctl {' '.join(args)} failed: {done.stderr.strip() or done.returncode}")
_NAMES = {cls: name for name, cls in _TYPES.items()}


def change_to_json(change: Change) -> dict[str, Any]:
    """A record as JSON: its fields plus ``"type"``."""
    return {"type": _NAMES[type(change)], **asdict(change)}


def change_from_json(data: Any) -> Change:
    """The record a :func:`change_to_json` dict stands for.

    :raises SetupError: on an unknown type or missing fields (a damaged journal or manifest).
    """
    try:
        cls = _TYPES[data["type"]]
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
    except (KeyError, TypeError) as exc:
        raise SetupError(f"unreadable journal record {data!r}: {exc}") from exc


def describe(change: Change) -> str:
    """One line saying what undoing *change* does (for ``--rollback --dry-run`` and the report)."""
    if isinstance(change, ParamChange):
        return (f"remove {change.name} from main.cf" if change.before is None
                else f"set {change.name} in main.cf back to {change.before!r}")
    if isinstance(change, ServiceChange):
        return (f"remove the service {change.key} from master.cf" if change.before is None
                else f"restore the service {change.key} in master.cf")
    if isinstance(change, FileWrite):
        return f"remove {change.path}" if change.before is None else f"restore {change.path}"
    if isinstance(change, LineAppend):
        return f"remove the line {change.line!r} from {change.path}"
    if isinstance(change, UnitStart):
        return f"stop and disable {change.unit}"
    return f"stop serving the onion service in {change.hidden_service_dir} (its key is kept)"


# --------------------------------------------------------------------------------- safe file I/O

def read_nofollow(path: Path) -> bytes | None:
    """The bytes of *path* opened without following a symlink; ``None`` if it does not exist.

    :raises SetupError: if *path* is a symlink or cannot be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SetupError(f"cannot open {path} ({exc.strerror}; a symlink there is refused)") from exc
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write *path* via a fresh temporary file (``O_EXCL|O_NOFOLLOW``), fsync, rename, fsync the directory.

    A planted ``PATH.tmp`` (symlink or file) is never followed: the temporary name is unique and created
    exclusively.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store_blob(state_dir: Path, data: bytes) -> str:
    """Keep *data* in ``STATE_DIR/blobs`` under its sha256 (written once, never moved).

    :returns: the blob's name (hex sha256).
    """
    name = hashlib.sha256(data).hexdigest()
    blobs = state_dir / "blobs"
    blobs.mkdir(mode=0o700, exist_ok=True)
    path = blobs / name
    if read_nofollow(path) != data:
        write_atomic(path, data)
    return name


def load_blob(state_dir: Path, name: str) -> bytes:
    """The content of blob *name*.

    :raises SetupError: if it is missing or does not match its name.
    """
    data = read_nofollow(state_dir / "blobs" / name)
    if data is None or hashlib.sha256(data).hexdigest() != name:
        raise SetupError(f"the backup {state_dir / 'blobs' / name} is missing or damaged")
    return data


def digest(data: bytes | None) -> str | None:
    """The blob name *data* would have (``None`` for ``None``)."""
    return None if data is None else hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------- undo

def _norm(value: str | None) -> str | None:
    return None if value is None else " ".join(value.split())


def _norm_entry(value: str | None) -> str | None:
    return None if value is None else " ".join(_norm_field(f) for f in split_fields(value))


def _norm_field(field: str) -> str:
    # postconf -M and -P store "-o { name = a, b }" as "-o {name=a, b}" (master.cf(5) since Postfix 3.0):
    # setup records the entry as it rendered it, so compare both in that form
    if not (field.startswith("{") and field.endswith("}")):
        return field
    name, sep, value = field[1:-1].strip().partition("=")
    return "{" + (f"{name.strip()}={' '.join(value.split())}" if sep else " ".join(name.split())) + "}"


def current_parameter(config_dir: str | None, name: str) -> str | None:
    """The explicit main.cf value of *name* (``postconf -n NAME``), ``None`` if it is not set."""
    out = postfix.postconf(Path(config_dir) if config_dir else None, "-n", name)
    for line in out.splitlines():
        key, sep, value = line.partition(" =")
        if sep and key.strip() == name:
            return value.strip()
    return None


def current_service(config_dir: str | None, key: str) -> str | None:
    """The master.cf entry *key* as one line (``postconf -M name/type``), ``None`` if absent."""
    out = postfix.postconf(Path(config_dir) if config_dir else None, "-M", key).strip()
    return out or None


def undo(change: Change, state_dir: Path, tor=None, *, remove_new_key: bool = False) -> str | None:
    """Undo one record if the thing is still as setup left it; keep anything edited since.

    :param change: the record.
    :param state_dir: where the blobs are.
    :param tor: a callable returning a connected :class:`onion_gateway.tor.TorControl` context manager
        (for :class:`OnionChange`), or ``None`` to skip Tor.
    :param remove_new_key: remove a key directory this run created (a failed run: never published).
    :returns: one line for the report, or ``None`` when there was nothing to undo (already undone).
    :raises SetupError: if a backup is missing; :class:`PostfixError` if postconf fails.
    """
    if isinstance(change, ParamChange):
        return _undo_param(change)
    if isinstance(change, ServiceChange):
        return _undo_service(change)
    if isinstance(change, FileWrite):
        return _undo_file(change, state_dir)
    if isinstance(change, LineAppend):
        return _undo_line(change)
    if isinstance(change, UnitStart):
        systemctl("disable", "--now", change.unit)       # idempotent: a stopped, disabled unit stays so
        return f"stopped and disabled {change.unit}"
    return _undo_onion(change, tor, remove_new_key)


def _undo_param(change: ParamChange) -> str | None:
    cdir = Path(change.config_dir) if change.config_dir else None
    now = current_parameter(change.config_dir, change.name)
    if _norm(now) == _norm(change.before):
        return None
    if _norm(now) == _norm(change.after):
        if change.before is None:
            postfix.edit(cdir, "-X", change.name)
            return f"main.cf: removed {change.name}"
        postfix.edit(cdir, "-e", f"{change.name} = {change.before}")
        return f"main.cf: set {change.name} back to {change.before!r}"
    assert now is not None
    ours = [t for t in split_list(change.after) if t not in split_list(change.before or "")]
    items = split_list(now)
    if ours and any(t in items for t in ours):           # a list edited since: drop only setup's items
        kept = [t for t in items if t not in ours]
        if kept:
            postfix.edit(cdir, "-e", f"{change.name} = {', '.join(kept)}")
        else:
            postfix.edit(cdir, "-X", change.name)
        return f"main.cf: removed setup's {', '.join(ours)} from {change.name}, kept your later edits ({now!r})"
    return f"main.cf: {change.name} was edited since setup ({now!r}): kept as it is"


def _undo_service(change: ServiceChange) -> str | None:
    cdir = Path(change.config_dir) if change.config_dir else None
    now = current_service(change.config_dir, change.key)
    if _norm_entry(now) == _norm_entry(change.before):
        return None
    if _norm_entry(now) != _norm_entry(change.after):
        return f"master.cf: the service {change.key} was edited since setup: kept as it is"
    if change.before is None:
        postfix.edit(cdir, "-MX", change.key)
        return f"master.cf: removed the service {change.key}"
    postfix.edit(cdir, "-M", f"{change.key}={change.before}")
    return f"master.cf: restored the service {change.key}"


def _undo_file(change: FileWrite, state_dir: Path) -> str | None:
    path = Path(change.path)
    try:
        now = path.read_bytes()
    except FileNotFoundError:
        now = None
    now_digest = digest(now)
    if now_digest == change.before:
        return None
    note = ""
    if now_digest != change.after:                        # edited since setup: keep it aside, never lose it
        kept = path.with_name(path.name + KEPT_SUFFIX)
        os.replace(path, kept)
        note = f" (it was edited since setup: your version is kept as {kept})"
    if change.before is None:
        path.unlink(missing_ok=True)
        return f"removed {path}{note}"
    write_atomic(path, load_blob(state_dir, change.before), change.mode if change.mode is not None else 0o644)
    if change.uid is not None and change.gid is not None:
        os.chown(path, change.uid, change.gid)
    return f"restored {path}{note}"


def _undo_line(change: LineAppend) -> str | None:
    path = Path(change.path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    lines = text.splitlines(keepends=True)
    ours = {line.strip() for line in change.line.splitlines() if line.strip()}
    kept = [line for line in lines if line.strip() not in ours]
    if len(kept) == len(lines):
        return None
    target = Path(os.path.realpath(path))
    st = target.stat()
    write_atomic(target, "".join(kept).encode("utf-8"), stat.S_IMODE(st.st_mode))
    os.chown(target, st.st_uid, st.st_gid)
    return f"removed the line {change.line!r} from {path}, kept the rest"


def _undo_onion(change: OnionChange, tor, remove_new_key: bool) -> str | None:
    from onion_gateway.errors import TorError

    hs_dir = Path(change.hidden_service_dir)
    done = None
    if tor is not None:
        try:
            with tor() as control:
                if change.ports_before:
                    (port, host, target), = change.ports_before[:1]
                    options = None if change.options_before is None else list(change.options_before.items())
                    control.set_hidden_service(hs_dir, port, host, target, options=options)
                    done = f"tor serves {hs_dir} as before"
                elif control.remove_hidden_service(hs_dir):
                    done = f"tor no longer serves {hs_dir}"
        except TorError as exc:
            done = f"could not reach Tor to drop the onion service ({exc}); its torrc no longer has it"
    if remove_new_key and not change.dir_existed and hs_dir.exists():
        import shutil

        shutil.rmtree(hs_dir, ignore_errors=True)       # a key made by a failed run, never published
        done = (done + "; " if done else "") + f"removed the new key directory {hs_dir}"
    return done


# --------------------------------------------------------------------------------------- journal

class Journal:
    """The write-ahead record of one run: :meth:`record` before each change, fsync'd.

    :param state_dir: the (checked) state directory.
    :param run: this run's id.
    :param context: what the manifest gets on commit (``managed``, ``listener``, ``postfix_config_dir``).
    """

    NAME = "journal.json"

    def __init__(self, state_dir: Path, run: str, context: dict[str, Any]) -> None:
        self.state_dir = state_dir
        self.path = state_dir / self.NAME
        self.run = run
        self.context = context
        self.changes: list[Change] = []
        self._save()

    def _save(self) -> None:
        data = {"run": self.run, "context": self.context, "changes": [change_to_json(c) for c in self.changes]}
        fault_point("journal write")
        write_atomic(self.path, json.dumps(data, indent=1).encode("utf-8"))
        fault_point("journal written")

    def record(self, change: Change) -> None:
        """Add *change* (write-ahead: call before making it)."""
        self.changes.append(change)
        self._save()

    @staticmethod
    def load(state_dir: Path) -> dict[str, Any] | None:
        """The journal of an interrupted run: ``{"run", "context", "changes": [Change...]}``, or ``None``.

        :raises SetupError: if it exists but cannot be read.
        """
        raw = read_nofollow(state_dir / Journal.NAME)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            data["changes"] = [change_from_json(c) for c in data.get("changes", [])]
            return data
        except (ValueError, AttributeError, TypeError) as exc:
            raise SetupError(f"cannot read the journal {state_dir / Journal.NAME}: {exc}") from exc
