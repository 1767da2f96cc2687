"""A private network + mount namespace with its own DNS: for Postfix features that query DNS.

smtpd looks up MX/A records (permit_mx_backup, reject_unknown_recipient_domain) through the libc
resolver, i.e. /etc/resolv.conf, and a Postfix cannot be pointed at another resolver. So the instance
runs inside ``unshare --net --mount``: the namespace has only its own loopback, /etc/resolv.conf is
bind-mounted (privately) to ``nameserver 127.0.0.1``, and dnsmasq answers there, authoritatively
NXDOMAIN for the test zones. Nothing can leave: the namespace has no other interface.
Commands run inside with ``nsenter -t PID -n -m``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import tail, wait_for


@dataclass
class Namespace:
    """A holder process in fresh net+mount namespaces, with dnsmasq on 127.0.0.1:53 inside.

    :param workdir: where resolv.conf and the dnsmasq log go (must exist).
    :param nxdomain_zones: zones dnsmasq answers locally: every name in them is NXDOMAIN.
    """

    workdir: Path
    nxdomain_zones: list[str] = field(default_factory=lambda: ["example", "onion", "test", "invalid"])
    holder: subprocess.Popen | None = None
    dnsmasq: subprocess.Popen | None = None

    def start(self) -> "Namespace":
        for program in ("unshare", "nsenter", "dnsmasq", "ip"):
            assert shutil.which(program), f"{program} missing"
        resolv = self.workdir / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:1\n")
        script = f"ip link set lo up && mount --bind {resolv} /etc/resolv.conf && echo ready && exec sleep 3600"
        self.holder = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private",
                                        "sh", "-c", script], stdout=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline().strip()
        assert line == "ready", f"namespace holder said {line!r}"
        log = self.workdir / "dnsmasq.log"
        args = ["dnsmasq", "-k", "--no-resolv", "--no-hosts", "--port=53", "--listen-address=127.0.0.1",
                "--bind-interfaces", "--user=root", f"--log-facility={log}", "--log-queries",
                "--pid-file=" + str(self.workdir / "dnsmasq.pid")]
        args += [f"--local=/{zone}/" for zone in self.nxdomain_zones]
        self.dnsmasq = subprocess.Popen(self.enter(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: self.run(["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/53"]).returncode == 0, 10,
                 "dnsmasq in the namespace", lambda: tail(log))
        return self

    def enter(self, argv: list[str]) -> list[str]:
        """*argv* prefixed so that it runs inside the namespaces."""
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-m", "--", *argv]

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run *argv* inside and wait (text output captured)."""
        return subprocess.run(self.enter(argv), capture_output=True, text=True, timeout=60, **kwargs)

    def port_accepts(self, port: int) -> bool:
        return self.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"]).returncode == 0

    def stop(self) -> None:
        for proc in (self.dnsmasq, self.holder):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
