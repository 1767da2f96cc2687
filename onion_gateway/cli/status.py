"""``onion-gateway status``: options -> :func:`onion_gateway.status.settings_for_host` (flags, then setup's
state record, then the config file) -> :func:`onion_gateway.status.run_status` -> one line per check.

Exit status: 0 when no check failed (warnings allowed), 1 when one did, 64 for bad options,
78 for a bad config file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from onion_gateway.cli.common import (ExitCode, fail, fail_with, permission_cause, serve_settings_from,
                                      tor_control_options)


def health_options(func):
    """The onion delivery health options (docs/health.md); each overrides the config file's ``[health]`` key."""
    options = [
        click.option("--no-health", is_flag=True,
                     help="Skip the onion delivery health checks (deferred onion mail, the log, Tor's circuits)."),
        click.option("--deferred-warn", "deferred_warn_seconds", type=float, default=None, metavar="SECONDS",
                     help="Deferred onion mail (or failing deliveries) older than this is a warning "
                          "(default 1800; [health] deferred_warn_seconds)."),
        click.option("--deferred-fail", "deferred_fail_seconds", type=float, default=None, metavar="SECONDS",
                     help="... older than this is a failure (default 14400; [health] deferred_fail_seconds)."),
        click.option("--log-window", "log_window_seconds", type=float, default=None, metavar="SECONDS",
                     help="How far back Postfix's log is read (default 86400; [health] log_window_seconds)."),
        click.option("--mail-log", "log_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Read this log file (e.g. /var/log/mail.log) instead of maillog_file or the journal."),
        click.option("--fetch-timeout", "fetch_timeout_seconds", type=float, default=None, metavar="SECONDS",
                     help="Bounded wait for fetching the descriptors of partners with deferred mail (default 30)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def health_settings_from(config_file: Path | None, overrides: dict):
    """The health settings: the config file's ``[health]`` table overridden by the options given.

    :raises ConfigError: on a bad file or value (named ``health.<key>``).
    """
    from onion_gateway.config import load_config_file
    from onion_gateway.health.report import health_settings

    table, base_dir = None, None
    if config_file is not None:
        table = load_config_file(config_file).get("health")
        base_dir = config_file.resolve().parent
    return health_settings(table, overrides, base_dir)


@click.command("status")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML config file: the daemon's listeners, resolvers and transport come from its [serve] table, "
                   "setup's state directory from its [setup] table.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="setup's state directory, whose record names everything to check "
                   "(default: [setup].state_dir, else /var/lib/onion-gateway-setup).")
@click.option("--dns-server", "dns_servers", multiple=True, metavar="HOST[:PORT]",
              help="DNS server for the SRV checks (repeatable; overrides the config file).")
@tor_control_options("Tor's control port or socket (default: setup's record, else unix:/run/tor/control).")
@click.option("--tor-password", envvar="ONION_GATEWAY_TOR_PASSWORD", default=None,
              help="Control-port password (or $ONION_GATEWAY_TOR_PASSWORD); default cookie authentication.")
@click.option("--no-tor", is_flag=True, help="Skip the Tor check.")
@click.option("--postfix-config-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Postfix configuration directory (default: setup's record, else the default instance).")
@click.option("--no-postfix", is_flag=True, help="Skip the transport_maps, smtptor and relay-audit checks.")
@click.option("--torrc", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Audit the HiddenServicePort listeners of this torrc (default: setup's recorded listener, "
                   "else /etc/tor/torrc).")
@click.option("--test-domain", default="example.com", show_default=True, metavar="DOMAIN",
              help="Foreign domain the relay audit tries to relay to (one your Postfix can resolve).")
@click.option("--no-audit", is_flag=True, help="Skip the relay audit (audit-open-relay) of the onion listeners.")
@click.option("--domain", "domains", multiple=True, metavar="DOMAIN",
              help="Check that DOMAIN's _onion-mx._tcp SRV record names --onion (repeatable; default: setup's).")
@click.option("--onion", default=None, metavar="ADDRESS.onion",
              help="This gateway's onion address: the SRV records must name it and Tor must have it "
                   "published (default: setup's record; else any valid v3 address, publication not checked).")
@click.option("--timeout", "timeout_seconds", type=float, default=5.0, show_default=True, metavar="SECONDS",
              help="Budget of each network check.")
@health_options
def status_command(config_file, state_dir, dns_servers, tor_control, tor_control_password_file, tor_password, no_tor, postfix_config_dir,
                   no_postfix, torrc, test_domain, no_audit, domains, onion, timeout_seconds, no_health,
                   **health_overrides) -> None:
    """Check every piece of the onion route: Tor and the onion service, the daemon's listeners, SRV
    records, Postfix (map, smtptor and its wrapper), the relay audit of the onion listener, and whether
    onion mail actually leaves (deferred onion mail, Postfix's log, Tor's circuits, partner onions).
    On a host set up by 'onion-gateway setup' no flag is needed: setup's state record names them all."""
    from dataclasses import replace

    from onion_gateway.config import load_config_file
    from onion_gateway.errors import ConfigError, OnionGatewayError
    from onion_gateway.status import format_report, run_status, settings_for_host

    flags = {"tor_control": tor_control, "tor_password": tor_password,
             "tor_control_password_file": tor_control_password_file, "postfix_config_dir": postfix_config_dir,
             "domains": domains, "onion": onion, "check_tor": not no_tor, "check_postfix": not no_postfix,
             "audit": not no_audit, "torrc": torrc, "test_domain": test_domain,
             "timeout_seconds": timeout_seconds, "dns_servers": dns_servers}
    try:
        serve = setup_table = base_dir = None
        if config_file is not None:
            serve = serve_settings_from(config_file, {})
            setup_table = load_config_file(config_file).get("setup", {})
            base_dir = config_file.resolve().parent
        settings = settings_for_host(serve, setup_table, base_dir, state_dir, flags)
        health = None if no_health or no_postfix else health_settings_from(config_file, health_overrides)
        settings = replace(settings, health=health)
    except ConfigError as exc:
        if permission_cause(exc) is not None:
            fail_with("status", exc)
        fail("status", ExitCode.CONFIG if config_file else ExitCode.USAGE, str(exc))
    except (OnionGatewayError, OSError) as exc:
        fail_with("status", exc)
    try:
        report = run_status(settings)
    except ValueError as exc:
        fail("status", ExitCode.USAGE, f"--onion: {exc}")
    for line in format_report(report):
        click.echo(line)
    sys.exit(ExitCode.OK if report.ok else ExitCode.NO)
