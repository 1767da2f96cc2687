"""The installed Debian package, as a postmaster gets it from ``apt-get install ./onion-gateway_*.deb``.

These tests run in the Debian job of ``scripts/dev.sh test`` (``scripts/dev.sh deb``), after the .deb was
built and installed, with Debian's /usr/bin/python3 and Debian's Python libraries; elsewhere they skip
(the package is not installed). Everything talks to loopback only: the DNS server is a dnsmasq on
127.0.0.1 started here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.conftest import require
from tests.support.dnsserver import Dnsmasq, SrvEntry
from tests.support.onions import ONION_A
from tests.support.procs import public_tempdir

pytestmark = [pytest.mark.package,
              pytest.mark.skipif(os.environ.get("ONION_GATEWAY_TEST_INSTALLED") != "1",
                                 reason="runs in the Debian job (scripts/dev.sh deb), against the installed .deb")]

PROGRAM = "/usr/bin/onion-gateway"
CONFFILE = Path("/etc/onion-gateway/onion-gateway.toml")


def run(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROGRAM, *args], capture_output=True, text=True, timeout=60, **kwargs)


def test_the_command_is_debians_and_uses_debians_libraries():
    first_line = Path(PROGRAM).read_text().splitlines()[0]
    assert first_line == "#!/usr/bin/python3"
    out = subprocess.run(["/usr/bin/python3", "-c", "import onion_gateway, dns.version; "
                          "print(onion_gateway.__file__); print(dns.version.version)"],
                         capture_output=True, text=True, check=True, cwd="/").stdout.split()
    assert out[0].startswith("/usr/lib/python3/dist-packages/onion_gateway/")
    assert out[1].startswith("2.")


def test_lookup_routes_through_a_loopback_dns_server():
    require("dnsmasq")
    workdir = public_tempdir("og-deb-")
    dns = Dnsmasq(workdir / "dns", srv=[SrvEntry("a.example.test", ONION_A)]).start()
    try:
        found = run("lookup", "--dns-server", dns.address, "user@a.example.test")
        missing = run("lookup", "--dns-server", dns.address, "user@nosrv.example.test")
    finally:
        dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    assert (found.returncode, found.stdout.strip()) == (0, f"smtptor:[{ONION_A}]:25"), found.stderr
    assert missing.returncode == 1, missing.stderr


def test_conffile_is_registered_and_every_key_is_commented_out():
    conffiles = subprocess.run(["dpkg-query", "--showformat=${Conffiles}", "--show", "onion-gateway"],
                               capture_output=True, text=True, check=True).stdout
    assert str(CONFFILE) in conffiles
    document = tomllib.loads(CONFFILE.read_text())
    assert all(value == {} or (isinstance(value, dict) and all(v == {} for v in value.values()))
               for value in document.values()), document


def test_conffile_loads_as_the_defaults():
    out = run("lookup", "--config", str(CONFFILE), "--dns-server", "127.0.0.1:9", "--dns-timeout", "0.5",
              f"user@{ONION_A}")
    assert (out.returncode, out.stdout.strip()) == (0, f"smtptor:[{ONION_A}]:25"), out.stderr


@pytest.mark.parametrize("page", ["man1/onion-gateway.1.gz", "man1/onion-gateway-serve.1.gz",
                                  "man1/onion-gateway-setup.1.gz", "man1/onion-gateway-audit-open-relay.1.gz",
                                  "man5/onion-gateway.toml.5.gz"])
def test_man_pages_are_installed_and_render(page):
    path = Path("/usr/share/man") / page
    assert path.is_file()
    if shutil.which("man"):
        out = subprocess.run(["man", "-l", str(path)], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "MANWIDTH": "80"})
        assert out.returncode == 0 and "onion" in out.stdout, out.stderr


def test_bash_completion_completes_the_commands():
    script = Path("/usr/share/bash-completion/completions/onion-gateway")
    assert "_ONION_GATEWAY_COMPLETE" in script.read_text()
    out = subprocess.run([PROGRAM], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "_ONION_GATEWAY_COMPLETE": "bash_complete",
                              "COMP_WORDS": "onion-gateway se", "COMP_CWORD": "1"})
    assert {"plain,serve", "plain,setup"} <= set(out.stdout.split()), out.stdout


@pytest.mark.parametrize("unit", ["onion-gateway.service", "onion-gateway.socket"])
def test_units_are_installed_valid_and_not_enabled(unit):
    path = Path("/lib/systemd/system") / unit
    assert path.is_file(), f"{path} is not installed"
    text = path.read_text()
    # a packaged unit is changed with a drop-in; it must not claim to be setup's (which rollback removes)
    assert text.startswith("# shipped by the onion-gateway Debian package") and "setup --rollback" not in text
    if unit.endswith(".service"):
        assert f"ExecStart={PROGRAM} serve --config {CONFFILE}" in text
        assert "Type=notify" in text and "RestartPreventExitStatus=78" in text
    else:
        assert "ListenStream=127.0.0.1:6013" in text and "ListenStream=127.0.0.1:6014" in text
    # postinst enables nothing: the postmaster runs `onion-gateway setup` first
    assert not list(Path("/etc/systemd/system").rglob(unit))
    if shutil.which("systemd-analyze"):
        out = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
