#!/usr/bin/env python3
"""Write onion-gateway's man pages into a directory (run at package build time, and by the tests).

- ``onion-gateway.1`` and ``onion-gateway-<command>.1``: from the click definitions, by click-man (the
  library the Python community uses for this; one page per command, each option with its help text).
- ``onion-gateway.toml.5``: from ``examples/onion-gateway.toml``, the documented example config: each
  ``[table]`` becomes a section, each key (commented out or not) an entry whose text is the comment block
  above it and the comment after it, with the value shown as written.

Usage: ``python3 scripts/manpages.py TARGET_DIR`` (SOURCE_DATE_EPOCH, when set, dates the pages).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = re.compile(r"^#?\s*([a-z_][a-z0-9_.\"-]*)\s*=\s*(.*?)\s*(?:#\s*(.*))?$")
TABLE = re.compile(r"^\[([a-z_.]+)\]\s*$")
ROFF_REQUEST = re.compile(r"^\.(TH|SH|SS|PP|TP|B|I)( |$)")


def _roff(text: str) -> str:
    """Escape *text* for roff: backslashes, hyphens, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def toml_page(example: Path, version: str) -> str:
    """The onion-gateway.toml(5) page built from the example config *example*.

    :param example: path of the documented example file.
    :param version: the package version shown in the page footer.
    :returns: the page as roff text.
    """
    date = time.strftime("%Y-%m-%d", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))))
    out = [f'.TH "ONION-GATEWAY.TOML" "5" "{date}" "onion-gateway {version}" "File Formats"',
           ".SH NAME", "onion\\-gateway.toml \\- configuration file of onion\\-gateway(1)",
           ".SH SYNOPSIS", "/etc/onion\\-gateway/onion\\-gateway.toml",
           ".SH DESCRIPTION",
           "A TOML file with one table per command. Every key is optional; the values shown are the "
           "defaults unless the text says \\(lqexample\\(rq. Command\\-line options override the file. "
           "Pass it with \\fB\\-\\-config\\fR.",
           ".SH KEYS"]
    comments: list[str] = []
    for raw in example.read_text().splitlines():
        line = raw.strip()
        table = TABLE.match(line)
        key = KEY.match(line)
        if table:
            out += [f".SS [{table.group(1)}]"]
            out += [_roff(c) for c in comments]
            comments = []
        elif key and (not line.startswith("#") or re.match(r'^# ?[a-z_"][\w."-]* = ', line)):
            name, value, trailing = key.groups()
            out += [".TP", f"\\fB{_roff(name)}\\fR = {_roff(value)}"]
            text = [*comments, *([trailing] if trailing else [])]
            out += [_roff(t) for t in text] or ["(no description)"]
            comments = []
        elif line.startswith("#") and not set(line) <= {"#", "-", " "}:
            comments.append(line.lstrip("#").strip())
        elif not line:
            if comments and out[-1] != ".PP":
                out += [".PP", *(_roff(c) for c in comments)]
            comments = []
    out += [".SH FILES", "/etc/onion\\-gateway/onion\\-gateway.toml",
            ".SH SEE ALSO", "onion\\-gateway(1), postconf(5), transport(5), tor(1)"]
    return "\n".join(out) + "\n"


def write_pages(target: Path) -> list[Path]:
    """Write every page into *target* (created if missing); returns the paths written."""
    from click_man.core import write_man_pages

    sys.path.insert(0, str(ROOT))
    from onion_gateway import __version__
    from onion_gateway.cli import main

    target.mkdir(parents=True, exist_ok=True)
    write_man_pages("onion-gateway", main, version=__version__, target_dir=str(target))
    for page in target.glob("*.1"):
        # click-man copies help text as it is: a text line starting with "." or "'" would be read by
        # roff as a request ("... and to this group" -> macro ".."); \& before it makes it text.
        lines = page.read_text().splitlines()
        page.write_text("".join(("\\&" + line if line[:1] in (".", "'") and not ROFF_REQUEST.match(line)
                                 else line) + "\n" for line in lines))
    (target / "onion-gateway.toml.5").write_text(toml_page(ROOT / "examples" / "onion-gateway.toml", __version__))
    return sorted(target.iterdir())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 scripts/manpages.py TARGET_DIR")
    for path in write_pages(Path(sys.argv[1])):
        print(path)
