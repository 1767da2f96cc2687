"""``onion-gateway serve`` and ``onion-gateway lookup``: the lookup daemon and a one-shot lookup.

Thin: options -> :func:`onion_gateway.lookup.daemon.run` / one :meth:`Router.lookup` -> exit code.
Heavy modules (dnspython, asyncio servers) are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from onion_gateway.cli.common import ExitCode, configure_logging, fail, resolver_options, serve_settings_from


@click.command("serve")
@click.option("--tcp-table", "tcp_table", multiple=True, metavar="ADDR",
              help="tcp_table(5) listener, HOST:PORT or unix:PATH (repeatable; default 127.0.0.1:6013).")
@click.option("--socketmap", "socketmap", multiple=True, metavar="ADDR",
              help="socketmap_table(5) listener, HOST:PORT or unix:PATH (repeatable; default 127.0.0.1:6014).")
@click.option("--user", default=None, help="Drop privileges to this user once the listeners are bound.")
@click.option("--group", default=None, help="... and to this group (default: the user's primary group).")
@click.option("--unix-socket-mode", default=None, metavar="OCTAL",
              help="Mode of unix-socket listeners (default 0660).")
@click.option("--unix-socket-group", default=None, help="Group of unix-socket listeners (e.g. postfix).")
@click.option("--metrics-address", default=None, metavar="HOST:PORT",
              help="Serve Prometheus /metrics and /healthz here (default: off).")
@click.option("--cache-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="sqlite file keeping the route cache across restarts (default: none).")
@click.option("--cache-max-entries", type=int, default=None, metavar="N",
              help="Domains kept in the route cache, LRU beyond (default 100000; 0 = no cache).")
@click.option("--cache-min-ttl", "cache_min_ttl_seconds", type=float, default=None, metavar="SECONDS",
              help="Cache every answer at least this long (default 30).")
@click.option("--cache-serve-stale", "cache_serve_stale_seconds", type=float, default=None, metavar="SECONDS",
              help="On DNS failure, answer entries expired at most this long ago (RFC 8767; default 0 = off).")
@resolver_options
def serve_command(config_file, log_level, **overrides) -> None:
    """Answer Postfix transport_maps lookups from _onion-mx._tcp SRV records."""
    from onion_gateway.errors import ConfigError
    from onion_gateway.lookup.daemon import run

    configure_logging(log_level)
    try:
        settings = serve_settings_from(config_file, overrides)
        run(settings)
    except ConfigError as exc:
        fail("serve", ExitCode.CONFIG, str(exc))
    except PermissionError as exc:
        fail("serve", ExitCode.OSERR, f"cannot drop privileges: {exc}")
    except OSError as exc:
        fail("serve", ExitCode.OSERR, f"cannot listen: {exc}")


@click.command("lookup")
@click.argument("key")
@resolver_options
def lookup_command(key, config_file, log_level, **overrides) -> None:
    """Print what the daemon would answer for KEY (exit 0 found, 1 not found, 75 temporary failure)."""
    import asyncio

    from onion_gateway.errors import ConfigError
    from onion_gateway.lookup.daemon import build_router
    from onion_gateway.lookup.result import Outcome

    configure_logging("warning" if log_level == "info" else log_level)
    try:
        router = build_router(serve_settings_from(config_file, overrides))
        if getattr(router, "pins", None) is not None:
            router.pins.path = None          # read the daemon's pins, never write them: lookup changes no state
    except ConfigError as exc:
        fail("lookup", ExitCode.CONFIG, str(exc))
    result = asyncio.run(router.lookup(key))
    if result.outcome is Outcome.FOUND:
        click.echo(result.value)
        return
    if result.outcome is Outcome.NOT_FOUND:
        click.echo(f"not found: {result.value}", err=True)
        sys.exit(ExitCode.NO)
    click.echo(f"temporary failure: {result.value}", err=True)
    sys.exit(ExitCode.TEMPFAIL)
