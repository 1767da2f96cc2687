"""Manifests written by onion-gateway 0.1 (whole-file copies), read as the typed records of :mod:`.journal`.

0.1's setup kept a copy of each file's bytes from before its first run, and its rollback wrote every copy
back, losing every later edit. Its state directory::

    STATE_DIR/manifest.json   {"files": [{"path", "backup": "backups/0000-main.cf" | null, "mode", "uid", "gid"}],
                               "onion": {"hidden_service_dir", "dir_existed", "ports_before"} | null,
                               "managed": {"services": ["name/type", ...], "transport_map": TABLE}, "listener": {...}}
    STATE_DIR/backups/NNNN-NAME   the copies ("backup" is relative to STATE_DIR; null: setup created the file)
    STATE_DIR/journal/            a 0.1 run that was killed (journal.json, backups/)

:func:`legacy_changes` turns such a manifest into records whose undo keeps later edits wherever setup's
part can be told apart from the postmaster's:

============================  ==========================================================================
0.1 copied                    record (its undo: :func:`onion_gateway.setup.journal.undo`)
============================  ==========================================================================
main.cf                       :class:`~.journal.ParamChange` per parameter setup's template sets
                              (``transport_maps``): before = the copy's value, after = setup's tables put
                              in front of it as 0.1 did; an edited list loses only setup's tables
master.cf                     :class:`~.journal.ServiceChange` per service setup managed: before = the
                              copy's entry (or none), after = the entry now
a file setup appended to      :class:`~.journal.LineAppend` of the lines it added (the torrc's
(the torrc)                   ``%include`` of a file it wrote, and the header above it)
a file setup created          :class:`~.journal.FileWrite`: removed
any other file it replaced    :class:`~.journal.FileWrite`: the copy is written back and the current
                              version kept as ``PATH.onion-gateway-kept`` (0.1 kept no copy of what it
                              wrote, so an edit since cannot be told apart: nothing is lost)
the onion service             :class:`~.journal.OnionChange`
============================  ==========================================================================

Nothing here writes: :func:`onion_gateway.setup.apply.migrate_legacy` stores the result.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from onion_gateway.errors import SetupError
from onion_gateway.render import MANAGED_BY, MainCf, render
from onion_gateway.setup.journal import (Change, FileWrite, LineAppend, OnionChange, ParamChange, ServiceChange,
                                         current_parameter, current_service, digest, read_nofollow)
from onion_gateway.setup.plan import main_parameters, prepend_transport_map

#: The run id the converted records are filed under in the new manifest.
LEGACY_RUN = "onion-gateway-0.1"
#: FileWrite.after of a file 0.1 replaced: no blob has this name, so undo always keeps the current file aside.
UNKNOWN_AFTER = "unknown: written by onion-gateway 0.1, which kept no copy"
LEGACY_JOURNAL = "journal"
LEGACY_BACKUPS = "backups"


def is_legacy(manifest: dict[str, Any]) -> bool:
    """True for a manifest in 0.1's format (``files``/``onion`` and no ``changes``)."""
    return "changes" not in manifest and ("files" in manifest or "onion" in manifest)


def check_no_legacy_journal(state_dir: Path) -> None:
    """Refuse the state directory of a 0.1 run that was killed and never repaired.

    :raises SetupError: (one line: what to do) when ``STATE_DIR/journal/`` exists; nothing was changed.
    """
    jdir = Path(state_dir) / LEGACY_JOURNAL
    if jdir.is_dir():
        raise SetupError(f"{jdir} is the journal of an onion-gateway 0.1 setup run that was killed; this version "
                         f"cannot repair it: put back each file {jdir}/journal.json lists from its \"backup\" "
                         f"(relative to {state_dir}; no backup: delete the file), then remove {jdir}; "
                         "nothing was changed")


def legacy_changes(manifest: dict[str, Any], state_dir: Path) -> tuple[list[Change], dict[str, bytes]]:
    """The records a 0.1 manifest stands for, in the order 0.1 made the changes (undo runs newest first).

    Runs ``postconf`` on scratch copies of the saved main.cf/master.cf; writes nothing else.

    :param manifest: the manifest (:func:`is_legacy`).
    :param state_dir: where its copies are.
    :returns: ``(records, {blob name: bytes})``: the blobs the records name, to be stored before them.
    :raises SetupError: when a copy it names is missing, lies outside ``STATE_DIR/backups`` or the manifest
        is damaged.
    """
    entries = manifest.get("files") or []
    managed = manifest.get("managed") or {}
    if not isinstance(entries, list) or not all(isinstance(e, dict) and e.get("path") for e in entries):
        raise SetupError(f"the onion-gateway 0.1 manifest in {state_dir} is damaged (its \"files\" list)")
    if any(Path(e["path"]).name == "master.cf" for e in entries) and not managed.get("services"):
        raise SetupError(f"the onion-gateway 0.1 manifest in {state_dir} does not say which master.cf services "
                         "setup added (a pre-release manifest without \"managed\"): put back each file it lists "
                         f"from its \"backup\" (relative to {state_dir}; no backup: delete the file), then remove "
                         f"{state_dir}; nothing was changed")
    copies = {e["path"]: _copy(state_dir, e) for e in entries}
    recorded = set(copies)
    changes: list[Change] = []
    blobs: dict[str, bytes] = {}
    for entry in entries:
        path = Path(entry["path"])
        before = copies[entry["path"]]
        now = path.read_bytes() if path.exists() else None
        if path.name == "main.cf":
            changes += _main_cf(path, before, copies, managed)
        elif path.name == "master.cf":
            changes += _master_cf(path, before, copies, managed)
        elif (lines := _appended(before, now, recorded)) is not None:
            changes.append(LineAppend(str(path), lines))
        elif now is None:
            continue                        # gone already: nothing of setup's left to undo
        elif before is None:
            blobs[digest(now)] = now
            changes.append(FileWrite(str(path), None, digest(now)))
        else:
            blobs[digest(before)] = before
            changes.append(FileWrite(str(path), digest(before), UNKNOWN_AFTER, entry.get("mode"), entry.get("uid"),
                                     entry.get("gid")))
    onion = manifest.get("onion")
    if isinstance(onion, dict) and onion.get("hidden_service_dir"):
        changes.append(OnionChange(str(onion["hidden_service_dir"]), bool(onion.get("dir_existed")),
                                   onion.get("ports_before") or None))
    return changes, blobs


def _copy(state_dir: Path, entry: dict[str, Any]) -> bytes | None:
    name = entry.get("backup")
    if name is None:
        return None
    parts = Path(str(name)).parts
    if len(parts) != 2 or parts[0] != LEGACY_BACKUPS or parts[1] in ("..", "."):
        raise SetupError(f"the onion-gateway 0.1 manifest in {state_dir} names a backup outside "
                         f"{state_dir / LEGACY_BACKUPS}: {name!r}")
    data = read_nofollow(Path(state_dir) / name)
    if data is None:
        raise SetupError(f"the backup {Path(state_dir) / name} of {entry['path']} (onion-gateway 0.1) is missing; "
                         "nothing was changed")
    return data


def _appended(before: bytes | None, now: bytes | None, recorded: set[str]) -> str | None:
    """The lines setup added to a file it did not own: an ``%include`` of a file it wrote and the
    managed-by header above it; ``None`` if there are none (a file written whole)."""
    if before is None or now is None:
        return None
    old = set(before.decode("utf-8", "replace").splitlines())
    ours = []
    for line in now.decode("utf-8", "replace").splitlines():
        text = line.strip()
        if line in old:
            continue
        if text == f"# {MANAGED_BY}" or (text.startswith("%include ") and text.split(None, 1)[1] in recorded):
            ours.append(line + "\n")
    return "".join(ours) if any(line.lstrip().startswith("%include") for line in ours) else None


def _scratch(copies: dict[str, bytes | None], config_dir: Path) -> tempfile.TemporaryDirectory:
    """A scratch Postfix directory holding the copies of main.cf/master.cf (the current file where 0.1
    kept none, i.e. did not change it)."""
    scratch = tempfile.TemporaryDirectory(prefix="onion-gateway-legacy-")
    for name in ("main.cf", "master.cf"):
        data = copies.get(str(config_dir / name))
        if data is None:
            src = config_dir / name
            data = src.read_bytes() if src.exists() else b""
        (Path(scratch.name) / name).write_bytes(data)
        past = os.stat(scratch.name).st_mtime - 10          # postconf waits on files younger than a second
        os.utime(Path(scratch.name) / name, (past, past))
    return scratch


def _main_cf(path: Path, before: bytes | None, copies, managed: dict[str, Any]) -> list[Change]:
    config_dir = path.parent
    names = [line.partition("=")[0].strip() for line in main_parameters(render(MainCf(transport_maps="x")))]
    ours = [t for t in (managed.get("own_table"), managed.get("transport_map")) if t]
    changes: list[Change] = []
    with _scratch(copies, config_dir) as scratch:
        for name in names:
            old = current_parameter(scratch, name) if before is not None else None
            if name == "transport_maps" and ours:
                after = prepend_transport_map(ours, old or "")
            else:
                after = current_parameter(str(config_dir), name)
                if after is None:
                    continue
            changes.append(ParamChange(str(config_dir), name, old, after))
    return changes


def _master_cf(path: Path, before: bytes | None, copies, managed: dict[str, Any]) -> list[Change]:
    config_dir = path.parent
    changes: list[Change] = []
    with _scratch(copies, config_dir) as scratch:
        for key in managed.get("services") or []:
            after = current_service(str(config_dir), key)
            if after is None:
                continue                    # already gone
            old = current_service(scratch, key) if before is not None else None
            changes.append(ServiceChange(str(config_dir), key, old, after))
    return changes


def remove_legacy_backups(state_dir: Path) -> None:
    """Remove 0.1's copies once the records that replace them (and their blobs) are stored."""
    shutil.rmtree(Path(state_dir) / LEGACY_BACKUPS, ignore_errors=True)
