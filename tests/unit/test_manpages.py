"""The man pages the package ships document every command, every option and every config key.

The pages are generated at build time (debian/rules runs scripts/manpages.py); this test runs the same
generator and checks the pages against the click definitions and the example config, so an option or a
key added without help text or outside the example file shows up here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from onion_gateway.cli import main

ROOT = Path(__file__).resolve().parents[2]


def commands(group: click.Command, path: tuple[str, ...] = ("onion-gateway",)):
    """``[(command path, click command)]`` for the group and every command below it."""
    found = [(path, group)]
    for name, command in getattr(group, "commands", {}).items():
        if not command.hidden:
            found += commands(command, (*path, name))
    return found


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    target = tmp_path_factory.mktemp("man")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "manpages.py"), str(target)], check=True,
                   capture_output=True, text=True)
    return {p.name: p.read_text() for p in target.iterdir()}


def roff(text: str) -> str:
    return text.replace("-", "\\-")


@pytest.mark.parametrize("path, command", commands(main), ids=lambda v: "-".join(v) if isinstance(v, tuple) else "")
def test_every_option_of_every_command_is_in_its_page(pages, path, command):
    page = pages.get("-".join(path) + ".1")
    assert page is not None, f"no page for {' '.join(path)}"
    for param in command.params:
        if isinstance(param, click.Option):
            for opt in param.opts + param.secondary_opts:
                assert roff(opt) in page, f"{opt} of {' '.join(path)} is not in its page"
    for line in page.splitlines():
        assert not re.match(r"^\.\.", line), f"a line starting with '..' is read by roff as a macro: {line!r}"


def example_keys() -> list[tuple[str, str]]:
    """``[(table, key)]`` for every key written in examples/onion-gateway.toml, commented out or not."""
    keys, table = [], ""
    for line in (ROOT / "examples" / "onion-gateway.toml").read_text().splitlines():
        if m := re.match(r"^\[([a-z_.]+)\]", line):
            table = m.group(1)
        elif m := re.match(r'^(?:# ?)?([a-z_][a-z0-9_]*) = ', line):
            keys.append((table, m.group(1)))
    return keys


def test_every_config_key_is_in_the_toml_page(pages):
    page = pages["onion-gateway.toml.5"]
    assert len(example_keys()) > 40
    for table, key in example_keys():
        section = page.split(f".SS [{table}]", 1)
        assert len(section) == 2, f"no section [{table}]"
        assert f"\\fB{roff(key)}\\fR = " in section[1], f"{table}.{key} is not in onion-gateway.toml(5)"
