"""Apply a setup plan with a journal, recover an interrupted run, roll back: the one place that writes.

Shaped after certbot's installers (``save`` as the one writing point, ``recovery_routine``,
``rollback_checkpoints``). Map:

- :func:`apply_plan`: before each change the file's current bytes go to a **journal** under the state
  directory (fsync'd); then ``postfix check`` and ``tor --verify-config`` run on the real files, the
  onion service is applied through Tor's control port, and Postfix is reloaded if it runs. Any failure
  (or Ctrl-C) restores everything from the journal and raises :class:`~onion_gateway.errors.SetupError`
  naming the failed step. On success the journal is folded into the **manifest** (:mod:`.state`).
- :func:`recover_interrupted`: a journal left behind means a run was killed mid-way; the next start
  restores it before doing anything else.
- :func:`rollback`: undoes what setup did and drops the onion service from the running Tor (its key
  directory is kept: the address may be published in DNS).

State directory layout::

    STATE_DIR/manifest.json      {"files": [...], "onion": {...}, "managed": {...}, "listener": <SetupRecord>}
    STATE_DIR/backups/NNNN       original bytes of changed files
    STATE_DIR/journal/journal.json, journal/backups/NNNN   the run in progress (absent when idle)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from onion_gateway import postfix
from onion_gateway.errors import ConfigError, OnionGatewayError, SetupError, TorError
from onion_gateway.setup.plan import FileChange, OnionAction, Plan, SetupResult, read_bytes, srv_records
from onion_gateway.setup.settings import SetupSettings
from onion_gateway.setup.state import JOURNAL, MANIFEST, load_manifest
from onion_gateway.tor import TorControl, read_onion_address, verify_config

log = logging.getLogger(__name__)


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
    if plan.blocker is not None:
        raise SetupError(plan.blocker)
    stale = [str(c.path) for c in [*plan.files, *plan.postconf] if read_bytes(c.path) != c.old]
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
    try:
        return load_manifest(state_dir)
    except ConfigError as exc:
        raise SetupError(str(exc)) from exc


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


def rollback_preview(settings: SetupSettings) -> list[str]:
    """What :func:`rollback` would do, changing nothing (``setup --rollback --dry-run``).

    :param settings: the settings (state directory).
    :returns: one line per step (``restore PATH``, ``remove PATH``, ``stop serving the onion service in DIR``),
        an interrupted run's repair first; empty if there is nothing to roll back.
    :raises SetupError: if the manifest or journal cannot be read.
    """
    lines = []
    jfile = settings.state_dir / JOURNAL / "journal.json"
    if jfile.exists():
        try:
            journal = json.loads(jfile.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SetupError(f"cannot read the journal {jfile}: {exc}") from exc
        lines += [f"repair an interrupted run: {line}" for line in _describe_undo(journal)]
    lines += _describe_undo(_load_manifest(settings.state_dir))
    return lines


def _describe_undo(data: dict[str, Any]) -> list[str]:
    lines = [("restore " if entry.get("backup") else "remove ") + entry["path"]
             for entry in reversed(data.get("files", []))]
    if data.get("onion"):
        lines.append(f"stop serving the onion service in {data['onion']['hidden_service_dir']} (its key is kept)")
    return lines


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
