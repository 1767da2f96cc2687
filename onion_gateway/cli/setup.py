"""``onion-gateway setup``: options -> :mod:`onion_gateway.setup` -> echo and exit code.

Exit codes: 0 done (or nothing to change, or a dry run), 1 setup refused, failed (and restored) or the
plan was declined, 69 Tor's control port unavailable (setup changed nothing; ``--rollback`` undid every
file change but the running Tor must still be reloaded), 78 configuration error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from onion_gateway.cli.common import (ExitCode, cli_overrides, configure_logging, fail, fail_with, log_level_option,
                                      tor_control_options)

# option name -> [setup] key; values given as strings so that "" can switch a file off (e.g. --systemd-unit "")
_PATH_OPTIONS = {
    "postfix_config_dir": "Postfix configuration directory (postconf -c). Default: /etc/postfix.",
    "state_dir": "Backups, manifest and journal. Default: /var/lib/onion-gateway-setup.",
    "wrapper_path": "Where the smtp_tor wrapper goes. Default: $daemon_directory/smtp_tor.",
    "torsocks_conf": "torsocks.conf written when --socks is not 127.0.0.1:9050.",
    "torrc": "The torrc Tor starts with; gets one %include line (\"\" = leave it alone).",
    "torrc_piece": "The torrc fragment with HiddenServiceDir/HiddenServicePort.",
    "tor_defaults_torrc": "--defaults-torrc for tor --verify-config (\"\" = tor's built-in default).",
    "hidden_service_dir": "The onion service directory. Default: /var/lib/tor/onion-gateway.",
    "systemd_unit": "Where to write the unit for 'onion-gateway serve'; its .socket goes beside it (\"\" = none).",
    "serve_config": "Config file the systemd unit passes to 'onion-gateway serve'.",
}


def _path_options(func):
    for name, help_text in reversed(list(_PATH_OPTIONS.items())):
        func = click.option("--" + name.replace("_", "-"), name, default=None, metavar="PATH",
                            help=help_text)(func)
    return func


@click.command("setup")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML config file: its [setup] table (and [serve] for the map address and transport).")
@click.option("--domain", "domains", multiple=True, metavar="DOMAIN",
              help="A mail domain to print the _onion-mx._tcp SRV record for (repeatable).")
@click.option("--listener", default=None, metavar="IP:PORT",
              help="The hardened onion-facing smtpd listener (default 127.0.0.1:2525).")
@tor_control_options("Tor's control port or socket (default unix:/run/tor/control).")
@click.option("--socks", default=None, metavar="IP:PORT", help="Tor's SocksPort for torsocks (default 127.0.0.1:9050).")
@click.option("--transport-map", default=None, metavar="TABLE",
              help="Table put first in transport_maps (default: from the [serve] socketmap listener).")
@click.option("--relay-restrictions", default=None, metavar="LIST",
              help="smtpd_relay_restrictions of the listener (default reject_unauth_destination).")
@click.option("--recipient-restrictions", default=None, metavar="LIST",
              help="smtpd_recipient_restrictions of the listener (default: none; main.cf's are not inherited).")
@click.option("--tls-level", "smtp_tls_security_level", default=None, metavar="LEVEL",
              help="smtp_tls_security_level of the smtptor transport (default none).")
@click.option("--torsocks-isolation/--no-torsocks-isolation", default=None,
              help="Run torsocks -i: one Tor circuit per connection.")
@_path_options
@click.option("--dry-run", is_flag=True, help="Print every change as a diff and change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Apply without asking.")
@click.option("--rollback", is_flag=True,
              help="Undo the changes setup made and exit (shows them and asks; with --dry-run only shows them).")
@log_level_option("warning")
def setup_command(config_file: Path | None, dry_run: bool, yes: bool, rollback: bool, log_level: str,
                  **options: Any) -> None:
    """Turn this Postfix + Tor host into an onion mail gateway (shows the plan, asks, applies)."""
    from onion_gateway.config import load_config_file, serve_settings
    from onion_gateway.errors import OnionGatewayError, SetupError, TorError
    from onion_gateway.setup import apply as installer
    from onion_gateway.setup.plan import plan_setup
    from onion_gateway.setup.settings import setup_settings

    configure_logging(log_level, fmt="onion-gateway %(levelname)s %(name)s: %(message)s")
    overrides = cli_overrides(options)
    try:
        document = load_config_file(config_file) if config_file else {}
        base_dir = config_file.resolve().parent if config_file else None
        serve = serve_settings(document.get("serve", {}), None, base_dir)
        settings = setup_settings(document.get("setup", {}), overrides, base_dir)
        if rollback:
            _rollback(installer, settings, dry_run=dry_run, yes=yes)
            return
        if not dry_run:
            for line in installer.recover_interrupted(settings):
                click.echo(f"repaired an interrupted run: {line}")
        plan = plan_setup(settings, serve)
        if plan.is_empty:
            result = installer.apply_plan(plan)
        else:
            click.echo(plan.describe(), nl=False)
            if dry_run:
                for note in plan.notes + ([plan.blocker] if plan.blocker else []):
                    click.echo(f"note: {note}")
                click.echo("dry run: nothing was changed")
                return
            if plan.blocker:
                raise SetupError(plan.blocker)
            if not yes and not click.confirm("Apply these changes?", default=False):
                click.echo("nothing was changed")
                sys.exit(ExitCode.NO)
            result = installer.apply_plan(plan)
    except click.exceptions.Abort:
        click.echo("\nnothing was changed", err=True)
        sys.exit(ExitCode.NO)
    except TorError as exc:
        fail_with("setup", TorError(f"{exc} (nothing was changed)"))
    except (OnionGatewayError, OSError) as exc:
        fail_with("setup", exc)
    click.echo("nothing to change" if not result.changed and plan.is_empty else
               "changed: " + ", ".join(str(p) for p in result.changed))
    click.echo(f"onion address: {result.address}")
    if result.srv_records:
        click.echo("publish in DNS:")
        for record in result.srv_records:
            click.echo(f"  {record}")
    else:
        click.echo(f"publish in DNS (give --domain to have it filled in):\n"
                   f"  _onion-mx._tcp.<your domain>. 3600 IN SRV 10 5 25 {result.address}.")
    for note in result.notes:
        if note != "nothing to change":
            click.echo(f"note: {note}")
    status = "onion-gateway status" + (f" --config {config_file}" if config_file else "") + \
        (f" --state-dir {settings.state_dir}" if "state_dir" in overrides else "")
    click.echo(f"next: publish the SRV record above, then check everything: {status}")


def _rollback(installer, settings, *, dry_run: bool, yes: bool) -> None:
    """``--rollback``: show what it would undo; with ``--dry-run`` stop there, else ask unless ``--yes``."""
    preview = installer.rollback_preview(settings)
    if not preview:
        click.echo("nothing to roll back")
        return
    for line in preview:
        click.echo(f"would {line}" if dry_run else line)
    if dry_run:
        click.echo("dry run: nothing was changed")
        return
    if not yes and not click.confirm("Roll back these changes?", default=False):
        click.echo("nothing was changed")
        sys.exit(ExitCode.NO)
    result = installer.rollback(settings)
    click.echo("\n".join(result.done) if result.done else "nothing to roll back")
    if result.tor_pending:
        fail("setup", ExitCode.UNAVAILABLE, f"rolled back every file, but {result.tor_pending}")
