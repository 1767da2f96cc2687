"""``onion-gateway status``: options -> :func:`onion_gateway.status.run_status` -> one line per check.

Exit status: 0 when no check failed (warnings allowed), 1 when one did, 64 for bad options,
78 for a bad config file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("status")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML config file: the daemon's listeners, resolvers and transport come from its [serve] table.")
@click.option("--dns-server", "dns_servers", multiple=True, metavar="HOST[:PORT]",
              help="DNS server for the SRV checks (repeatable; overrides the config file).")
@click.option("--tor-control", default="127.0.0.1:9051", show_default=True, metavar="HOST:PORT",
              help="ControlPort of the gateway's Tor (its SocksPort carries smtptor; it hosts --onion).")
@click.option("--tor-password", envvar="ONION_GATEWAY_TOR_PASSWORD", default=None,
              help="Control-port password (or $ONION_GATEWAY_TOR_PASSWORD); default cookie authentication.")
@click.option("--no-tor", is_flag=True, help="Skip the Tor check.")
@click.option("--postfix-config-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Postfix configuration directory (default: the default instance).")
@click.option("--no-postfix", is_flag=True, help="Skip the transport_maps, smtptor and relay-audit checks.")
@click.option("--torrc", type=click.Path(dir_okay=False, path_type=Path), default=Path("/etc/tor/torrc"),
              show_default=True, help="torrc whose HiddenServicePort listeners the relay audit probes.")
@click.option("--test-domain", default="example.com", show_default=True, metavar="DOMAIN",
              help="Foreign domain the relay audit tries to relay to (one your Postfix can resolve).")
@click.option("--no-audit", is_flag=True, help="Skip the relay audit (audit-open-relay) of the onion listeners.")
@click.option("--domain", "domains", multiple=True, metavar="DOMAIN",
              help="Check that DOMAIN's _onion-mx._tcp SRV record names --onion (repeatable).")
@click.option("--onion", default=None, metavar="ADDRESS.onion",
              help="This gateway's onion address: the SRV records must name it and Tor must have it "
                   "published (default: any valid v3 address, publication not checked).")
@click.option("--timeout", "timeout_seconds", type=float, default=5.0, show_default=True, metavar="SECONDS",
              help="Budget of each network check.")
def status_command(config_file, dns_servers, tor_control, tor_password, no_tor, postfix_config_dir, no_postfix,
                   torrc, test_domain, no_audit, domains, onion, timeout_seconds) -> None:
    """Check every piece of the onion route: Tor and the onion service, the daemon's listeners, SRV
    records, Postfix (map, smtptor and its wrapper) and the relay audit of the onion listeners."""
    from onion_gateway.cli import EXIT_CONFIG, EXIT_USAGE, _fail, _settings
    from onion_gateway.address import parse_listen_address
    from onion_gateway.errors import ConfigError
    from onion_gateway.status import StatusSettings, format_report, run_status

    try:
        serve = _settings(config_file, {"dns_servers": dns_servers})
        control = None
        if not no_tor:
            address = parse_listen_address(tor_control, "--tor-control")
            if address.is_unix:
                raise ConfigError("--tor-control: expected HOST:PORT")
            control = (address.host, address.port)
    except ConfigError as exc:
        _fail(EXIT_CONFIG if config_file else EXIT_USAGE, str(exc))
    settings = StatusSettings(serve=serve, tor_control=control, tor_password=tor_password,
                              postfix_config_dir=postfix_config_dir, check_postfix=not no_postfix,
                              domains=tuple(domains), onion=onion, timeout_seconds=timeout_seconds,
                              audit_torrc=None if no_postfix or no_audit else torrc, audit_test_domain=test_domain)
    try:
        report = run_status(settings)
    except ValueError as exc:
        _fail(EXIT_USAGE, f"--onion: {exc}")
    for line in format_report(report):
        click.echo(line)
    sys.exit(0 if report.ok else 1)
