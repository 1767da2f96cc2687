"""Apply a setup plan with a write-ahead journal, recover an interrupted run, roll back: the one place
that writes.

Shaped after certbot's installers (``save`` as the one writing point, ``recovery_routine``,
``rollback_checkpoints``); the records and their undo are in :mod:`.journal`. Map:

- :func:`apply_plan`: each change is recorded in the journal (fsync'd) before it is made: whole files
  (:class:`~.journal.FileWrite`, written through a symlink so a link stays a link), the torrc
  ``%include`` (:class:`~.journal.LineAppend`), each ``postconf -e`` / ``-M`` / ``-MX``
  (:class:`~.journal.ParamChange`, :class:`~.journal.ServiceChange`), the onion service
  (:class:`~.journal.OnionChange`); then ``postfix check``, ``tor --verify-config``, ``postfix reload``.
  Any failure (or Ctrl-C) undoes the journal and raises :class:`~onion_gateway.errors.SetupError` naming
  the failed step. Success folds the journal into the manifest (:func:`_commit`).
- :func:`recover_interrupted`: a journal left behind means a run was killed; the next start undoes it
  (or, if the manifest already names the run, only removes the journal). Idempotent and crash-safe.
- :func:`rollback`: undoes every recorded change, newest first, each only if it is still as setup left
  it: later edits of the postmaster are kept (:func:`onion_gateway.setup.journal.undo`); then
  :func:`settle_tor` takes what setup put into the running Tor out where its reverted torrc no longer
  declares it.
- :func:`migrate_legacy`: a manifest of onion-gateway 0.1 (whole-file copies) becomes the records it
  stands for (:mod:`.legacy`) before anything else reads it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onion_gateway import postfix
from onion_gateway.errors import ConfigError, OnionGatewayError, SetupError, TorError
from onion_gateway.setup.journal import (FileWrite, Journal, LineAppend, OnionChange, ParamChange, ServiceChange,
                                         UnitStart, systemctl,
                                         change_from_json, change_to_json, current_parameter, current_service,
                                         describe, fault_point, read_nofollow, store_blob, undo,
                                         write_atomic)
from onion_gateway.setup.plan import (FileChange, OnionAction, Plan, SetupResult, daemon_problem, read_bytes,
                                      srv_records)
from onion_gateway.setup.settings import SetupSettings
from onion_gateway.setup.state import MANIFEST, StateLock, check_state_dir, load_manifest
from onion_gateway.tor import TorControl, dump_config, read_onion_address, verify_config

log = logging.getLogger(__name__)

DAEMON_READY_SECONDS = 30.0       # how long setup waits for a unit it started to answer


# ------------------------------------------------------------------------------------------ helpers

def _tor(settings: SetupSettings):
    return lambda: TorControl(settings.tor_control, settings.tor_control_password_file)


def _load_manifest(state_dir: Path) -> dict[str, Any]:
    try:
        return load_manifest(state_dir)
    except ConfigError as exc:
        raise SetupError(str(exc)) from exc


def _write_manifest(state_dir: Path, manifest: dict[str, Any]) -> None:
    fault_point("manifest write")
    write_atomic(state_dir / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))
    fault_point("manifest written")


def _reload_if_running(config_dir: Path | None, enabled: bool) -> bool:
    if enabled and postfix.is_running(config_dir):
        postfix.reload(config_dir)
        return True
    return False


def _write_file(state_dir: Path, journal: Journal, change: FileChange) -> None:
    """Record then write one whole file, through a symlink (the link stays a link)."""
    path = Path(os.path.realpath(change.path))
    old = read_bytes(path)
    st = path.stat() if old is not None else None
    before = store_blob(state_dir, old) if old is not None else None
    after = store_blob(state_dir, change.new)
    journal.record(FileWrite(str(path), before, after, None if st is None else st.st_mode & 0o7777,
                             None if st is None else st.st_uid, None if st is None else st.st_gid))
    write_atomic(path, change.new, change.mode)
    os.chmod(path, change.mode)
    if st is not None:
        os.chown(path, st.st_uid, st.st_gid)
    fault_point(f"wrote {path}")


def _append_lines(journal: Journal, change: FileChange) -> None:
    """Record then append the torrc %include lines (the rest of the torrc is never rewritten from the plan)."""
    path = Path(os.path.realpath(change.path))
    old = change.old or b""
    added = change.new[len(old):] if change.new.startswith(old) else change.new
    text = added.decode("utf-8")
    journal.record(LineAppend(str(path), text))
    current = path.read_bytes()
    if current != old:
        raise SetupError(f"{path} changed while setup ran")
    st = path.stat()
    write_atomic(path, change.new, st.st_mode & 0o7777)
    os.chown(path, st.st_uid, st.st_gid)
    fault_point(f"appended to {path}")


def _postconf(journal: Journal, cdir: Path | None, flag: str, arg: str) -> None:
    """Record then run one postconf command."""
    where = str(cdir) if cdir else None
    if flag == "-e":
        name, _, value = arg.partition("=")
        name = name.strip()
        journal.record(ParamChange(where, name, current_parameter(where, name), value.strip()))
    elif flag == "-M":
        key, _, entry = arg.partition("=")
        journal.record(ServiceChange(where, key, current_service(where, key), entry))
    elif flag == "-MX":
        journal.record(ServiceChange(where, arg, current_service(where, arg), None))
    else:                                                     # pragma: no cover - plan only makes these
        raise SetupError(f"unknown postconf step {flag}")
    postfix.edit(cdir, flag, arg)
    fault_point(f"postconf {flag} {arg.partition('=')[0]}")


def _wait_for_daemon(table: str, config_dir: Path | None, timeout_seconds: float) -> None:
    """Wait until the daemon answers through *table* (as Postfix will ask it).

    :raises SetupError: when it still does not answer after *timeout_seconds*.
    """
    import time

    deadline = time.monotonic() + timeout_seconds
    while (problem := daemon_problem(table, config_dir)) is not None:
        if time.monotonic() > deadline:
            raise SetupError(f"the lookup daemon still does not answer at {table} after {timeout_seconds:.0f} s "
                             f"({problem}); see journalctl -u onion-gateway")
        time.sleep(0.5)


def _undo_all(changes: list, state_dir: Path, settings: SetupSettings | None, *, remove_new_key: bool,
              forget=None) -> list[str]:
    """Undo *changes* newest first; after each, *forget* (if given) drops it from the stored record."""
    done = []
    tor = _tor(settings) if settings is not None else None
    for index in range(len(changes) - 1, -1, -1):
        line = undo(changes[index], state_dir, tor, remove_new_key=remove_new_key)
        fault_point(f"undid {type(changes[index]).__name__}")
        if line:
            done.append(line)
        if forget is not None:
            forget(index)
    return done


def _sweep(state_dir: Path, keep_blobs: set[str]) -> None:
    """Remove temporary files a killed write left and blobs nothing names any more."""
    for tmp in state_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    blobs = state_dir / "blobs"
    if blobs.is_dir():
        for blob in blobs.iterdir():
            if blob.name not in keep_blobs:
                blob.unlink(missing_ok=True)


def _tidy(state_dir: Path) -> None:
    """With no manifest and no journal left, setup owns nothing: remove the lock, blobs and the directory."""
    if (state_dir / MANIFEST).exists() or (state_dir / Journal.NAME).exists():
        return
    shutil.rmtree(state_dir / "blobs", ignore_errors=True)
    (state_dir / "lock").unlink(missing_ok=True)
    try:
        state_dir.rmdir()
    except OSError:
        pass                         # not empty: something else lives there


def _blob_names(changes: list) -> set[str]:
    names = set()
    for change in changes:
        if isinstance(change, FileWrite):
            names.update(n for n in (change.before, change.after) if n)
    return names


# -------------------------------------------------------------------------------------- recover

def recover_interrupted(settings: SetupSettings) -> list[str]:
    """Repair a run that was killed mid-way: undo everything its journal recorded.

    If the manifest already names the run, the kill came after the commit: only the journal goes.
    Idempotent and crash-safe: each undo checks the current state first, and the journal is removed last.

    :param settings: the settings (state directory, Tor control port).
    :returns: what was undone, one line per change; empty if there was nothing to recover.
    :raises SetupError: if the state directory is not trusted, the journal cannot be read or a change
        cannot be undone.
    """
    state_dir = settings.state_dir
    if not check_state_dir(state_dir, create=False):
        return []
    with StateLock(state_dir):
        done = _recover_locked(settings)
    _tidy(state_dir)
    return done


def migrate_legacy(state_dir: Path) -> list[str]:
    """Replace a manifest of onion-gateway 0.1 (whole-file copies) by the records it stands for
    (:func:`onion_gateway.setup.legacy.legacy_changes`), so that rollback keeps later edits.

    Crash-safe: the blobs are stored first, then the manifest is replaced in one atomic write, then 0.1's
    copies are removed (a kill before that only leaves them to the next run, which removes them).
    Call with the state lock held.

    :param state_dir: the (checked) state directory.
    :returns: one line saying what was converted; empty when the manifest is not 0.1's.
    :raises SetupError: when a 0.1 run was killed and left its journal (one line: what to do; nothing
        was changed), or a copy the manifest names is missing.
    """
    from onion_gateway.setup.legacy import (LEGACY_BACKUPS, LEGACY_RUN, check_no_legacy_journal, is_legacy,
                                            legacy_changes, remove_legacy_backups)

    check_no_legacy_journal(state_dir)
    manifest = _load_manifest(state_dir)
    if not is_legacy(manifest):
        if manifest.get("changes") is not None and (state_dir / LEGACY_BACKUPS).is_dir():
            remove_legacy_backups(state_dir)
        return []
    changes, blobs = legacy_changes(manifest, state_dir)
    for data in blobs.values():
        store_blob(state_dir, data)
    _write_manifest(state_dir, {"runs": [LEGACY_RUN], "changes": [change_to_json(c) for c in changes],
                                "managed": manifest.get("managed") or {}, "listener": manifest.get("listener")})
    remove_legacy_backups(state_dir)
    log.warning("converted the whole-file manifest of onion-gateway 0.1 in %s into %d records", state_dir,
                len(changes))
    return [f"read the manifest of onion-gateway 0.1 (whole-file copies) as {len(changes)} changes: later edits "
            "are kept; a file it had replaced is restored and your current version kept as "
            "PATH.onion-gateway-kept"]


def _recover_locked(settings: SetupSettings) -> list[str]:
    state_dir = settings.state_dir
    migrate_legacy(state_dir)
    data = Journal.load(state_dir)
    manifest = _load_manifest(state_dir)
    if data is None:
        _sweep(state_dir, _blob_names([change_from_json(c) for c in manifest.get("changes", [])]))
        return []
    if data.get("run") in manifest.get("runs", []):
        done = ["the interrupted run had finished; removed its journal"]
    else:
        try:
            done = _undo_all(data["changes"], state_dir, settings, remove_new_key=True)
        except OSError as exc:
            raise SetupError(f"recovering the interrupted run failed: {exc}; its journal is "
                             f"{state_dir / Journal.NAME}") from exc
        cdir = data.get("context", {}).get("postfix_config_dir")
        _reload_if_running(Path(cdir) if cdir else None, settings.reload)
        done = done or ["nothing had changed yet"]
    fault_point("journal unlink")
    (state_dir / Journal.NAME).unlink()
    _sweep(state_dir, _blob_names([change_from_json(c) for c in manifest.get("changes", [])]))
    log.warning("recovered an interrupted setup run: %s", "; ".join(done))
    return done


# ---------------------------------------------------------------------------------------- apply

def apply_plan(plan: Plan) -> SetupResult:
    """Carry out *plan*: the one function that writes. All or nothing.

    Order: files written whole; the torrc ``%include``; main.cf/master.cf through postconf (the result
    must equal the plan's bytes); ``postfix check``; ``tor --verify-config``; the onion service through
    the control port; ``postfix reload`` if Postfix runs. Each change is journalled first; on any failure
    everything is undone and the journal removed.

    :param plan: from :func:`plan_setup`.
    :returns: the :class:`SetupResult` (address, SRV records, changed files, notes).
    :raises SetupError: naming the failed step and what to do; every change has been undone.
    """
    s = plan.settings
    if plan.is_empty:
        address = plan.onion.address or read_onion_address(s.hidden_service_dir)
        _refresh_listener_record(s.state_dir, plan.listener_record)
        return SetupResult(address, _records(plan, address), [], ["nothing to change", *plan.notes])
    if plan.blocker is not None:
        raise SetupError(plan.blocker)
    stale = [str(c.path) for c in [*plan.files, *plan.postconf] if read_bytes(c.path) != c.old]
    if stale:
        raise SetupError(f"changed since the plan was made: {', '.join(stale)}; nothing was changed, run setup again")
    check_state_dir(s.state_dir, create=True)
    try:
        with StateLock(s.state_dir):
            migrate_legacy(s.state_dir)
            if Journal.load(s.state_dir) is not None:
                raise SetupError(f"an interrupted run left {s.state_dir / Journal.NAME}: run setup again to "
                                 "repair it")
            return _apply_locked(plan)
    finally:
        _tidy(s.state_dir)


def _apply_locked(plan: Plan) -> SetupResult:
    s = plan.settings
    cdir = s.postfix_config_dir
    journal = Journal(s.state_dir, uuid.uuid4().hex,
                      {"postfix_config_dir": str(cdir) if cdir else None, "managed": plan.managed,
                       "listener": plan.listener_record})
    step = "start"
    try:
        for change in plan.files:
            step = f"writing the {change.what} {change.path}"
            if change.what == "torrc %include" and change.old is not None:
                _append_lines(journal, change)
            else:
                _write_file(s.state_dir, journal, change)
        if plan.start_units:
            step = f"starting {' and '.join(plan.start_units)} (systemctl enable --now) and waiting for it to answer"
            systemctl("daemon-reload")
            for unit in plan.start_units:               # the socket first: it holds the daemon's listeners
                journal.record(UnitStart(unit))
                systemctl("enable", "--now", unit)
                fault_point(f"unit {unit} started")
            _wait_for_daemon(plan.daemon_table, cdir, DAEMON_READY_SECONDS)
        for pc in plan.postconf:
            step = f"changing {pc.path} with postconf"
            for flag, arg in pc.commands:
                _postconf(journal, cdir, flag, arg)
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
            journal.record(OnionChange(str(s.hidden_service_dir), s.hidden_service_dir.exists(),
                                       plan.onion.current_ports, plan.onion.current_options))
            with TorControl(s.tor_control, s.tor_control_password_file) as tor:
                address = tor.set_hidden_service(s.hidden_service_dir, s.onion_port, s.listener.host or "",
                                                 s.listener.port or 0, options=plan.onion.options)
            fault_point("onion service set")
        assert address is not None
        step = "postfix reload"
        reloaded = _reload_if_running(cdir, s.reload)
        fault_point("postfix reloaded")
        if reloaded:
            step = f"the live relay audit of the new listener {s.listener}"
            verify_live_listener(s, address)
    except (OnionGatewayError, OSError, KeyboardInterrupt) as exc:
        log.info("setup failed while %s: %s; restoring", step, exc)
        try:
            _undo_all(journal.changes, s.state_dir, s, remove_new_key=True)
            _reload_if_running(cdir, s.reload)
        except (OnionGatewayError, OSError) as undo_exc:
            raise SetupError(f"setup failed while {step} ({exc}), and restoring failed too ({undo_exc}): "
                             f"the journal is {journal.path}; run setup again to retry the repair") from exc
        journal.path.unlink(missing_ok=True)
        _sweep(s.state_dir, _blob_names([change_from_json(c) for c in
                                          _load_manifest(s.state_dir).get("changes", [])]))
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise SetupError(f"setup failed while {step}: {exc}. Every change was undone; fix the cause and run "
                         "setup again (--dry-run shows the plan)") from exc
    _commit(journal, s.state_dir, address)
    changed = [c.path for c in plan.files] + [c.path for c in plan.postconf]
    return SetupResult(address, _records(plan, address), changed, plan.notes)


def verify_live_listener(settings: SetupSettings, address: str, wait_seconds: float = 15.0) -> None:
    """Run the relay audit's live probes against the listener Postfix now serves (never DATA).

    The static refusal (:func:`~onion_gateway.setup.plan.check_listener_policy`) judges a model of the
    policy; tables it cannot evaluate (``relay_domains = regexp:...``) are only judged by asking the real
    smtpd. Called after ``postfix reload``; any relaying probe fails the run, which undoes everything.

    :param settings: setup's settings (listener, Postfix directory).
    :param address: the gateway's onion address (the probes must not count it as foreign).
    :param wait_seconds: how long to wait for the reloaded master to listen.
    :raises SetupError: when a probe was relayed, naming the probes.
    """
    import socket
    import time

    from onion_gateway.audit import AuditOptions, audit_listener
    from onion_gateway.audit.report import Outcome

    host, port = settings.listener.host or "127.0.0.1", settings.listener.port or 0
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SetupError(f"the reloaded Postfix does not listen on {settings.listener}") from None
            time.sleep(0.2)
    report = audit_listener(str(settings.listener), AuditOptions(config_dir=settings.postfix_config_dir,
                                                                 own_onion=address, timeout_seconds=10))
    if report.outcome is Outcome.OPEN_RELAY:
        relayed = "; ".join(f"{p.spec.name}: RCPT {', '.join(p.spec.rcpt_to)} accepted" for p in report.accepted)
        raise SetupError(f"the live relay audit of {settings.listener} found an open relay ({relayed})")


def _records(plan: Plan, address: str) -> list[str]:
    s = plan.settings
    return srv_records(s.domains, address, service=plan.srv_service, ttl_seconds=s.srv_ttl_seconds,
                       priority=s.srv_priority, weight=s.srv_weight, port=s.onion_port)


def _refresh_listener_record(state_dir: Path, record: dict[str, Any]) -> None:
    """Update the record in a manifest written by an older setup (else nothing is written)."""
    if not check_state_dir(state_dir, create=False) or read_nofollow(state_dir / MANIFEST) is None:
        return
    manifest = _load_manifest(state_dir)
    old = manifest.get("listener") or {}
    merged = {**record, "onion_address": old.get("onion_address", record.get("onion_address"))}
    if old != merged:
        with StateLock(state_dir):
            manifest["listener"] = merged
            _write_manifest(state_dir, manifest)


def _commit(journal: Journal, state_dir: Path, address: str) -> None:
    """Fold the journal into the manifest (one atomic write that names the run), then drop the journal."""
    manifest = _load_manifest(state_dir)
    manifest["runs"] = [*manifest.get("runs", []), journal.run]
    manifest["changes"] = [*manifest.get("changes", []), *(change_to_json(c) for c in journal.changes)]
    manifest["managed"] = journal.context["managed"]
    manifest["listener"] = {**(journal.context.get("listener") or {}), "onion_address": address}
    _write_manifest(state_dir, manifest)
    fault_point("journal unlink")
    journal.path.unlink()
    fault_point("journal unlinked")


# ------------------------------------------------------------------------------------- rollback

def rollback_preview(settings: SetupSettings) -> list[str]:
    """What :func:`rollback` would do, changing nothing (``setup --rollback --dry-run``).

    :param settings: the settings (state directory).
    :returns: one line per step, an interrupted run's repair first; empty if there is nothing to roll back.
    :raises SetupError: if the state directory is not trusted or the manifest or journal cannot be read.
    """
    state_dir = settings.state_dir
    if not check_state_dir(state_dir, create=False):
        return []
    from onion_gateway.setup.legacy import check_no_legacy_journal, is_legacy, legacy_changes

    lines = []
    check_no_legacy_journal(state_dir)
    journal = Journal.load(state_dir)
    manifest = _load_manifest(state_dir)
    if journal is not None and journal.get("run") not in manifest.get("runs", []):
        lines += [f"repair an interrupted run: {describe(c)}" for c in reversed(journal["changes"])]
    if is_legacy(manifest):
        changes = legacy_changes(manifest, state_dir)[0]
        lines.append("read the manifest of onion-gateway 0.1 (whole-file copies) as the changes below")
    else:
        changes = [change_from_json(c) for c in manifest.get("changes", [])]
    lines += [describe(c) for c in reversed(changes)]
    if changes:
        things = tor_owned(manifest, changes).names()
        if things:
            lines.append(f"take {things} out of the running Tor where its reverted torrc no longer declares them "
                         "(other onion services are kept)")
    return lines


@dataclass(frozen=True)
class RollbackResult:
    """What ``setup --rollback`` did.

    :param done: one line per item undone (empty: nothing to roll back).
    :param tor_pending: when the running Tor could not be brought in line with its reverted torrc (its
        control port unreachable, or its torrc unreadable), one line saying what it still serves and that
        it must be reloaded; ``None`` when the running Tor was settled.
    """

    done: list[str]
    tor_pending: str | None = None


def rollback(settings: SetupSettings) -> RollbackResult:
    """Undo what setup did, newest first, keeping every later edit of the postmaster.

    A parameter or service is set back only if it still holds what setup set; a file setup wrote and
    that was edited since is moved aside (``PATH.onion-gateway-kept``), never overwritten; an edited
    ``transport_maps`` loses only setup's tables. Postfix is checked and reloaded if running. Then the
    running Tor is brought in line with its reverted torrc for what setup put there
    (:func:`settle_tor`); other onion services are never touched. The onion key directory stays (the
    address may be published). If Tor cannot be reached the file changes are still all undone and
    :attr:`RollbackResult.tor_pending` says that Tor must be reloaded.

    :param settings: the settings (state directory, Postfix directory, Tor control port).
    :returns: a :class:`RollbackResult`.
    :raises SetupError: if the state directory is not trusted, a change cannot be undone, or Postfix
        rejects the result.
    """
    state_dir = settings.state_dir
    if not check_state_dir(state_dir, create=False):
        return RollbackResult([])
    try:
        with StateLock(state_dir):
            return _rollback_locked(settings)
    finally:
        _tidy(state_dir)


def _rollback_locked(settings: SetupSettings) -> RollbackResult:
    state_dir = settings.state_dir
    converted = migrate_legacy(state_dir)
    recovered = converted + _recover_locked(settings)
    manifest = _load_manifest(state_dir)
    changes = [change_from_json(c) for c in manifest.get("changes", [])]
    if not changes:
        if (state_dir / MANIFEST).exists():
            (state_dir / MANIFEST).unlink()
        return RollbackResult(recovered)
    owned = tor_owned(manifest, changes)
    tor_problem: str | None = None
    try:
        with _tor(settings)():
            pass
    except TorError as exc:
        tor_problem = f"Tor's control port {settings.tor_control} could not be reached ({exc})"

    def forget(index: int) -> None:
        manifest["changes"] = manifest["changes"][:index]
        _write_manifest(state_dir, manifest)

    try:
        done = _undo_all(changes, state_dir, settings if tor_problem is None else None, remove_new_key=False,
                         forget=forget)
        postfix.check(settings.postfix_config_dir)
        _reload_if_running(settings.postfix_config_dir, settings.reload)
    except (OnionGatewayError, OSError) as exc:
        raise SetupError(f"rollback failed: {exc}; run it again to continue (what is undone stays undone)") from exc
    if tor_problem is None:
        try:
            done += settle_tor(settings, owned)
        except TorError as exc:
            tor_problem = str(exc)
    pending = None
    if tor_problem is not None:
        pending = (f"{tor_problem}: the running Tor may still serve {owned.names() or 'what setup set'} "
                   "until it re-reads its torrc, which no longer has them: reload Tor (systemctl reload tor, "
                   "or kill -HUP tor's pid)")
    onion = [c for c in changes if isinstance(c, OnionChange)]
    if onion:
        done.append(f"kept the onion key directory {onion[0].hidden_service_dir} (delete it to forget "
                    "the address)")
    fault_point("manifest unlink")
    (state_dir / MANIFEST).unlink()
    _sweep(state_dir, set())
    return RollbackResult(recovered + done, pending)


@dataclass(frozen=True)
class TorOwned:
    """What setup put into the running Tor, as its manifest says.

    :param hidden_service_dirs: the onion services setup created (Tor did not serve them before setup).
    :param metrics_port: the ``MetricsPort`` its torrc piece set (``IP:PORT``), or ``None``.
    """

    hidden_service_dirs: tuple[str, ...]
    metrics_port: str | None

    def names(self) -> str:
        """``"the onion service of DIR and MetricsPort IP:PORT"`` (``""`` when there is nothing)."""
        things = [f"the onion service of {d}" for d in self.hidden_service_dirs]
        return " and ".join(things + ([f"MetricsPort {self.metrics_port}"] if self.metrics_port else []))


def tor_owned(manifest: dict[str, Any], changes: list) -> TorOwned:
    """Setup's part of the running Tor, from the manifest: each HiddenServiceDir whose first
    :class:`~.journal.OnionChange` found Tor not serving it (or, with no such record because the run
    found Tor already serving it, the recorded ``hidden_service_dir``), and the piece's MetricsPort.

    :param manifest: the manifest (``managed.tor`` and, from older setups, ``listener.hidden_service_dir``).
    :param changes: its records.
    :returns: a :class:`TorOwned`.
    """
    managed_tor = (manifest.get("managed") or {}).get("tor") or {}
    first: dict[str, OnionChange] = {}
    for change in changes:
        if isinstance(change, OnionChange):
            first.setdefault(change.hidden_service_dir, change)
    dirs = [d for d, c in first.items() if not c.ports_before]
    recorded = managed_tor.get("hidden_service_dir") or (manifest.get("listener") or {}).get("hidden_service_dir")
    if recorded and recorded not in first:
        dirs.append(recorded)
    return TorOwned(tuple(dirs), managed_tor.get("metrics_port") or None)


def settle_tor(settings: SetupSettings, owned: TorOwned) -> list[str]:
    """Make the running Tor drop what setup put there and its reverted torrc no longer declares.

    Tor keeps a ``SETCONF`` (and what it read from the torrc piece at its last start) until it re-reads
    its torrc. A ``SIGNAL RELOAD`` would do that, but it also drops every service other controllers set
    with ``SETCONF`` alone (control-spec §3.1: such changes live in memory only) and acts on a torrc we
    have not checked; so setup changes only its own options, on one control connection: each onion
    service in *owned* that the torrc Tor reads (``GETINFO config-file``, expanded by
    ``tor --dump-config``) no longer declares is removed from ``HiddenServiceOptions`` (the other
    services are written back unchanged), and ``MetricsPort``/``MetricsPortPolicy`` are set to what the
    torrc declares when setup's MetricsPort is running and no longer declared.

    :param settings: the settings (control address, torrc and defaults file as fallbacks).
    :param owned: from :func:`tor_owned`.
    :returns: one line per option taken out.
    :raises TorError: if Tor cannot be reached or refuses, or its torrc cannot be read.
    """
    done = []
    with _tor(settings)() as tor:
        torrc = tor.config_file() or settings.torrc
        declared = dump_config(torrc, settings.tor_defaults_torrc) if torrc is not None else []
        declared_dirs = {os.path.realpath(v) for k, v in declared if k == "HiddenServiceDir"}
        for hs_dir in owned.hidden_service_dirs:
            if os.path.realpath(hs_dir) not in declared_dirs and tor.remove_hidden_service(Path(hs_dir)):
                done.append(f"tor no longer serves {hs_dir}")
        if owned.metrics_port and owned.metrics_port in tor.conf_values("MetricsPort"):
            wanted = [v for k, v in declared if k == "MetricsPort"]
            if owned.metrics_port not in wanted:
                tor.set_conf_values("MetricsPortPolicy", [v for k, v in declared if k == "MetricsPortPolicy"])
                tor.set_conf_values("MetricsPort", wanted)
                done.append(f"tor no longer has MetricsPort {owned.metrics_port}")
    return done
