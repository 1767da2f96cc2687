"""The one seam to Postfix's own tools: postconf, postfix check, postmap (subprocess lives here only).

Every function takes the Postfix configuration directory (``None`` = the default instance,
``/etc/postfix``) and raises :class:`~onion_gateway.errors.PostfixError` with the command and its
stderr when Postfix says no. Nothing here edits main.cf or master.cf by hand: changes go through
``postconf -e`` / ``-M`` / ``-P`` (postconf(1)).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from onion_gateway.errors import PostfixError
from onion_gateway.postfix_syntax import split_list

COMMAND_TIMEOUT_SECONDS = 60


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        raise PostfixError(f"{argv[0]} not found: is Postfix installed?")
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired as exc:
        raise PostfixError(f"{' '.join(argv)} did not finish in {COMMAND_TIMEOUT_SECONDS} s") from exc
    if check and done.returncode != 0:
        raise PostfixError(f"{' '.join(argv)} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done


def _c(config_dir: Path | None) -> list[str]:
    return ["-c", str(config_dir)] if config_dir is not None else []


def postconf(config_dir: Path | None, *args: str) -> str:
    """Run ``postconf [-c DIR] ARGS`` and return its stdout.

    :raises PostfixError: if postconf is missing or exits non-zero.
    """
    return _run(["postconf", *_c(config_dir), *args]).stdout


EDIT_FLAGS = {"-e": "main.cf", "-X": "main.cf", "-M": "master.cf", "-MX": "master.cf"}


def edit(config_dir: Path | None, flag: str, arg: str) -> None:
    """Change main.cf/master.cf with postconf (``-e``, ``-X``, ``-M``, ``-MX``), keeping a symlink a link.

    postconf writes a new file and renames it over ``main.cf`` (postconf(1)), which turns a symlinked
    main.cf into a regular file. When the file is a symlink the same postconf command runs on a scratch
    copy and the result is written to the link's target (temporary file + rename there, owner and mode
    kept).

    :param config_dir: the configuration directory (``None``: the default instance).
    :param flag: the postconf edit flag.
    :param arg: its argument (``name = value``, ``name``, ``service/type=entry``, ``service/type``).
    :raises PostfixError: if postconf fails; :class:`OSError` if the target cannot be written.
    """
    import os
    import tempfile

    name = EDIT_FLAGS[flag]
    cdir = config_dir if config_dir is not None else Path(postconf(None, "-h", "config_directory").strip())
    path = cdir / name
    if not path.is_symlink():
        postconf(config_dir, flag, arg)
        return
    with tempfile.TemporaryDirectory(prefix="onion-gateway-postconf-") as scratch_name:
        scratch = Path(scratch_name)
        for other in ("main.cf", "master.cf"):
            (scratch / other).write_bytes((cdir / other).read_bytes())
            past = (scratch / other).stat().st_mtime - 10     # postconf waits on files younger than 1 s
            os.utime(scratch / other, (past, past))
        postconf(scratch, flag, arg)
        data = (scratch / name).read_bytes()
    target = Path(os.path.realpath(path))
    st = target.stat()
    tmp = target.with_name(f".{target.name}.onion-gateway-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fchmod(fd, st.st_mode & 0o7777)
        os.fchown(fd, st.st_uid, st.st_gid)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def get_parameters(config_dir: Path | None, names: Sequence[str], *, expand: bool = True,
                   defaults: bool = False, overrides: Sequence[str] = ()) -> dict[str, str]:
    """Read main.cf parameters as Postfix sees them.

    :param config_dir: the configuration directory, ``None`` for the default.
    :param names: parameter names.
    :param expand: expand ``$name`` references (``postconf -x``).
    :param defaults: read the compiled-in defaults instead (``postconf -d``).
    :param overrides: ``name=value`` strings applied first (``postconf -o``), e.g. a master.cf service's
        ``-o`` options, to compute a service's effective settings.
    :returns: ``{name: value}``.
    :raises PostfixError: on an unknown parameter or a postconf failure.
    """
    args = []
    if expand:
        args.append("-x")
    if defaults:
        args.append("-d")
    for item in overrides:
        args += ["-o", item]
    out = postconf(config_dir, *args, *names)
    values: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, value = line.partition(" = ")
        if not sep and line.endswith(" ="):
            name, value = line[:-2], ""
        values[name.strip()] = value
    missing = [n for n in names if n not in values]
    if missing:
        raise PostfixError(f"postconf did not report {missing}")
    return values


def get_parameter(config_dir: Path | None, name: str, **kwargs) -> str:
    """One parameter's value; see :func:`get_parameters` for the keyword arguments."""
    return get_parameters(config_dir, [name], **kwargs)[name]


def mail_version(config_dir: Path | None = None) -> tuple[int, ...]:
    """Postfix's version as a tuple, e.g. ``(3, 7, 11)`` (from ``postconf -h mail_version``)."""
    text = postconf(config_dir, "-h", "mail_version").strip()
    match = re.match(r"(\d+(?:\.\d+)*)", text)
    if not match:
        raise PostfixError(f"cannot parse mail_version {text!r}")
    return tuple(int(p) for p in match.group(1).split("."))


def check(config_dir: Path | None) -> None:
    """Run ``postfix [-c DIR] check``.

    :raises PostfixError: with Postfix's complaint if the configuration is not sound.
    """
    _run(["postfix", *_c(config_dir), "check"])


def postmap_query(key: str, table: str, config_dir: Path | None = None) -> tuple[int, str, str]:
    """Run ``postmap [-c DIR] -q KEY TABLE``.

    :returns: ``(exit code, stdout, stderr)``; exit 0 found, 1 not found or error (see stderr for
        ``query error``).
    """
    done = _run(["postmap", *_c(config_dir), "-q", key, table], check=False)
    return done.returncode, done.stdout, done.stderr


def postqueue_json(config_dir: Path | None) -> str:
    """The mail queue as Postfix's JSON listing: ``postqueue [-c DIR] -j`` (postqueue(1), Postfix >= 3.1).

    One JSON object per message and line, e.g.::

        {"queue_name": "deferred", "queue_id": "520E120DC34", "arrival_time": 1796086978,
         "message_size": 327, "forced_expire": false, "sender": "alice@lab.test",
         "recipients": [{"address": "dave@dead1.partner.test",
                         "delay_reason": "connect to 127.0.0.1[127.0.0.1]:45903: Connection refused"}]}

    Read-only; works for any user that ``authorized_mailq_users`` allows (default: everyone), with the
    default configuration directory; a non-root user may name another one only when the default
    main.cf lists it in ``alternate_config_directories``. When Postfix is down, root still gets the
    listing (postqueue reads the queue directly and warns on stderr).

    :param config_dir: the configuration directory, ``None`` for the default instance.
    :returns: postqueue's stdout (empty for an empty queue).
    :raises PostfixError: if postqueue is missing or exits non-zero (with its stderr).
    """
    return _run(["postqueue", *_c(config_dir), "-j"]).stdout


def is_running(config_dir: Path | None) -> bool:
    """True if the Postfix instance of *config_dir* is running (``postfix [-c DIR] status`` exits 0)."""
    return _run(["postfix", *_c(config_dir), "status"], check=False).returncode == 0


def reload(config_dir: Path | None) -> None:
    """Run ``postfix [-c DIR] reload``: master(8) re-reads main.cf/master.cf, adds and drops listeners.

    :raises PostfixError: if Postfix refuses (e.g. it is not running).
    """
    _run(["postfix", *_c(config_dir), "reload"])


DOMAIN_LIST_PARAMETERS = ("mydestination", "virtual_mailbox_domains", "virtual_alias_domains", "relay_domains")


def own_domains(config_dir: Path | None) -> tuple[frozenset[str], tuple[str, ...]]:
    """The domains this Postfix delivers or relays for: it must never route them to an onion.

    Reads ``mydestination``, ``virtual_mailbox_domains``, ``virtual_alias_domains`` and ``relay_domains``
    (expanded, ``postconf -x``; postconf(5) "domain lists"). Literal names are taken as they are; tables
    that can be listed (``hash:``, ``lmdb:``, ``texthash:``, ``inline:`` ...) are listed with
    :func:`postmap_dump`; the others (``mysql:``, ``pcre:`` ...) are returned separately.

    :param config_dir: the Postfix configuration directory, ``None`` for the default instance.
    :returns: ``(domains, unlisted_tables)``: lower-cased domains without trailing dots, and the
        ``type:name`` tables that could not be enumerated.
    :raises PostfixError: if postconf fails.
    """
    values = get_parameters(config_dir, DOMAIN_LIST_PARAMETERS)
    domains: set[str] = set()
    unlisted: list[str] = []
    for value in values.values():
        for token in split_list(value):
            if not token:
                continue
            if ":" not in token:
                domains.add(token.lower().rstrip("."))
                continue
            pairs = postmap_dump(token, config_dir)
            if pairs is None:
                unlisted.append(token)
            else:
                domains.update(key.lower().rstrip(".") for key, _ in pairs if key)
    return frozenset(domains), tuple(unlisted)


def explicit_parameters(config_dir: Path | None) -> dict[str, str]:
    """The parameters set explicitly in main.cf, unexpanded (``postconf -n``).

    :returns: ``{name: raw value}``; a name absent here takes Postfix's default.
    :raises PostfixError: if postconf fails.
    """
    return _parse_name_value(postconf(config_dir, "-n"))


def master_fields(config_dir: Path | None) -> list[dict[str, str]]:
    """Every master.cf service entry, one dict per entry (``postconf -F``, postconf(1) "-F").

    ``postconf -F`` prints ``service/type/field = value`` for the fields ``service``, ``type``,
    ``private``, ``unprivileged``, ``chroot``, ``wakeup``, ``process_limit`` and ``command``
    (the command with its arguments, ``-o`` options included).

    :returns: ``[{"service": "127.0.0.1:25", "type": "inet", ..., "command": "smtpd -o ..."}, ...]``
        in master.cf order.
    :raises PostfixError: if postconf fails.
    """
    entries: dict[tuple[str, str], dict[str, str]] = {}
    for key, value in _parse_name_value(postconf(config_dir, "-F")).items():
        service_type, _, field_name = key.rpartition("/")
        service, _, kind = service_type.rpartition("/")
        entries.setdefault((service, kind), {})[field_name] = value
    return list(entries.values())


def master_overrides(config_dir: Path | None) -> dict[tuple[str, str], dict[str, str]]:
    """The ``-o name=value`` parameter overrides of every master.cf service (``postconf -P``).

    :returns: ``{(service, type): {name: raw value}}``, e.g.
        ``{("127.0.0.1:2525", "inet"): {"mynetworks": ""}}``; services without overrides are absent.
    :raises PostfixError: if postconf fails.
    """
    overrides: dict[tuple[str, str], dict[str, str]] = {}
    for key, value in _parse_name_value(postconf(config_dir, "-P")).items():
        service_type, _, name = key.rpartition("/")
        service, _, kind = service_type.rpartition("/")
        overrides.setdefault((service, kind), {})[name] = value
    return overrides


def postmap_dump(table: str, config_dir: Path | None = None) -> list[tuple[str, str]] | None:
    """All ``(key, value)`` pairs of a lookup table (``postmap -s TABLE``).

    :param table: ``type:name``, e.g. ``hash:/etc/postfix/sender_access`` or ``inline:{a=OK}``.
    :returns: the pairs, or ``None`` when the table type cannot be listed (regexp, pcre, static, tcp,
        socketmap, sql and others answer "sequence operation is not supported").
    """
    done = _run(["postmap", *_c(config_dir), "-s", table], check=False)
    if done.returncode != 0:
        return None
    pairs = []
    for line in done.stdout.splitlines():
        key, _, value = line.partition("\t")
        pairs.append((key, value))
    return pairs


def _parse_name_value(text: str) -> dict[str, str]:
    # postconf prints "name = value", or "name =" for an empty value.
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(" = ")
        if not sep:
            if not line.endswith(" ="):
                continue
            name, value = line[:-2], ""
        values[name.strip()] = value
    return values
