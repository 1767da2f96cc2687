"""The ``onion-gateway`` command line: one module per command, each thin (options -> one library call ->
output and exit code).

Map of the package::

    common.py   ExitCode, the one error-to-exit mapping (exit_code_for/fail_with), logging, shared options
    serve.py    serve, lookup           -> onion_gateway.lookup
    setup.py    setup                   -> onion_gateway.setup
    status.py   status                  -> onion_gateway.status
    audit.py    audit-open-relay        -> onion_gateway.audit
    trust.py    pins, check-map         -> onion_gateway.lookup.pins / mapcheck

The command modules import only :mod:`onion_gateway.cli.common` (never this package's ``main``), so each
imports alone; heavy library modules are imported inside the commands so ``--help`` stays fast.
The console script is ``onion_gateway.cli:main``.
"""

from __future__ import annotations

import click

from onion_gateway import __version__
from onion_gateway.cli.audit import audit_command
from onion_gateway.cli.common import ExitCode
from onion_gateway.cli.serve import lookup_command, serve_command
from onion_gateway.cli.setup import setup_command
from onion_gateway.cli.status import status_command
from onion_gateway.cli.trust import check_map, pins

__all__ = ["ExitCode", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onion-gateway")
def main() -> None:
    """Deliver mail to other providers over Tor onion services (Postfix lookup daemon, setup, relay audit)."""


for _command in (serve_command, lookup_command, setup_command, audit_command, status_command, pins, check_map):
    main.add_command(_command)
