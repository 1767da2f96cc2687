"""A gateway under test: a private Postfix instance, a tor, and every path setup may write.

Used by tests/integration/test_setup*.py, tests/infra/test_host_state.py and
tests/package/test_quick_start.py.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from click.testing import CliRunner

from onion_gateway.cli import main
from tests.support.postfix import PostfixInstance, new_instance
from tests.support.procs import free_port, public_tempdir, tail
from tests.support.tor import TorProcess

OWN_DOMAIN = "own.example.test"          # excluded by the session's serve fixture: delivered locally


@dataclass
class Gateway:
    """A Postfix instance + tor + every path setup may write, all private to one test."""

    pf: PostfixInstance
    tor: TorProcess
    root: Path
    transport_map: str
    listener_port: int = field(default_factory=free_port)

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def wrapper(self) -> Path:
        return self.root / "bin" / "smtp_tor"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def hs_dir(self) -> Path:
        return self.tor.data_dir / "onion-mail"

    @property
    def own_table(self) -> str:
        """The regexp table setup puts first in transport_maps (own domains never wait for the daemon)."""
        return f"regexp:{self.pf.config_dir}/onion-gateway-own-domains.regexp"

    @property
    def transport_maps(self) -> str:
        """transport_maps as setup leaves it on a Postfix that had none."""
        return f"{self.own_table}, {self.transport_map}"

    @property
    def listener(self) -> str:
        return f"127.0.0.1:{self.listener_port}"

    def options(self) -> dict[str, str]:
        """Every [setup] key pointed into this test's directories (the same names as the CLI flags)."""
        return {"postfix_config_dir": str(self.pf.config_dir), "tor_control": self.tor.control,
                "listener": self.listener, "transport_map": self.transport_map,
                "socks": f"127.0.0.1:{self.tor.socks_port}", "state_dir": str(self.state_dir),
                "wrapper_path": str(self.wrapper), "torsocks_conf": str(self.etc / "torsocks.conf"),
                "torrc": str(self.tor.torrc), "torrc_piece": str(self.etc / "onion-gateway.torrc"),
                "tor_defaults_torrc": str(self.tor.defaults), "hidden_service_dir": str(self.hs_dir),
                "systemd_unit": str(self.etc / "onion-gateway.service"),
                "serve_config": str(self.etc / "onion-gateway.toml")}

    def args(self, *extra: str) -> list[str]:
        flags = [f for key, value in self.options().items() for f in ("--" + key.replace("_", "-"), value)]
        return ["setup", "--domain", OWN_DOMAIN, "--domain", "other.example.test", *flags, *extra]

    def setup(self, *extra: str, expect: int = 0):
        result = CliRunner().invoke(main, self.args(*extra), catch_exceptions=False)
        assert result.exit_code == expect, result.output + "\n--- tor log:\n" + tail(self.tor.log)
        return result

    def snapshot(self) -> dict[str, tuple[bytes, int, int]]:
        """Every file setup could touch: ``{path: (bytes, mode, mtime_ns)}`` (tor's data dir excluded)."""
        files: dict[str, tuple[bytes, int, int]] = {}
        for top in (self.pf.config_dir, self.root, self.tor.torrc):
            paths = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
            for path in paths:
                st = path.stat()
                files[str(path)] = (path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        return files

    def address_line(self, output: str) -> str:
        line = next(l for l in output.splitlines() if l.startswith("onion address: "))
        return line.split(": ", 1)[1]

    def close(self) -> None:
        """Stop Postfix and tor and remove their directories."""
        self.pf.stop()
        self.tor.stop()
        for path in (self.root, self.tor.workdir, self.pf.root):
            shutil.rmtree(path, ignore_errors=True)


def new_gateway(transport_map: str, **tor_options) -> Gateway:
    """A fresh Postfix instance (written, not started) for OWN_DOMAIN and a started tor.

    :param tor_options: :class:`TorProcess` fields (``password``, ``unix_control``).
    """
    root = public_tempdir("og-setup-")
    for sub in ("etc", "bin"):
        (root / sub).mkdir()
    pf = new_instance("og-setup-pf-", hostname="rx.lab.test", domains=[OWN_DOMAIN])
    age_config(pf.config_dir)
    tor = TorProcess(root.parent / (root.name + "-tor"), **tor_options).write().start()
    return Gateway(pf=pf, tor=tor, root=root, transport_map=transport_map)


def changed_paths(a: dict, b: dict) -> list[str]:
    """The paths whose bytes or mode differ between two snapshots (added and removed files included)."""
    return sorted(k for k in set(a) | set(b) if (a.get(k) or (None, None))[:2] != (b.get(k) or (None, None))[:2])


def same_content(a: dict, b: dict) -> bool:
    """Two snapshots hold the same bytes and modes (mtimes may differ)."""
    return {k: v[:2] for k, v in a.items()} == {k: v[:2] for k, v in b.items()}


def age_config(config_dir: Path) -> None:
    """Date main.cf/master.cf back 10 s: postconf waits on files younger than a second."""
    for name in ("main.cf", "master.cf"):
        path = config_dir / name
        os.utime(path, (path.stat().st_mtime - 10,) * 2)


def stock_debian(gw: Gateway, dead_port: int) -> None:
    """Rewrite the gateway's private instance as Debian 12's "Internet Site" main.cf/master.cf.

    main.cf: /usr/share/postfix/main.cf.debian plus what postfix's postinst writes for "Internet Site";
    only what a private instance must change is changed (its directories, loopback, a private aliases
    file, and a closed relayhost so nothing leaves the box). master.cf: /usr/share/postfix/master.cf.dist
    as shipped (chroot y), with the smtp inet service moved to the instance's loopback port.

    :param gw: the gateway whose instance (written, not started) is rewritten; OWN_DOMAIN goes into
        mydestination.
    :param dead_port: a loopback port nobody listens on: the relayhost, so no mail leaves the box.
    :raises subprocess.CalledProcessError: if postalias fails.
    """
    cfg, root = gw.pf.config_dir, gw.pf.root
    (cfg / "aliases").write_text("postmaster: root\n")
    subprocess.run(["postalias", "-c", str(cfg), f"hash:{cfg}/aliases"], check=True, timeout=30)
    stock = Path("/usr/share/postfix/main.cf.debian").read_text()
    internet_site = {   # postinst, main_mailer_type "Internet Site", mailname rx.lab.test
        "myhostname": "rx.lab.test", "alias_maps": f"hash:{cfg}/aliases", "alias_database": f"hash:{cfg}/aliases",
        "myorigin": "$myhostname", "mydestination": f"$myhostname, {OWN_DOMAIN}, localhost.localdomain, localhost",
        "relayhost": f"[127.0.0.1]:{dead_port}", "mynetworks": "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128",
        "mailbox_size_limit": "0", "recipient_delimiter": "+", "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "smtpd_relay_restrictions": "permit_mynetworks permit_sasl_authenticated defer_unauth_destination",
        # a private instance: its own directories and log
        "config_directory": str(cfg), "queue_directory": str(root / "queue"), "data_directory": str(root / "data"),
        "maillog_file": str(gw.pf.maillog), "maillog_file_prefixes": "/tmp", "smtp_dns_support_level": "disabled",
    }
    (cfg / "main.cf").write_text(stock + "".join(f"{k} = {v}\n" for k, v in internet_site.items()))
    master = Path("/usr/share/postfix/master.cf.dist").read_text()
    master = master.replace("smtp      inet  n       -       y       -       -       smtpd",
                            f"127.0.0.1:{gw.pf.smtp_port}      inet  n       -       y       -       -       smtpd", 1)
    (cfg / "master.cf").write_text(master)
    age_config(cfg)
