"""``onion-gateway pins ...`` and ``onion-gateway check-map``: the operator's side of route trust."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from onion_gateway.cli.common import ExitCode, fail, resolver_options, serve_settings_from


@click.group()
def pins() -> None:
    """List, accept or forget the onion addresses each domain is pinned to."""


def pins_file_option(func):
    """``--config`` (its ``serve.pins_file``) or ``--pins-file``, as every command takes them."""
    func = click.option("--pins-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        help="The daemon's pins_file (default: serve.pins_file of --config).")(func)
    return click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                        help="TOML config file whose [serve] pins_file is used.")(func)


def _pin_file(config_file: Path | None, pins_file: Path | None):
    from onion_gateway.errors import ConfigError
    from onion_gateway.lookup.pins import PinFile

    try:
        path = pins_file or serve_settings_from(config_file, {}).pins_file
        if path is None:
            fail("pins", ExitCode.CONFIG, "no pins file: give --pins-file or --config with serve.pins_file")
        return PinFile(path, create=False)
    except ConfigError as exc:
        fail("pins", ExitCode.CONFIG, str(exc))


@pins.command("list")
@pins_file_option
def pins_list(config_file: Path | None, pins_file: Path | None) -> None:
    """Show every pin: domain, pinned onions, a pending change."""
    for domain, pin in sorted(_pin_file(config_file, pins_file).pins().items()):
        line = f"{domain}  {','.join(pin.onions)}"
        if pin.pending:
            line += f"  PENDING {','.join(pin.pending)} (onion-gateway pins accept {domain})"
        click.echo(line)


@pins.command("accept")
@pins_file_option
@click.argument("domain")
def pins_accept(config_file: Path | None, pins_file: Path | None, domain: str) -> None:
    """Accept DOMAIN's changed onion set: strict pinning routes by it from now on (within a second)."""
    try:
        pin = _pin_file(config_file, pins_file).accept(domain.lower().rstrip("."))
    except KeyError:
        fail("pins", ExitCode.NO, f"{domain}: no pending change to accept")
    click.echo(f"{domain}  {','.join(pin.onions)}  accepted")


@pins.command("forget")
@pins_file_option
@click.argument("domain")
def pins_forget(config_file: Path | None, pins_file: Path | None, domain: str) -> None:
    """Forget DOMAIN's pin: its next SRV answer is pinned afresh."""
    try:
        _pin_file(config_file, pins_file).forget(domain.lower().rstrip("."))
    except KeyError:
        fail("pins", ExitCode.NO, f"{domain}: not pinned")
    click.echo(f"{domain}  forgotten")


@click.command("check-map")
@click.argument("map_file", type=click.Path(dir_okay=False, path_type=Path))
@resolver_options
def check_map(map_file: Path, config_file, log_level, **overrides) -> None:
    """Compare a static map (tor_transport form) with live SRV records (exit 0 clean, 1 differences)."""
    import asyncio

    from onion_gateway.config import read_static_map
    from onion_gateway.errors import ConfigError
    from onion_gateway.lookup.daemon import build_router
    from onion_gateway.lookup.mapcheck import MapEntryStatus, check_static_map

    try:
        router = build_router(serve_settings_from(config_file, {**overrides, "exclude_postfix_domains": False}))
        entries = read_static_map(map_file)
    except ConfigError as exc:
        fail("check-map", ExitCode.CONFIG, str(exc))
    results = asyncio.run(check_static_map(entries, router))
    for r in results:
        click.echo(f"{r.status.value:14} {r.key}  {r.detail}")
    if any(r.status.is_difference for r in results):
        sys.exit(ExitCode.NO)
    if any(r.status is MapEntryStatus.DNS_FAILED for r in results):
        sys.exit(ExitCode.TEMPFAIL)
