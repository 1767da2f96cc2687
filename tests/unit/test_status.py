"""status.py's pure parts: which transport_maps entries reach the daemon, reply framing, verdict order."""

from __future__ import annotations

import pytest

from onion_gateway.config import serve_settings
from onion_gateway.status import (Check, StatusReport, Verdict, _netstring_payload, daemon_tables, format_report,
                                  uses_daemon)

SERVE = serve_settings({"tcp_table": ["127.0.0.1:6013"], "socketmap": ["127.0.0.1:6014", "unix:/run/og.sock"]})


def test_daemon_tables_name_every_listener() -> None:
    assert daemon_tables(SERVE) == ["tcp:127.0.0.1:6013", "socketmap:inet:127.0.0.1:6014",
                                    "socketmap:unix:/run/og.sock"]


def test_daemon_tables_bracket_ipv6() -> None:
    assert daemon_tables(serve_settings({"tcp_table": ["[::1]:6013"], "socketmap": []})) == ["tcp:[::1]:6013"]


@pytest.mark.parametrize("value, entry", [
    ("socketmap:inet:127.0.0.1:6014:onion", "socketmap:inet:127.0.0.1:6014:onion"),
    ("hash:/etc/postfix/transport, tcp:127.0.0.1:6013", "tcp:127.0.0.1:6013"),
    ("hash:/etc/postfix/transport\n    proxy:socketmap:unix:/run/og.sock:onion", "proxy:socketmap:unix:/run/og.sock:onion"),
    ("socketmap:inet:127.0.0.1:6014:anyname", "socketmap:inet:127.0.0.1:6014:anyname"),
])
def test_uses_daemon_finds_the_entry(value: str, entry: str) -> None:
    assert uses_daemon(value, SERVE) == entry


@pytest.mark.parametrize("value", [
    "",
    "hash:/etc/postfix/transport",
    "tcp:127.0.0.1:60130",                      # another port that merely starts the same
    "socketmap:inet:127.0.0.1:60140:onion",
    "tcp:127.0.0.2:6013",
])
def test_uses_daemon_rejects_other_tables(value: str) -> None:
    assert uses_daemon(value, SERVE) is None


@pytest.mark.parametrize("data, payload", [
    (b"9:NOTFOUND ,", "NOTFOUND "),
    (b"23:OK smtptor:[x.onion]:25,extra", "OK smtptor:[x.onion]:25"),
    (b"9:NOTFOUND", None),       # incomplete
    (b"9:NOTFOUND!", None),      # wrong terminator
    (b"x:abc,", None),
    (b"", None),
])
def test_netstring_payload(data: bytes, payload: str | None) -> None:
    assert _netstring_payload(data) == payload


def test_report_is_as_bad_as_its_worst_check() -> None:
    ok = Check("a", "t", Verdict.OK, "")
    warn = Check("b", "t", Verdict.WARN, "")
    fail = Check("c", "t", Verdict.FAIL, "")
    assert StatusReport(()).verdict is Verdict.OK
    assert StatusReport((ok, warn)).verdict is Verdict.WARN and StatusReport((ok, warn)).ok
    assert StatusReport((fail, ok, warn)).verdict is Verdict.FAIL and not StatusReport((fail,)).ok


def test_format_report_one_line_per_check() -> None:
    lines = format_report(StatusReport((Check("tor_control", "127.0.0.1:9051", Verdict.FAIL, "refused"),)))
    assert lines == ["fail  tor_control      127.0.0.1:9051  refused"]
