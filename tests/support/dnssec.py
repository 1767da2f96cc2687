"""DNSSEC on loopback: knot signs, unbound validates with our own trust anchors (no root, no network).

Zones (all served by knotd, asked through unbound):
- ``signed.test``   signed; its DS is a trust anchor        -> answers carry AD
- ``insecure.test`` unsigned, no anchor                      -> answers without AD
- ``bogus.test``    signed, but the anchor's digest is wrong -> unbound answers SERVFAIL
Everything else unbound forwards to a SERVFAIL helper, never to the real root (LAB-NOTES §4b).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.dnsserver import SERVFAIL_UPSTREAM
from tests.support.procs import free_port, free_tcp_udp_port, tail, wait_for

ZONES = ("signed.test", "insecure.test", "bogus.test")


@dataclass
class DnssecLab:
    """knotd + unbound on free loopback ports; ``srv`` maps each zone to the onion its SRV names."""

    workdir: Path
    srv: dict[str, str]
    knot_port: int = 0
    unbound_port: int = 0
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def resolver(self) -> str:
        """``127.0.0.1:PORT`` of the validating resolver."""
        return f"127.0.0.1:{self.unbound_port}"

    def start(self) -> "DnssecLab":
        for program in ("knotd", "keymgr", "unbound"):
            assert shutil.which(program), f"{program} is not installed (scripts/dev.sh installs knot, unbound)"
        w = self.workdir
        for sub in ("zones", "db", "run"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        self.knot_port, self.unbound_port = free_tcp_udp_port(), free_tcp_udp_port()
        servfail_port = free_port(socket.SOCK_DGRAM)
        upstream = subprocess.Popen([sys.executable, "-c", SERVFAIL_UPSTREAM, str(servfail_port)],
                                    stdout=subprocess.PIPE, text=True)
        self.procs.append(upstream)
        assert upstream.stdout is not None and upstream.stdout.readline().strip() == "ready"
        zone_conf = "\n".join(
            f"  - domain: {z}\n" + ("    dnssec-signing: on\n    dnssec-policy: lab\n" if z != "insecure.test" else "")
            for z in ZONES)
        (w / "knot.conf").write_text(f"""server:
    rundir: {w}/run
    listen: 127.0.0.1@{self.knot_port}
database:
    storage: {w}/db
log:
  - target: {w}/knot.log
    any: info
policy:
  - id: lab
    algorithm: ecdsap256sha256
    nsec3: off
template:
  - id: default
    storage: {w}/zones
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: difference-no-serial
    journal-content: all
zone:
{zone_conf}""")
        for zone in ZONES:
            (w / "zones" / f"{zone}.zone").write_text(
                f"$ORIGIN {zone}.\n$TTL 300\n@ SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 300\n"
                f"@ NS ns1\nns1 A 127.0.0.1\n_onion-mx._tcp SRV 10 5 25 {self.srv[zone]}.\n")
        self.procs.append(subprocess.Popen(["knotd", "-c", str(w / "knot.conf")], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        anchors = []
        for zone in ("signed.test", "bogus.test"):
            wait_for(lambda z=zone: self._ds(z) is not None, 20, f"knot to sign {zone}",
                     lambda: tail(w / "knot.log"))
            ds = self._ds(zone)
            assert ds is not None
            if zone == "bogus.test":                     # corrupt the digest on purpose
                parts = ds.split()
                parts[-1] = "00" + parts[-1][2:] if not parts[-1].startswith("00") else "11" + parts[-1][2:]
                ds = " ".join(parts)
            anchors.append(ds)
        (w / "anchors.txt").write_text("\n".join(anchors) + "\n")
        stubs = "".join(f"stub-zone:\n    name: \"{z}.\"\n    stub-addr: 127.0.0.1@{self.knot_port}\n" for z in ZONES)
        (w / "unbound.conf").write_text(f"""server:
    interface: 127.0.0.1@{self.unbound_port}
    port: {self.unbound_port}
    do-ip6: no
    do-not-query-localhost: no
    username: ""
    chroot: ""
    directory: "{w}"
    pidfile: "{w}/unbound.pid"
    logfile: "{w}/unbound.log"
    use-syslog: no
    verbosity: 1
    val-log-level: 2
    module-config: "validator iterator"
    trust-anchor-file: "{w}/anchors.txt"
    trust-anchor-signaling: no
    root-key-sentinel: no
    qname-minimisation: no
    cache-max-ttl: 0
    cache-max-negative-ttl: 0
    access-control: 127.0.0.0/8 allow
    outgoing-interface: 127.0.0.1
    local-zone: "test." nodefault
{stubs}forward-zone:
    name: "."
    forward-addr: 127.0.0.1@{servfail_port}
remote-control:
    control-enable: no
""")
        self.procs.append(subprocess.Popen(["unbound", "-d", "-c", str(w / "unbound.conf")],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(self._validates, 20, "unbound to validate signed.test", lambda: tail(w / "unbound.log"))
        return self

    def _ds(self, zone: str) -> str | None:
        done = subprocess.run(["keymgr", "-c", str(self.workdir / "knot.conf"), zone, "ds"],
                              capture_output=True, text=True, timeout=10)
        lines = [line for line in done.stdout.splitlines() if len(line.split()) >= 6 and line.split()[4] == "2"]
        return lines[0] if done.returncode == 0 and lines else None

    def _validates(self) -> bool:
        import dns.flags
        import dns.message
        import dns.query
        try:
            query = dns.message.make_query("_onion-mx._tcp.signed.test.", "SRV", want_dnssec=True)
            response = dns.query.udp(query, "127.0.0.1", timeout=1, port=self.unbound_port)
            return bool(response.flags & dns.flags.AD)
        except Exception:
            time.sleep(0.1)
            return False

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.procs.clear()
