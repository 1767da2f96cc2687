"""README.md's "Quick start on a Debian host", followed from top to bottom with the installed package.

Runs in the Debian job (``scripts/dev.sh deb``) against ``/usr/bin/onion-gateway`` and Debian's python3;
elsewhere it skips. The ``onion-gateway`` commands and the TOML keys are read from the README itself,
so a quick start that drifts from what works fails here.

What differs from a postmaster's host, and why (this machine is also the CI machine, whose /etc/postfix,
/etc/tor, /etc/onion-gateway and /var/lib/tor must not change):

- The config is a copy of the installed conffile, in the gateway's private ``etc/``; the conffile itself
  is only read. The copy gets the README's two edits (``[serve] dns_servers``, ``[setup] domains``) as
  a postmaster makes them in an editor: the commented-out key uncommented and given a value. It also
  gets the keys that point setup at the private Postfix and Tor (tests/support/gateway.py's
  ``Gateway.options()``: directories, the Tor control socket, SocksPort and torrc, free loopback
  ports for the listener and the daemon's maps) and ``systemd_unit = ""`` (the README's host uses the
  packaged unit and writes none; a copy is not the packaged unit's config, and /etc/systemd is off limits).
- Postfix is a private instance with Debian's stock "Internet Site" main.cf/master.cf
  (:func:`tests.support.gateway.stock_debian`); Tor is a private tor with ``DisableNetwork 1`` and a
  ControlSocket (cookie authentication) in a temp dir, like Debian's ``unix:/run/tor/control``.
- No systemd here: setup stops and names the command that starts the daemon; the test runs that
  command, as docs/setup.md says, then setup again.
- "Publish the SRV record" is a dnsmasq on loopback that the test restarts with the record setup printed.
- The resolver is that dnsmasq: it answers for the test domain and for example.com (the foreign domain
  the relay audit's probes use), and nothing else.
- Tor has no network, so the onion service is created but no descriptor is built or published:
  ``status`` fails ``tor_control`` (bootstrapped 0 %), ``onion_service`` ("this Tor does not serve
  it, or has no descriptor for it yet") and ``tor_circuits`` (network down) and exits 1; every other
  check must be ``ok`` (the onion delivery health of an empty queue and log included).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.conftest import require
from tests.support.daemon import ServeProcess
from tests.support.dnsserver import Dnsmasq, SrvEntry
from tests.support.gateway import OWN_DOMAIN, Gateway, new_gateway, stock_debian
from tests.support.procs import free_port, tail

pytestmark = [pytest.mark.package,
              pytest.mark.skipif(os.environ.get("ONION_GATEWAY_TEST_INSTALLED") != "1",
                                 reason="runs in the Debian job (scripts/dev.sh deb), against the installed .deb")]

PROGRAM = "/usr/bin/onion-gateway"
CONFFILE = Path("/etc/onion-gateway/onion-gateway.toml")
DEFAULT_STATE_DIR = "/var/lib/onion-gateway-setup"
README = Path(__file__).resolve().parents[2] / "README.md"
#: What the test must leave as it found it on the machine (content, or None for "absent").
MACHINE_PATHS = [CONFFILE, Path("/etc/postfix/main.cf"), Path("/etc/postfix/master.cf"), Path("/etc/tor/torrc"),
                 Path("/etc/tor/onion-gateway.torrc"), Path("/etc/onion-gateway/torsocks.conf"),
                 Path("/etc/systemd/system/onion-gateway.service"), Path("/usr/lib/postfix/sbin/smtp_tor"),
                 Path("/var/lib/tor/onion-gateway"), Path(DEFAULT_STATE_DIR)]
#: status checks that cannot be ok with ``DisableNetwork 1``: check name -> (verdict, text in the detail).
#: Without a consensus Tor builds no descriptor, so status cannot tell "served here, not published" from
#: "not served here" and says both.
OFFLINE_TOR = {"tor_control": ("fail", "bootstrapped 0%"),
               "onion_service": ("fail", "this Tor does not serve it, or has no descriptor for it yet"),
               "tor_circuits": ("fail", "circuit-established=0, network down")}


def quick_start() -> str:
    """The README's "Quick start on a Debian host" section (up to the next ``## `` heading)."""
    text = README.read_text()
    start = text.index("## Quick start on a Debian host")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def readme_commands(section: str) -> list[str]:
    """Every ``onion-gateway setup|status|audit-open-relay ...`` command of *section*, in order: lines of
    its code blocks and inline code spans (a ``# comment`` after a command is dropped)."""
    pattern = re.compile(r"(?:^[ \t]*|`)(onion-gateway (?:setup|status|audit-open-relay)\b[^`#\n]*)", re.M)
    return [m.group(1).strip() for m in pattern.finditer(section)]


def readme_settings(section: str) -> dict[str, dict]:
    """The one ```` ```toml ```` block of *section*, parsed."""
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert len(blocks) == 1, f"the quick start should show one TOML block, found {len(blocks)}"
    return tomllib.loads(blocks[0])


def as_run(command: str, config: Path, state_dir: Path) -> list[str]:
    """A README command as this test runs it: the installed program, the copy of the conffile, the
    private state directory."""
    command = command.replace(str(CONFFILE), str(config)).replace(DEFAULT_STATE_DIR, str(state_dir))
    argv = shlex.split(command)
    assert argv[0] == "onion-gateway", command
    return [PROGRAM, *argv[1:]]


def set_key(text: str, table: str, key: str, value: object) -> str:
    """Uncomment *key* in ``[table]`` of a conffile's *text* and give it *value* (a string or a list of
    strings, written as TOML), the way a postmaster edits the file.

    :raises AssertionError: when ``[table]`` has no commented-out *key* line.
    """
    lines = text.splitlines(keepends=True)
    current = None
    for i, line in enumerate(lines):
        header = re.match(r"^\[([^\]]+)\]\s*$", line)
        if header:
            current = header.group(1)
        elif current == table and re.match(rf"^#\s*{re.escape(key)}\s*=", line):
            lines[i] = f"{key} = {json.dumps(value)}\n"
            return "".join(lines)
    raise AssertionError(f"{CONFFILE} has no commented-out {key} in [{table}]")


def run(argv: list[str], answer: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run *argv*; *answer* is typed at its prompt."""
    return subprocess.run(argv, input=answer, capture_output=True, text=True, timeout=180)


def shown(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout:\n{result.stdout}\n--- stderr:\n{result.stderr}"


def machine_state() -> dict[Path, bytes | list[str] | None]:
    """The content of every :data:`MACHINE_PATHS` entry (a directory: its listing; absent: None)."""
    state: dict[Path, bytes | list[str] | None] = {}
    for path in MACHINE_PATHS:
        if path.is_dir():
            state[path] = sorted(os.listdir(path))
        else:
            state[path] = path.read_bytes() if path.exists() else None
    return state


def config_edits(section: str, gw: Gateway, dns: Dnsmasq, tcp_port: int, socketmap_port: int) -> dict:
    """``{(table, key): value}`` for the copy: the README's keys with this test's values, then the keys
    that point setup at the private instances."""
    ours = {("serve", "dns_servers"): [dns.address], ("setup", "domains"): [OWN_DOMAIN]}
    readme = {(table, key) for table, keys in readme_settings(section).items() for key in keys}
    assert readme == set(ours), f"the README's quick start edits {sorted(readme)}; this test knows {sorted(ours)}"
    private = {("serve", "tcp_table"): [f"127.0.0.1:{tcp_port}"],
               ("serve", "socketmap"): [f"127.0.0.1:{socketmap_port}"],
               ("serve", "postfix_config_dir"): str(gw.pf.config_dir)}
    setup = {key: value for key, value in gw.options().items() if key != "transport_map"}  # derived from [serve]
    setup["tor_control"] = f"unix:{gw.tor.control_socket}"
    setup["systemd_unit"] = ""
    private.update({("setup", key): value for key, value in setup.items()})
    return {**ours, **private}


def status_lines(output: str) -> dict[str, list[tuple[str, str, str]]]:
    """``status`` output as ``{check: [(verdict, target, detail), ...]}``."""
    checks: dict[str, list[tuple[str, str, str]]] = {}
    for line in output.splitlines():
        verdict, name, rest = line.split(None, 2)
        target, _, detail = rest.partition("  ")
        checks.setdefault(name, []).append((verdict, target, detail.strip()))
    return checks


def test_the_quick_start_from_top_to_bottom():
    require("postfix", "postconf", "postalias", "postmap", "tor", "torsocks", "dnsmasq")
    section = quick_start()
    commands = readme_commands(section)
    assert [c.split()[1] for c in commands] == ["setup", "setup", "status", "audit-open-relay", "setup"], commands
    dry_run, apply, status, audit, rollback = commands
    assert dry_run.endswith(" --dry-run") and rollback.endswith(" --rollback"), commands
    machine_before = machine_state()

    # 1. Install the package: the job did (apt-get install ./onion-gateway_*_all.deb).
    installed = subprocess.run(["dpkg-query", "--showformat=${Status}", "--show", "onion-gateway"],
                               capture_output=True, text=True).stdout
    assert installed == "install ok installed" and Path(PROGRAM).is_file(), installed

    gw = new_gateway("", unix_control=True)
    # The trusted resolver: the test zone (no SRV record yet) and example.com, the foreign domain of the
    # relay audit's probes, without one (as on the internet; a resolver that cannot answer makes the
    # daemon answer "temporary failure" and every probe ends 451, inconclusive).
    dns = Dnsmasq(gw.root / "dns", local_zones=["example.test", "example.com"]).start()
    daemon = None
    try:
        stock_debian(gw, free_port())
        gw.pf.start()
        main_cf, master_cf, torrc = (gw.pf.config_dir / "main.cf").read_bytes(), \
            (gw.pf.config_dir / "master.cf").read_bytes(), gw.tor.torrc.read_bytes()

        # 2. Say which resolver to trust and which domains are yours: in a copy of the conffile.
        config = gw.etc / "onion-gateway.toml"               # = serve_config in Gateway.options()
        tcp_port, socketmap_port = free_port(), free_port()
        edits = config_edits(section, gw, dns, tcp_port, socketmap_port)
        text = CONFFILE.read_text()
        for (table, key), value in edits.items():
            text = set_key(text, table, key, value)
        config.write_text(text)
        loaded = tomllib.loads(text)
        assert {(t, k): v for t, keys in loaded.items() for k, v in keys.items() if k != "static_routes"} == edits

        # 3. Look at the plan: nothing is changed.
        before = gw.snapshot()
        result = run(as_run(dry_run, config, gw.state_dir))
        assert result.returncode == 0, shown(result)
        assert "dry run: nothing was changed" in result.stdout, shown(result)
        assert f"postconf -e 'transport_maps = {gw.own_table}, socketmap:inet:127.0.0.1:{socketmap_port}:onion'" \
            in result.stdout, shown(result)                                  # the plan, derived from [serve]
        assert "note: the lookup daemon does not answer" in result.stdout, shown(result)
        assert f"_onion-mx._tcp.{OWN_DOMAIN}." not in result.stdout      # no address before the onion exists
        assert gw.snapshot() == before

        # 4. Apply. No systemd here: setup names the command that starts the daemon and changes nothing.
        result = run(as_run(apply, config, gw.state_dir), answer="y\n")
        start_it = f"Start it first: {PROGRAM} serve --config {config} then run setup again; nothing was changed"
        assert result.returncode == 1 and start_it in " ".join(result.stderr.split()), shown(result)   # one line
        assert f"`{PROGRAM} serve --config {CONFFILE}`" in section        # what the README tells to start
        assert gw.snapshot() == before
        daemon = ServeProcess(command=[PROGRAM, "serve", "--config", str(config)], tcp_port=tcp_port,
                              socketmap_port=socketmap_port).start()
        result = run(as_run(apply, config, gw.state_dir), answer="y\n")
        assert result.returncode == 0, shown(result) + "\n--- tor log:\n" + tail(gw.tor.log)
        assert "Apply these changes? [y/N]" in result.stdout, shown(result)
        address = gw.address_line(result.stdout)
        record = f"_onion-mx._tcp.{OWN_DOMAIN}. 3600 IN SRV 10 5 25 {address}."
        assert f"publish in DNS:\n  {record}\n" in result.stdout, shown(result)
        assert f"next: publish the SRV record above, then check everything: {status}" \
            .replace(str(CONFFILE), str(config)) in result.stdout, shown(result)

        # 5. Publish the SRV record setup printed.
        name, _ttl, _in, _srv, priority, weight, port, target = record.split()
        dns.restart(srv=[SrvEntry(OWN_DOMAIN, target.rstrip("."), int(port), int(priority), int(weight))])

        # 6. Check everything: green but for what a Tor without network cannot do.
        result = run(as_run(status, config, gw.state_dir))
        checks = status_lines(result.stdout)
        for check, (verdict, detail) in OFFLINE_TOR.items():
            assert [(v, detail in d) for v, _t, d in checks.get(check, [])] == \
                [(verdict, True)], shown(result)
        not_ok = {c: v for c, v in checks.items() if c not in OFFLINE_TOR and any(x[0] != "ok" for x in v)}
        assert not_ok == {}, shown(result)
        assert {c: len(v) for c, v in checks.items() if c not in OFFLINE_TOR} == {
            "map_listener": 2, "srv_record": 1, "transport_maps": 1, "smtptor_service": 1, "relay_audit": 1,
            "smtptor_queue": 1, "smtptor_delivery": 1}, \
            shown(result)
        assert checks["onion_service"][0][1] == address and checks["srv_record"][0][1] == name, shown(result)
        assert checks["relay_audit"][0][1] == gw.listener, shown(result)
        assert result.returncode == 1, shown(result)                     # a failed check: exit 1
        result = run(as_run(audit, config, gw.state_dir))
        assert result.returncode == 0 and f"== {gw.listener}  ->  SAFE (exit 0)" in result.stdout, shown(result)

        # To undo: shows what it undoes and asks.
        result = run(as_run(rollback, config, gw.state_dir), answer="y\n")
        assert result.returncode == 0 and "Roll back these changes? [y/N]" in result.stdout, shown(result)
        assert (gw.pf.config_dir / "main.cf").read_bytes() == main_cf
        assert (gw.pf.config_dir / "master.cf").read_bytes() == master_cf
        assert gw.tor.torrc.read_bytes() == torrc
    finally:
        if daemon is not None:
            daemon.stop()
        dns.stop()
        gw.close()
    assert machine_state() == machine_before
