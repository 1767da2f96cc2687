#!/usr/bin/env python3
"""Render the systemd units the Debian package ships, from the same templates `onion-gateway setup` uses.

The packaged service runs ``/usr/bin/onion-gateway serve --config /etc/onion-gateway/onion-gateway.toml``;
the packaged socket listens where that conffile's listeners are (the defaults, since every key in it is
commented out). One template per unit, so the package and setup never drift apart.

Usage: ``python3 scripts/packaged_units.py TARGET_DIR`` (debian/rules runs it against the built package).
"""

from __future__ import annotations

import sys
from pathlib import Path

PROGRAM = "/usr/bin/onion-gateway"
CONFFILE = "/etc/onion-gateway/onion-gateway.toml"


def write_units(target: Path) -> list[Path]:
    """Write ``onion-gateway.service`` and ``onion-gateway.socket`` into *target*; returns their paths."""
    from onion_gateway.config import ServeSettings
    from dataclasses import replace

    from onion_gateway.render import PACKAGED_BY, SystemdUnit, render
    from onion_gateway.setup.plan import systemd_socket

    units = {
        "onion-gateway.service": render(SystemdUnit(exec_start=f"{PROGRAM} serve --config {CONFFILE}",
                                                    managed_by=PACKAGED_BY)),
        # the conffile's listeners are the defaults (every key commented); the socket as setup writes it
        "onion-gateway.socket": render(replace(systemd_socket(ServeSettings()), managed_by=PACKAGED_BY)),
    }
    target.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        (target / name).write_text(text)
    return [target / name for name in units]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 scripts/packaged_units.py TARGET_DIR")
    for path in write_units(Path(sys.argv[1])):
        print(path)
