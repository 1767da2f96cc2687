"""The ``onion-gateway`` command line: parse options, call one library function, print, exit.

Exit codes follow sysexits(3) where they fit: 0 success, 1 "no" (not found), 64 usage,
75 temporary failure, 78 configuration error, 71 cannot bind a listener.
Heavy modules (dnspython, asyncio servers) are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from onion_gateway import __version__

EXIT_NOT_FOUND = 1
EXIT_USAGE = 64
EXIT_OSERR = 71
EXIT_TEMPFAIL = 75
EXIT_CONFIG = 78


def _configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper()),
                        format="%(asctime)s onion-gateway[%(process)d] %(levelname)s %(name)s: %(message)s")


def resolver_options(func):
    """Options shared by ``serve`` and ``lookup``: how to route (config file, DNS, exclusions, maps)."""
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
        click.option("--log-level", default="info", show_default=True,
                     type=click.Choice(["debug", "info", "warning", "error"])),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _settings(config_file: Path | None, overrides: dict[str, Any]):
    from onion_gateway.config import load_config_file, serve_settings

    table: dict[str, Any] = {}
    base_dir = None
    if config_file is not None:
        document = load_config_file(config_file)
        table = document.get("serve", {})
        base_dir = config_file.resolve().parent
    overrides = {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()
                 if v is not None and v != ()}
    return serve_settings(table, overrides, base_dir)


def _fail(code: int, message: str) -> None:
    click.echo(f"onion-gateway: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onion-gateway")
def main() -> None:
    """Deliver mail to other providers over Tor onion services (Postfix lookup daemon, setup, relay audit)."""


@main.command()
@click.option("--tcp-table", "tcp_table", multiple=True, metavar="ADDR",
              help="tcp_table(5) listener, HOST:PORT or unix:PATH (repeatable; default 127.0.0.1:6013).")
@click.option("--socketmap", "socketmap", multiple=True, metavar="ADDR",
              help="socketmap_table(5) listener, HOST:PORT or unix:PATH (repeatable; default 127.0.0.1:6014).")
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
def serve(config_file, log_level, **overrides) -> None:
    """Answer Postfix transport_maps lookups from _onion-mx._tcp SRV records."""
    from onion_gateway.errors import ConfigError
    from onion_gateway.lookup.daemon import run

    _configure_logging(log_level)
    try:
        settings = _settings(config_file, overrides)
        run(settings)
    except ConfigError as exc:
        _fail(EXIT_CONFIG, str(exc))
    except OSError as exc:
        _fail(EXIT_OSERR, f"cannot listen: {exc}")


@main.command()
@click.argument("key")
@resolver_options
def lookup(key, config_file, log_level, **overrides) -> None:
    """Print what the daemon would answer for KEY (exit 0 found, 1 not found, 75 temporary failure)."""
    import asyncio

    from onion_gateway.errors import ConfigError
    from onion_gateway.lookup.daemon import build_router, lookup_once
    from onion_gateway.lookup.result import Outcome

    _configure_logging("warning" if log_level == "info" else log_level)
    try:
        router = build_router(_settings(config_file, overrides))
    except ConfigError as exc:
        _fail(EXIT_CONFIG, str(exc))
    result = asyncio.run(lookup_once(router, key))
    if result.outcome is Outcome.FOUND:
        click.echo(result.value)
        return
    if result.outcome is Outcome.NOT_FOUND:
        click.echo(f"not found: {result.value}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    click.echo(f"temporary failure: {result.value}", err=True)
    sys.exit(EXIT_TEMPFAIL)
