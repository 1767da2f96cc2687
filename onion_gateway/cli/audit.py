"""``onion-gateway audit-open-relay``: prove the onion-facing listener cannot relay (issue 4).

Thin: options -> :func:`onion_gateway.audit.audit_listener` / :func:`~onion_gateway.audit.audit_torrc`
/ :func:`~onion_gateway.audit.audit_setup` (``--state-dir``, ``--config``) -> text or JSON -> exit code
(0 safe, 1 open relay, 2 risky, 3 inconclusive, 64 usage, 69 unreachable).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from onion_gateway.cli.common import (ExitCode, configure_logging, fail, fail_with, log_level_option,
                                      permission_cause, tor_control_options)


@click.command("audit-open-relay")
@click.option("--torrc", type=click.Path(dir_okay=False, path_type=Path),
              help="torrc whose HiddenServicePort lines name the listeners (default /etc/tor/torrc).")
@click.option("--listener", "listeners", multiple=True, metavar="HOST:PORT|unix:PATH",
              help="Audit this listener directly (repeatable); the torrc is then not read.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Audit the listener 'onion-gateway setup' recorded in this state directory (no torrc).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Audit the listener of this config file's [setup] table (its state directory's record "
                   "if setup ran, else the table's listener).")
@tor_control_options("Ask this running Tor for its onion services (GETCONF over the control port); no torrc.")
@click.option("--postfix-config-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Postfix configuration directory (default: Postfix's own, /etc/postfix).")
@click.option("--test-domain", default=None, metavar="DOMAIN",
              help="Foreign domain the probes try to relay to (default example.com).")
@click.option("--control-recipient", default=None, metavar="ADDR",
              help="Address the server must accept (default postmaster@ a domain it serves).")
@click.option("--onion", "own_onion", default=None, metavar="NAME.onion",
              help="The service's own onion address (default: read from HiddenServiceDir/hostname).")
@click.option("--helo", default="localhost", show_default=True, help="EHLO name the probes send.")
@click.option("--timeout", "timeout_seconds", type=float, default=30.0, show_default=True, metavar="SECONDS",
              help="Per-command timeout.")
@click.option("--client-cert", type=click.Path(dir_okay=False, exists=True), metavar="PEM",
              help="Present this TLS client certificate after STARTTLS (proves a permit_tls_*clientcerts relay).")
@click.option("--client-key", type=click.Path(dir_okay=False, exists=True), metavar="PEM",
              help="The client certificate's private key (default: inside --client-cert).")
@click.option("--static-only", is_flag=True, help="Analyse the configuration only; no live probes.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@log_level_option("warning")
def audit_command(torrc, listeners, state_dir, config_file, tor_control, tor_control_password_file,
                  postfix_config_dir, test_domain, control_recipient,
                  own_onion, helo, timeout_seconds, client_cert, client_key, static_only, as_json,
                  log_level) -> None:
    """Prove the onion-facing Postfix listener cannot relay (static policy analysis + live probes).

    Exit 0 safe, 1 open relay confirmed, 2 risky configuration not exploitable now, 3 inconclusive,
    64 usage error, 69 target unreachable.
    """
    from onion_gateway.audit import (DEFAULT_TEST_DOMAIN, AuditOptions, ClientCertificate, audit_listener,
                                     audit_running_tor, audit_setup, audit_torrc, overall_exit_code,
                                     read_setup_state, setup_record, to_json, to_text)
    from onion_gateway.errors import OnionGatewayError

    configure_logging(log_level, fmt="onion-gateway[%(process)d] %(levelname)s %(name)s: %(message)s")
    if sum(map(bool, (listeners, torrc, state_dir, config_file, tor_control))) > 1:
        _usage("give one of --listener, --torrc, --state-dir, --config, --tor-control")
    if client_key and not client_cert:
        _usage("--client-key needs --client-cert")
    options = AuditOptions(config_dir=postfix_config_dir, test_domain=test_domain or DEFAULT_TEST_DOMAIN,
                           control_recipient=control_recipient, own_onion=own_onion, helo=helo,
                           timeout_seconds=timeout_seconds, probe=not static_only,
                           client_cert=ClientCertificate(client_cert, client_key) if client_cert else None)
    try:
        if listeners:
            reports = [audit_listener(item, options) for item in listeners]
        elif state_dir:
            reports = [audit_setup(read_setup_state(state_dir), options)]
        elif config_file:
            reports = [audit_setup(setup_record(config_file), options)]
        elif tor_control:
            reports = audit_running_tor(tor_control, options,
                                        Path(tor_control_password_file) if tor_control_password_file else None)
            if not reports:
                _usage(f"no onion service of the Tor at {tor_control} leads to a Postfix smtpd")
        else:
            reports = audit_torrc(torrc or Path("/etc/tor/torrc"), options)
            if not reports:
                _usage(f"no HiddenServicePort in {torrc or '/etc/tor/torrc'} leads to a Postfix smtpd; "
                       "use --listener HOST:PORT")
    except OnionGatewayError as exc:
        if permission_cause(exc) is not None:
            fail_with("audit-open-relay", exc)
        _usage(str(exc))
    except OSError as exc:
        fail_with("audit-open-relay", exc)
    click.echo(to_json(reports) if as_json else to_text(reports))
    sys.exit(overall_exit_code(reports))


def _usage(message: str) -> None:
    fail("audit-open-relay", ExitCode.USAGE, message)
