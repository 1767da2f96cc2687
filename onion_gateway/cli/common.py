"""What every ``onion-gateway`` command shares: the exit codes, the one error-to-exit mapping, logging.

Exit codes follow sysexits(3) where they fit (:class:`ExitCode`). Library code raises the
:mod:`onion_gateway.errors` tree (and lets :class:`PermissionError` through); :func:`exit_code_for`
is the one place that turns an exception into an exit code, and :func:`fail` the one place that prints
it as one line on stderr and exits. No command prints a traceback for bad input or missing permissions.

Nothing here imports the commands, and no command imports :mod:`onion_gateway.cli` itself, so any
command module can be imported alone (``python -c "import onion_gateway.cli.status"``).
"""

from __future__ import annotations

import enum
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from onion_gateway.errors import ConfigError, OnionGatewayError, PostfixError, TorError

LOG_LEVELS = ("debug", "info", "warning", "error")


class ExitCode(enum.IntEnum):
    """The exit codes of every command (sysexits(3) names where one fits)."""

    OK = 0
    NO = 1                 # "no": not found, a failed check, setup refused/failed (restored), plan declined
    USAGE = 64             # EX_USAGE: bad options or command-line values
    UNAVAILABLE = 69       # EX_UNAVAILABLE: a service we depend on (Tor's control port) is unreachable
    SOFTWARE = 70          # EX_SOFTWARE: an error we did not foresee (reported in one line, not a traceback)
    OSERR = 71             # EX_OSERR: cannot listen, cannot drop privileges
    TEMPFAIL = 75          # EX_TEMPFAIL: temporary failure (DNS), try again later
    NOPERM = 77            # EX_NOPERM: needs root (or another user's file)
    CONFIG = 78            # EX_CONFIG: bad configuration file or setting


def permission_cause(exc: BaseException) -> PermissionError | None:
    """The :class:`PermissionError` behind *exc* (itself, or in its ``__cause__``/``__context__`` chain).

    :returns: the PermissionError, or ``None`` when the failure was not a missing permission.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, PermissionError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def exit_code_for(exc: BaseException) -> ExitCode:
    """The one error-to-exit mapping of the command line.

    :param exc: an exception a library call raised.
    :returns: NOPERM for a missing permission anywhere in the chain, CONFIG for :class:`ConfigError`,
        UNAVAILABLE for :class:`TorError`, NO for other :class:`OnionGatewayError` (setup refused or
        failed and restored, Postfix rejected a change), OSERR for other :class:`OSError`, else SOFTWARE.
    """
    if permission_cause(exc) is not None:
        return ExitCode.NOPERM
    if isinstance(exc, ConfigError):
        return ExitCode.CONFIG
    if isinstance(exc, TorError):
        return ExitCode.UNAVAILABLE
    if isinstance(exc, (PostfixError, OnionGatewayError)):
        return ExitCode.NO
    if isinstance(exc, OSError):
        return ExitCode.OSERR
    return ExitCode.SOFTWARE


def error_message(exc: BaseException) -> str:
    """One line for *exc*; a missing permission names the file and that root is needed."""
    denied = permission_cause(exc)
    if denied is not None:
        what = denied.filename or str(denied)
        who = "root" if os.geteuid() != 0 else "the owner of that file"
        return f"permission denied: {what} (this needs {who}); nothing was changed"
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split("\n")) if isinstance(exc, OnionGatewayError) else f"{type(exc).__name__}: {text}"


def fail(command: str, code: int, message: str) -> NoReturn:
    """Print ``onion-gateway COMMAND: MESSAGE`` on stderr and exit with *code*."""
    prefix = f"onion-gateway {command}".rstrip()
    click.echo(f"{prefix}: {message}", err=True)
    sys.exit(int(code))


def fail_with(command: str, exc: BaseException, code: int | None = None) -> NoReturn:
    """:func:`fail` with the mapped exit code (or *code*) and the one-line message of *exc*."""
    fail(command, exit_code_for(exc) if code is None else code, error_message(exc))


def configure_logging(level: str, *, fmt: str = "%(asctime)s onion-gateway[%(process)d] %(levelname)s "
                                                 "%(name)s: %(message)s") -> None:
    """The one logging setup: a stderr handler at *level* (``debug``/``info``/``warning``/``error``).

    stem logs every control command at DEBUG and closed sockets at INFO: it is shown only at ``debug``.
    When stderr is the journal (systemd.exec(5) ``$JOURNAL_STREAM``), each line carries its syslog
    priority as sd-daemon(3) prefixes it (``<4>`` warning) and no timestamp or pid of its own (journald
    records both), so ``journalctl -p warning -u onion-gateway`` shows the warnings.
    """
    if stderr_is_journal():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
        logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    else:
        logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper()), format=fmt)
    logging.getLogger("stem").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def stderr_is_journal() -> bool:
    """True when stderr is connected to journald: ``$JOURNAL_STREAM`` is ``DEVICE:INODE`` of stderr.

    systemd.exec(5): the variable is inherited by children whose stderr may be elsewhere, so the device
    and inode are compared with stderr's own.
    """
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


class JournalFormatter(logging.Formatter):
    """Prefix every line of a record with its syslog priority, ``<3>`` error ... ``<7>`` debug (sd-daemon(3)).

    A multi-line record (a traceback) becomes one journal entry per line, each with the priority.
    """

    PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

    def format(self, record: logging.LogRecord) -> str:
        """:returns: the formatted record, every line prefixed with ``<N>``."""
        priority = next((p for level, p in sorted(self.PRIORITY.items(), reverse=True) if record.levelno >= level), 7)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def log_level_option(default: str):
    """The ``--log-level`` option every command takes."""
    return click.option("--log-level", default=default, show_default=True, type=click.Choice(LOG_LEVELS))


def tor_control_options(control_help: str):
    """``--tor-control`` and ``--tor-control-password-file``, the same for every command that talks to Tor
    (one control connection: :func:`onion_gateway.tor.connect`).

    :param control_help: the help of ``--tor-control``: what the command asks Tor, and its default.
    :returns: a decorator adding both options (values are text; each command converts them).
    """
    def decorate(func):
        func = click.option("--tor-control-password-file", default=None, metavar="PATH",
                            help="File holding Tor's control password (HashedControlPassword); "
                                 "default: cookie or no authentication.")(func)
        return click.option("--tor-control", default=None, metavar="HOST:PORT|unix:PATH", help=control_help)(func)
    return decorate


def cli_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """Command-line values that were given: tuples (multiple options) become lists, unset ones are dropped."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items() if v is not None and v != ()}


def serve_settings_from(config_file: Path | None, overrides: dict[str, Any]):
    """The daemon's settings: the config file's ``[serve]`` table overridden by command-line values.

    :returns: a :class:`onion_gateway.config.ServeSettings`.
    :raises ConfigError: on a bad file or value.
    """
    from onion_gateway.config import load_config_file, serve_settings

    table: dict[str, Any] = {}
    setup_table: dict[str, Any] = {}
    base_dir = None
    if config_file is not None:
        document = load_config_file(config_file)
        table = document.get("serve", {})
        setup_table = document.get("setup", {})
        base_dir = config_file.resolve().parent
    if isinstance(table, dict) and setup_table.get("state_dir") and "health_setup_state_dir" not in table:
        # the Tor health gauge finds setup's record where setup keeps it (onion_gateway.health.metrics)
        table = {**table, "health_setup_state_dir": setup_table["state_dir"]}
    settings = serve_settings(table, cli_overrides(overrides), base_dir)
    return with_own_onions_from_setup(settings, setup_table, base_dir)


def with_own_onions_from_setup(settings, setup_table: dict[str, Any], base_dir: Path | None):
    """Add the onion address setup recorded (``[setup].state_dir``, else setup's default state directory)
    to ``own_onions``: the gateway never routes mail to itself, whether or not ``own_onions`` names it.

    A missing or unreadable record adds nothing (the daemon runs on hosts setup never touched).

    :returns: the settings, with the recorded address added to ``own_onions``.
    """
    from dataclasses import replace

    from onion_gateway.errors import OnionGatewayError
    from onion_gateway.setup.state import DEFAULT_STATE_DIR, MANIFEST, read_setup_state

    state_dir = DEFAULT_STATE_DIR
    if setup_table.get("state_dir"):
        state_dir = Path(setup_table["state_dir"])
        if not state_dir.is_absolute() and base_dir is not None:
            state_dir = base_dir / state_dir
    try:
        if not (state_dir / MANIFEST).exists():
            return settings
        record = read_setup_state(state_dir)
    except (OnionGatewayError, OSError):
        return settings
    onion = record.onion_address or (record.as_onion_port().onion if record.hidden_service_dir else None)
    if not onion:
        return settings
    from onion_gateway.onion import normalize_onion

    try:
        return replace(settings, own_onions=settings.own_onions | {normalize_onion(onion)})
    except ValueError:
        return settings


def resolver_options(func):
    """Options shared by ``serve``, ``lookup`` and ``check-map``: how to route (config file, DNS, exclusions, maps)."""
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="TOML config file; its [serve] table is overridden by the flags below."),
        click.option("--dns-server", "dns_servers", multiple=True, metavar="HOST[:PORT]",
                     help="DNS server to ask (repeatable). Default: the system resolver."),
        click.option("--service", default=None, help="SRV service label (default onion-mx: _onion-mx._tcp.DOMAIN)."),
        click.option("--transport", default=None, help="Postfix transport for onion routes (default smtptor)."),
        click.option("--exclude-domains", "exclude_domains", multiple=True, metavar="A,B",
                     help="Domains never routed to an onion (comma-separated, repeatable)."),
        click.option("--exclude-domains-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="File of excluded domains, one per line (re-read on SIGHUP)."),
        click.option("--exclude-subdomains/--no-exclude-subdomains", default=None,
                     help="Also exclude subdomains of excluded domains."),
        click.option("--static-map", type=click.Path(dir_okay=False, path_type=Path),
                     help="Static map 'domain  smtptor:[x.onion]:25' answered before DNS (re-read on SIGHUP)."),
        click.option("--dns-timeout", "dns_timeout_seconds", type=float, default=None, metavar="SECONDS",
                     help="Budget for one SRV lookup; past it the answer is a temporary failure (default 10)."),
        click.option("--require-dnssec/--no-require-dnssec", default=None,
                     help="Use SRV answers only when the resolver authenticated them (AD bit)."),
        click.option("--postfix-config-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Postfix config dir whose own domains are never routed to an onion (default /etc/postfix)."),
        click.option("--own-onion", "own_onions", multiple=True, metavar="ADDR.onion",
                     help="This gateway's own onion address (repeatable): never routed to."),
        log_level_option("info"),
    ]
    for option in reversed(options):
        func = option(func)
    return func
