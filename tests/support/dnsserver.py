"""A real DNS server (dnsmasq) on loopback serving test SRV records, and a SERVFAIL upstream.

dnsmasq answers the zones it is told about authoritatively (``local=/zone/`` makes unknown names
NXDOMAIN, never forwarded); names under a "servfail" zone are forwarded to :class:`ServfailUpstream`,
a dnspython UDP server that answers SERVFAIL to everything, so the daemon sees a real SERVFAIL.
Nothing listens beyond 127.0.0.1 and no query leaves the machine (``no-resolv``).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import free_port, free_tcp_udp_port, tail, wait_for

SERVFAIL_UPSTREAM = r'''
import socket, sys
import dns.message, dns.rcode
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(4096)
    try:
        q = dns.message.from_wire(data)
    except Exception:
        continue
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.SERVFAIL)
    s.sendto(r.to_wire(), addr)
'''


@dataclass
class SrvEntry:
    """``_<service>._tcp.<domain> SRV priority weight port target``."""

    domain: str
    target: str
    port: int = 25
    priority: int = 10
    weight: int = 5
    service: str = "onion-mx"

    def dnsmasq_line(self) -> str:
        return (f"srv-host=_{self.service}._tcp.{self.domain},{self.target},"
                f"{self.port},{self.priority},{self.weight}")


@dataclass
class Dnsmasq:
    """dnsmasq on 127.0.0.1:<port> serving *srv* entries for the *local_zones*.

    :param workdir: where the config and log go.
    :param local_zones: zones answered locally (unknown names NXDOMAIN).
    :param srv: SRV records to publish.
    :param servfail_zones: zones forwarded to a SERVFAIL upstream.
    """

    workdir: Path
    local_zones: list[str] = field(default_factory=lambda: ["example.test"])
    srv: list[SrvEntry] = field(default_factory=list)
    servfail_zones: list[str] = field(default_factory=lambda: ["servfail.test"])
    extra_lines: list[str] = field(default_factory=list)
    port: int = 0
    _proc: subprocess.Popen | None = None
    _upstream: subprocess.Popen | None = None
    _upstream_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "dnsmasq.log"

    def write_config(self) -> Path:
        lines = [f"port={self.port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv",
                 "no-hosts", "no-poll", "no-negcache", "log-queries=extra", f"log-facility={self.log_path}",
                 f"pid-file={self.workdir / 'dnsmasq.pid'}", "user=root"]
        lines += [f"local=/{zone}/" for zone in self.local_zones]
        lines += [entry.dnsmasq_line() for entry in self.srv]
        lines += [f"server=/{zone}/127.0.0.1#{self._upstream_port}" for zone in self.servfail_zones]
        lines += self.extra_lines
        conf = self.workdir / "dnsmasq.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> "Dnsmasq":
        assert shutil.which("dnsmasq"), "dnsmasq is not installed (scripts/dev.sh installs it)"
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self._upstream_port:
            self._upstream_port = free_port(socket.SOCK_DGRAM)
        if self._upstream is None or self._upstream.poll() is not None:
            self._upstream = subprocess.Popen([sys.executable, "-c", SERVFAIL_UPSTREAM, str(self._upstream_port)],
                                              stdout=subprocess.PIPE, text=True)
            assert self._upstream.stdout is not None and self._upstream.stdout.readline().strip() == "ready"
        if not self.port:
            self.port = free_tcp_udp_port()
        conf = self.write_config()
        self._proc = subprocess.Popen(["dnsmasq", "-k", "-C", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
        wait_for(self._answers, 10, f"dnsmasq on {self.address}", lambda: tail(self.log_path))
        return self

    def _answers(self) -> bool:
        import dns.message
        import dns.query

        if self._proc is not None and self._proc.poll() is not None:
            raise AssertionError(f"dnsmasq exited: {self._proc.stderr.read() if self._proc.stderr else ''}")
        try:
            dns.query.udp(dns.message.make_query("probe.example.test.", "A"), "127.0.0.1", timeout=0.3,
                          port=self.port)
            return True
        except Exception:
            return False

    def restart(self, srv: list[SrvEntry] | None = None) -> None:
        """Stop, optionally replace the records, and start again on the same port."""
        self.stop_server()
        if srv is not None:
            self.srv = srv
        self.start()

    def stop_server(self) -> None:
        """Stop dnsmasq only (the SERVFAIL upstream keeps running): queries now time out."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            self._proc.wait(5)
        self._proc = None

    def query_count(self, name: str) -> int:
        """How many queries for *name* the log shows (dnsmasq ``log-queries``)."""
        try:
            text = self.log_path.read_text()
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if "query[" in line and f" {name} from" in line)

    def stop(self) -> None:
        self.stop_server()
        if self._upstream is not None and self._upstream.poll() is None:
            self._upstream.terminate()
            self._upstream.wait(5)
        self._upstream = None


SLOW_DNS = r'''
import socket, sys, threading, time
import dns.message, dns.rdatatype, dns.rrset
port, delay, target = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", port))
print("ready", flush=True)
def answer(data, addr):
    try:
        q = dns.message.from_wire(data)
    except Exception:
        return
    time.sleep(delay)
    r = dns.message.make_response(q)
    name = q.question[0].name
    r.answer.append(dns.rrset.from_text(name, 0, "IN", "SRV", f"10 5 25 {target}."))
    s.sendto(r.to_wire(), addr)
while True:
    data, addr = s.recvfrom(4096)
    threading.Thread(target=answer, args=(data, addr), daemon=True).start()
'''


class ScriptDns:
    """A fault-injecting DNS server: a small Python script (real sockets, real dnspython messages) run
    as its own process on 127.0.0.1, which prints ``ready`` once it listens.

    :param script: the script's source; it gets the port and :meth:`script_args` as argv.
    :param port: the port it listens on.
    """

    def __init__(self, script: str, port: int) -> None:
        self.script = script
        self.port = port
        self._proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def script_args(self) -> list[str]:
        """The script's arguments after the port."""
        return []

    def start(self):
        self._proc = subprocess.Popen([sys.executable, "-c", self.script, str(self.port), *self.script_args()],
                                      stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None and self._proc.stdout.readline().strip() == "ready"
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(5)


class SlowDns(ScriptDns):
    """A DNS server on 127.0.0.1 that answers every query with one SRV record after *delay_seconds*.

    Real UDP and real DNS messages; the delay is the fault no stock server produces on demand.
    """

    def __init__(self, delay_seconds: float, target: str) -> None:
        super().__init__(SLOW_DNS, free_port(socket.SOCK_DGRAM))
        self.delay_seconds = delay_seconds
        self.target = target

    def script_args(self) -> list[str]:
        return [str(self.delay_seconds), self.target]
