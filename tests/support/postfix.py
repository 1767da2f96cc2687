"""A private, throwaway Postfix instance under /tmp (no systemd, nothing in /etc/postfix changes).

Built from the recipe in shared/lab/pf-instance.sh: its own config, queue and data directories,
a maillog file, listeners only on 127.0.0.1, and nothing that can leave loopback: remote mail goes to
``relayhost = [127.0.0.1]:<dead port>`` and the smtp client never asks DNS.
Every directory is traversable by user postfix (pytest's 0700 tmp dirs are not; LAB-NOTES §2).
"""

from __future__ import annotations

import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import free_port, port_accepts, public_tempdir, tail, wait_for

BASE_MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass
class PostfixInstance:
    """A private Postfix under ``root`` with an smtpd on 127.0.0.1:``smtp_port``.

    :param root: base directory (made by :func:`new_instance`).
    :param hostname: myhostname (each instance its own, or the smtp client sees "my own hostname").
    :param domains: virtual_mailbox_domains delivered into ``root/vmail/inbox``.
    :param main_extra: more main.cf lines (``key = value``).
    :param master_extra: more master.cf text, appended.
    """

    root: Path
    hostname: str = "mx.lab.test"
    domains: list[str] = field(default_factory=lambda: ["lab.test"])
    main_extra: dict[str, str] = field(default_factory=dict)
    master_extra: str = ""
    smtp_port: int = 0
    dead_relay_port: int = 0

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    @property
    def mailbox(self) -> Path:
        return self.root / "vmail" / "inbox"

    def main_cf(self) -> dict[str, str]:
        r = self.root
        values = {
            "compatibility_level": "3.6",
            "config_directory": str(r / "etc"),
            "queue_directory": str(r / "queue"),
            "data_directory": str(r / "data"),
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": "/tmp",
            "myhostname": self.hostname,
            "mydomain": "lab.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "smtpd_banner": "$myhostname ESMTP lab",
            "virtual_mailbox_domains": " ".join(self.domains),
            "virtual_mailbox_base": str(r / "vmail"),
            "virtual_mailbox_maps": "static:inbox/",
            "virtual_uid_maps": "static:65534",
            "virtual_gid_maps": "static:65534",
            # nothing may leave the box: non-local mail goes to a closed loopback port and is deferred
            "relayhost": f"[127.0.0.1]:{self.dead_relay_port}",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
        }
        values.update(self.main_extra)
        return values

    def write(self) -> "PostfixInstance":
        """Create the directories and write main.cf and master.cf."""
        assert shutil.which("postfix"), "postfix is not installed (scripts/dev.sh installs it)"
        if not self.smtp_port:
            self.smtp_port = free_port()
        if not self.dead_relay_port:
            self.dead_relay_port = free_port()
        for sub in ("etc", "queue", "vmail"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        data = self.root / "data"
        data.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(data, "postfix")
        shutil.chown(self.root / "vmail", "nobody", "nogroup")
        (self.config_dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.main_cf().items()))
        master = f"127.0.0.1:{self.smtp_port} inet n - n - - smtpd\n" + BASE_MASTER_CF + self.master_extra
        (self.config_dir / "master.cf").write_text(master)
        return self

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``postfix -c <config_dir> ARGS``."""
        return subprocess.run(["postfix", "-c", str(self.config_dir), *args], capture_output=True, text=True,
                              check=check, timeout=60)

    def postconf(self, *args: str) -> str:
        """Run ``postconf -c <config_dir> ARGS`` and return stdout."""
        return subprocess.run(["postconf", "-c", str(self.config_dir), *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout

    def start(self) -> "PostfixInstance":
        """``postfix check`` then ``postfix start``; wait until the smtpd accepts."""
        self.postfix("check")
        self.postfix("start")
        wait_for(lambda: port_accepts(self.smtp_port), 15, f"postfix smtpd on 127.0.0.1:{self.smtp_port}",
                 lambda: tail(self.maillog))
        return self

    def reload(self) -> None:
        self.postfix("reload")

    def stop(self) -> None:
        self.postfix("stop", check=False)

    def smtp(self, port: int | None = None) -> smtplib.SMTP:
        """An smtplib client connected to this instance's smtpd (or another of its ports)."""
        client = smtplib.SMTP("127.0.0.1", port or self.smtp_port, local_hostname="client.lab.test", timeout=30)
        client.ehlo()
        return client

    def log_text(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return ""

    def queue_ids(self) -> list[str]:
        """IDs of messages in the queue (``postqueue -j``)."""
        import json

        out = subprocess.run(["postqueue", "-c", str(self.config_dir), "-j"], capture_output=True, text=True,
                             timeout=30).stdout
        return [json.loads(line)["queue_id"] for line in out.splitlines() if line.strip()]


def new_instance(prefix: str = "og-pf-", **kwargs) -> PostfixInstance:
    """Make and write a :class:`PostfixInstance` in a fresh public temp dir."""
    return PostfixInstance(root=public_tempdir(prefix), **kwargs).write()


SMTPTOR_SERVICE = ("smtptor unix - - n - - smtp\n"
                   "  -o syslog_name=postfix/smtptor\n"
                   "  -o smtp_dns_support_level=disabled\n"
                   "  -o smtp_host_lookup=native\n")
"""An ``smtptor`` transport named in the log as setup's is (``postfix/smtptor/smtp``), without torsocks."""


def route_over_smtptor(pf: PostfixInstance, ports: dict[str, int]) -> None:
    """Give *pf* the :data:`SMTPTOR_SERVICE` and a transport table sending each domain to
    ``smtptor:[127.0.0.1]:<port>`` (*ports*: domain -> loopback port); call before ``pf.write()``."""
    (pf.root / "transport").write_text("".join(f"{domain} smtptor:[127.0.0.1]:{port}\n"
                                               for domain, port in ports.items()))
    pf.main_extra["transport_maps"] = f"texthash:{pf.root}/transport"
    pf.master_extra = SMTPTOR_SERVICE


@contextmanager
def smtp_sink(port: int, *options: str) -> Iterator[subprocess.Popen]:
    """Postfix's ``smtp-sink`` on 127.0.0.1:*port* (extra *options*, e.g. ``"-f", "rcpt"``), stopped after."""
    sink = subprocess.Popen(["smtp-sink", "-u", "postfix", *options, f"127.0.0.1:{port}", "10"])
    try:
        wait_for(lambda: port_accepts(port), 10, "smtp-sink")
        yield sink
    finally:
        sink.terminate()
        sink.wait(10)
