"""Postfix configurations as postmasters run them, laid over a gateway's private instance.

Each shape starts from Debian's stock "Internet Site" files (:func:`tests.support.gateway.stock_debian`)
and adds the master.cf/main.cf text of tests/data/real-configs/, which names the guide or distribution
default it comes from. ``@NAME@`` placeholders in those files are filled in here (ports of this test).

The port-25 service is bound to ``<host>:smtp`` on a loopback address of its own (127.0.25.x), so the
audit and setup see a real port-25 smtpd (or postscreen) while parallel tests never share it.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from tests.support.gateway import Gateway, age_config, stock_debian
from tests.support.procs import free_port, port_accepts, tail, wait_for

DATA = Path(__file__).resolve().parents[1] / "data" / "real-configs"


def fixture_text(name: str, **values: str) -> str:
    """tests/data/real-configs/*name* with each ``@KEY@`` replaced by ``values[KEY]``."""
    text = (DATA / name).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    assert not re.search(r"@[A-Z_]+@", text), f"{name}: a placeholder was not filled in"
    return text


def port25_host() -> str:
    """A loopback address for this test's port-25 service (127.0.25.2 - 127.0.25.254)."""
    return f"127.0.25.{random.randint(2, 254)}"


def debian_with_port25(gw: Gateway, program: str = "smtpd") -> str:
    """:func:`stock_debian`, then its smtp service moved to ``<host>:smtp`` running *program*
    (``smtpd``; ``postscreen`` with maxproc 1 as master.cf.dist's commented line has it).

    :returns: the host; ``gw.port25_host`` is set to it too.
    """
    stock_debian(gw, free_port())
    host = port25_host()
    master = gw.pf.config_dir / "master.cf"
    stock = f"127.0.0.1:{gw.pf.smtp_port}      inet  n       -       y       -       -       smtpd"
    text = master.read_text()
    assert stock in text
    line = (f"{host}:smtp      inet  n       -       y       -       1       postscreen" if program == "postscreen"
            else f"{host}:smtp      inet  n       -       y       -       -       smtpd")
    master.write_text(text.replace(stock, line if program == "smtpd" else "", 1))
    gw.port25_host = host
    age_config(gw.pf.config_dir)
    return host


def add_main(gw: Gateway, name: str, **values: str) -> None:
    """Append the fixture *name* to main.cf (later lines win, as in Postfix)."""
    _append(gw.pf.config_dir / "main.cf", fixture_text(name, **values))


def add_master(gw: Gateway, name: str, **values: str) -> None:
    """Append the fixture *name* to master.cf."""
    _append(gw.pf.config_dir / "master.cf", fixture_text(name, **values))


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n" + text)
    age_config(path.parent)


def start_postfix(gw: Gateway) -> None:
    """``postfix check`` + ``start``; wait for the port-25 service and the instance's log."""
    gw.pf.postfix("check")
    gw.pf.postfix("start")
    wait_for(lambda: port_accepts(25, gw.port25_host), 15, f"port 25 on {gw.port25_host}",
             lambda: tail(gw.pf.maillog))
