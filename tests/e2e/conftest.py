"""The end-to-end mail lab: a private Tor network, two gateways built by ``onion-gateway setup``, DNS.

::

    smtplib --> tx Postfix --transport_maps socketmap--> tx's onion-gateway serve --> dnsmasq
                  |  smtptor = smtp_tor wrapper (torsocks + smtp(8))       _onion-mx._tcp.rx.test SRV <rx onion>.
                  v
           tx's tor c6 (SocksPort; ControlPort: tx's own onion) ==private Tor network==> rx's tor h7
                                                                    (HiddenServiceDir made by setup)
                                                                           |
                                    rx Postfix, hardened "postfix/onion" listener made by setup --> Maildir

    tx's normal transport (relayhost) is an SmtpTrap: any mail that takes the clear route is seen there.

Each gateway is what a postmaster gets from the project's own commands: one config file
(:meth:`LabGateway.write_config`, a ``[serve]`` and a ``[setup]`` table), then
``onion-gateway setup --config FILE --yes`` run as a subprocess against a running Postfix instance and
the gateway's own running tor (its ControlPort), then ``onion-gateway serve --config FILE``.
Nothing is configured by hand beyond the private Postfix instances themselves (tests/support/postfix.py).

Why each gateway has its own tor, used both ways (the shape of a real host): setup makes an onion
service for every gateway (tx gets one too), so tx's setup points at the client tor c6, whose SocksPort
its smtptor transport uses, and rx's at h7. Stopping c6 in a drill then takes down exactly what a
real outage of tx's tor takes down.

Everything listens on free 127.0.0.1 ports; every process is stopped by the fixture's finalizer,
also when building the lab fails half-way.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import smtplib
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import require
from tests.support.daemon import ServeProcess
from tests.support.dnsserver import Dnsmasq, SrvEntry
from tests.support.onions import bad_checksum
from tests.support.postfix import PostfixInstance
from tests.support.procs import free_port, free_tcp_udp_port, public_tempdir, tail
from tests.support.tornet import TorNetwork, TorNode, smtp_banner_via_socks
from tests.support.trap import SmtpTrap

RX_DOMAIN = "rx.test"          # delivered over the onion
BADSUM_DOMAIN = "badsum.test"  # its SRV names an onion with a broken checksum
TX_DOMAIN = "tx.test"          # the sender's own domain (tx publishes its own SRV record too)
FOREIGN_DOMAIN = "elsewhere.test"  # the relay audit's test domain: resolvable (NXDOMAIN for SRV), not ours
DNS_TIMEOUT_SECONDS = 2
BOOTSTRAP_TIMEOUT_SECONDS = 120
SETUP_TIMEOUT_SECONDS = 120
ONION_REACHABLE_TIMEOUT_SECONDS = 90
ONION_SYSLOG_NAME = "postfix/onion"      # templates/postfix/master.cf.j2: the onion-facing listener
PROJECT_ROOT = Path(__file__).resolve().parents[2]

log = logging.getLogger(__name__)   # phase timings: pytest -o log_cli=true --log-cli-level=INFO tests/e2e


def og_command(*args: str, timeout_seconds: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m onion_gateway ARGS`` (the project's CLI, a separate process) and capture its output."""
    return subprocess.run([sys.executable, "-m", "onion_gateway", *args], capture_output=True, text=True,
                          timeout=timeout_seconds, cwd=PROJECT_ROOT)


# --- one gateway -------------------------------------------------------------------------------------


@dataclass
class LabGateway:
    """One mail provider: a private Postfix instance, its tor node, its config file, its serve daemon.

    :param name: ``"rx"`` or ``"tx"``.
    :param pf: the Postfix instance (written and started before setup runs, like a live server).
    :param tor: the gateway's tor node in the private network (ControlPort for setup, SocksPort for smtptor).
    :param tornet: the network (for its empty ``--defaults-torrc``).
    :param domain: the mail domain it serves and publishes an SRV record for.
    :param dns_address: ``127.0.0.1:PORT`` of the lab's dnsmasq.
    """

    name: str
    pf: PostfixInstance
    tor: TorNode
    tornet: TorNetwork
    domain: str
    dns_address: str
    root: Path = field(default_factory=lambda: public_tempdir("og-e2e-gw-"))
    listener_port: int = field(default_factory=free_port)
    serve: ServeProcess = field(default_factory=lambda: ServeProcess(tcp_port=free_port(),
                                                                      socketmap_port=free_port()))
    onion: str = ""
    setup_output: str = ""

    @property
    def config(self) -> Path:
        return self.root / "onion-gateway.toml"

    @property
    def hidden_service_dir(self) -> Path:
        return self.tor.data_dir / "onion-gateway"

    @property
    def wrapper(self) -> Path:
        return self.root / "smtp_tor"

    @property
    def listener(self) -> str:
        return f"127.0.0.1:{self.listener_port}"

    def write_config(self) -> Path:
        """The gateway's onion-gateway.toml: ``[serve]`` for the daemon, ``[setup]`` with every path private.

        The daemon reads the Postfix instance's own domains (``postfix_config_dir``) and never looks
        them up; setup derives the transport_maps entry from the ``[serve]`` socketmap listener.
        """
        setup = {
            "postfix_config_dir": self.pf.config_dir, "listener": self.listener, "domains": [self.domain],
            "tor_control": f"127.0.0.1:{self.tor.control_port}", "socks": f"127.0.0.1:{self.tor.socks_port}",
            "state_dir": self.root / "state", "wrapper_path": self.wrapper,
            "torsocks_conf": self.root / "torsocks.conf", "torrc": self.tor.torrc,
            "torrc_piece": self.root / "onion-gateway.torrc", "tor_defaults_torrc": self.tornet.empty_defaults,
            "hidden_service_dir": self.hidden_service_dir, "systemd_unit": "", "serve_config": self.config,
        }
        serve = {
            "tcp_table": [f"127.0.0.1:{self.serve.tcp_port}"],
            "socketmap": [f"127.0.0.1:{self.serve.socketmap_port}"],
            "dns_servers": [self.dns_address], "dns_timeout_seconds": DNS_TIMEOUT_SECONDS,
            "postfix_config_dir": self.pf.config_dir,
        }
        self.config.write_text("[serve]\n" + _toml(serve) + "\n[setup]\n" + _toml(setup))
        return self.config

    def start_setup(self) -> subprocess.Popen:
        """Start ``onion-gateway setup --config FILE --yes`` (the two gateways are set up in parallel)."""
        return subprocess.Popen([sys.executable, "-m", "onion_gateway", "setup", "--config", str(self.config),
                                 "--yes"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=PROJECT_ROOT)

    def finish_setup(self, proc: subprocess.Popen) -> str:
        """Wait for setup, check it succeeded and printed this gateway's SRV record; return the onion address.

        :raises AssertionError: with setup's output and the tor node's log when it failed.
        """
        try:
            out, _ = proc.communicate(timeout=SETUP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        self.setup_output = out
        where = f"onion-gateway setup for {self.name} (exit {proc.returncode}):\n{out}\n" \
                f"--- tor {self.tor.nick}\n{tail(self.tor.notice_log, 15)}"
        assert proc.returncode == 0, where
        match = re.search(r"^onion address: ([a-z2-7]{56}\.onion)$", out, re.M)
        assert match, where
        self.onion = match.group(1)
        record = f"_onion-mx._tcp.{self.domain}. 3600 IN SRV 10 5 25 {self.onion}."
        assert record in out, where
        return self.onion

    def start_serve(self) -> None:
        """``onion-gateway serve --config FILE`` (the listener flags ServeProcess adds name the same ports)."""
        self.serve.args = ["--config", str(self.config), "--log-level", "debug"]
        self.serve.start()

    def status(self, *extra: str) -> subprocess.CompletedProcess:
        """``onion-gateway status`` for this gateway: its tor, daemon, SRV record, Postfix, onion service."""
        return og_command("status", "--config", str(self.config), "--tor-control",
                          f"127.0.0.1:{self.tor.control_port}", "--postfix-config-dir", str(self.pf.config_dir),
                          "--domain", self.domain, "--onion", self.onion, "--torrc", str(self.tor.torrc),
                          "--test-domain", FOREIGN_DOMAIN, *extra)


def _toml(table: dict) -> str:
    """A flat TOML table (strings, numbers, lists of strings); paths become strings."""
    def value(item) -> str:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            return str(item)
        if isinstance(item, list):
            return "[" + ", ".join(value(i) for i in item) + "]"
        return '"' + str(item).replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "".join(f"{key} = {value(item)}\n" for key, item in table.items())


# --- the lab -----------------------------------------------------------------------------------------


@dataclass
class MailLab:
    """Everything the e2e tests talk to."""

    tor: TorNetwork
    rx_gw: LabGateway
    tx_gw: LabGateway
    trap: SmtpTrap
    dns: Dnsmasq
    bad_onion: str

    @property
    def rx(self) -> PostfixInstance:
        return self.rx_gw.pf

    @property
    def tx(self) -> PostfixInstance:
        return self.tx_gw.pf

    @property
    def serve(self) -> ServeProcess:
        """tx's daemon (the one that routes the test mail)."""
        return self.tx_gw.serve

    @property
    def onion(self) -> str:
        """rx's onion address, as setup printed it."""
        return self.rx_gw.onion

    def diagnostics(self) -> str:
        """Log excerpts of every component, for failure messages."""
        return "\n".join([
            "=== tx maillog", tail(self.tx.maillog, 30),
            "=== rx maillog", tail(self.rx.maillog, 20),
            "=== tx onion-gateway serve", "\n".join(self.tx_gw.serve.lines[-20:]),
            "=== rx onion-gateway serve", "\n".join(self.rx_gw.serve.lines[-8:]),
            "=== dnsmasq", tail(self.dns.log_path, 10),
            f"=== clear-route trap: {self.trap.count()} connection(s)",
            "=== tor", self.tor.diagnostics(6),
        ])

    def wait_log(self, instance: PostfixInstance, pattern: str, timeout_seconds: float, what: str) -> re.Match:
        """Poll *instance*'s maillog for *pattern* (a regex); fail with :meth:`diagnostics`.

        :returns: the first match.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_seconds
        while True:
            match = regex.search(instance.log_text())
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}\n"
                                     f"(pattern {pattern!r})\n{self.diagnostics()}")
            time.sleep(0.2)

    def send(self, recipient: str, sender: str = f"bob@{TX_DOMAIN}") -> tuple[str, str]:
        """Submit one message into tx's smtpd with smtplib.

        :returns: ``(queue id, token)``; the token is in the Subject, to find the message in a mailbox.
        :raises smtplib.SMTPResponseException: when tx refuses (e.g. RCPT 451 when routing cannot be decided).
        """
        token = uuid.uuid4().hex
        body = (f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: e2e {token}\r\n"
                f"Message-ID: <{token}@tx.test>\r\n\r\nover an onion service, {token}\r\n")
        client = self.tx.smtp()
        try:
            code, reply = client.mail(sender)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, reply, sender)
            code, reply = client.rcpt(recipient)
            if code not in (250, 251):
                raise smtplib.SMTPResponseException(code, reply)
            code, reply = client.data(body.encode())
            if code != 250:
                raise smtplib.SMTPDataError(code, reply)
        finally:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()
        match = re.search(rb"queued as (\w+)", reply)
        assert match, f"no queue id in tx's DATA reply {reply!r}"
        return match.group(1).decode(), token

    def mailbox_has(self, token: str) -> bool:
        """True if a message carrying *token* is in rx's Maildir."""
        new = self.rx.mailbox / "new"
        if not new.is_dir():
            return False
        return any(token in path.read_text(errors="replace") for path in new.iterdir())

    def wait_onion_reachable(self, onion: str | None = None,
                             timeout_seconds: float = ONION_REACHABLE_TIMEOUT_SECONDS) -> float:
        """Wait until *onion* (default rx's) answers with an SMTP banner through tx's SocksPort: the
        descriptor is published, fetched and the rendezvous circuit is up.

        :returns: the seconds waited.
        """
        onion = onion or self.onion
        started = time.monotonic()
        errors: list[str] = []
        while True:
            try:
                banner = smtp_banner_via_socks(self.tor.client_socks_port, onion)
                if banner.startswith("220"):
                    return time.monotonic() - started
                errors.append(f"banner {banner!r}")
            except OSError as exc:
                errors.append(str(exc))
            if time.monotonic() - started > timeout_seconds:
                whose = "rx's" if onion == self.rx_gw.onion else "tx's"
                raise AssertionError(f"{whose} onion {onion} not reachable through the client after {timeout_seconds} s "
                                     f"(last errors {errors[-3:]})\n{self.diagnostics()}")
            time.sleep(1)

    def flush_tx(self) -> None:
        """``postqueue -f``: retry every deferred message now (as root, postqueue -c works; LAB-NOTES §2)."""
        subprocess.run(["postqueue", "-c", str(self.tx.config_dir), "-f"], check=True, capture_output=True,
                       timeout=30)


@pytest.fixture(scope="session")   # shared by test_tor_network.py and test_delivery_health.py
def lab():
    """Build the whole lab and tear everything down afterwards.

    Order: the Tor network starts bootstrapping first; meanwhile both Postfix instances start and
    ``onion-gateway setup`` runs for both gateways (it only needs each tor's ControlPort); then DNS
    publishes the records setup printed, both daemons start, and the fixture waits until rx's onion
    answers through tx's SocksPort (and tx's own onion, which its status check reports on).
    """
    require("tor", "tor-gencert", "torsocks", "postfix", "postconf", "postqueue", "dnsmasq")
    started = time.monotonic()

    def phase(what: str) -> None:
        log.info("lab: %s at %.1f s", what, time.monotonic() - started)

    with contextlib.ExitStack() as cleanup:
        tor = TorNetwork(public_tempdir("og-e2e-tor-"))
        cleanup.callback(shutil.rmtree, tor.workdir, ignore_errors=True)
        cleanup.callback(tor.stop)
        tor.setup()
        phase("tor keys and torrcs made")
        tor.start()  # bootstraps while the rest is built

        trap = SmtpTrap().start()
        cleanup.callback(trap.stop)
        # every zone a gateway may ask about, lab.test included (the hosts' names: the audit's percent-hack
        # probe makes rx route "...@rx.lab.test"); anything else gets REFUSED, a DNS failure
        dns = Dnsmasq(public_tempdir("og-e2e-dns-"), port=free_tcp_udp_port(),
                      local_zones=[RX_DOMAIN, TX_DOMAIN, BADSUM_DOMAIN, FOREIGN_DOMAIN, "lab.test"])
        cleanup.callback(shutil.rmtree, dns.workdir, ignore_errors=True)
        cleanup.callback(dns.stop)

        rx = PostfixInstance(root=public_tempdir("og-e2e-rx-"), hostname="rx.lab.test", domains=[RX_DOMAIN]).write()
        cleanup.callback(shutil.rmtree, rx.root, ignore_errors=True)
        tx = PostfixInstance(root=public_tempdir("og-e2e-tx-"), hostname="tx.lab.test", domains=[TX_DOMAIN],
                             dead_relay_port=trap.port).write()
        cleanup.callback(shutil.rmtree, tx.root, ignore_errors=True)
        gateways = [LabGateway("rx", rx, tor.onion_node, tor, RX_DOMAIN, dns.address),
                    LabGateway("tx", tx, tor.client, tor, TX_DOMAIN, dns.address)]
        for gw in gateways:
            cleanup.callback(shutil.rmtree, gw.root, ignore_errors=True)
            gw.pf.start()
            cleanup.callback(gw.pf.stop)
            gw.write_config()
        phase("postfix instances running")
        for gw in gateways:             # setup switches transport_maps only to a daemon that answers
            cleanup.callback(gw.serve.stop)
            gw.start_serve()
        running = [(gw, gw.start_setup()) for gw in gateways]
        for gw, proc in running:
            gw.finish_setup(proc)
        rx_gw, tx_gw = gateways
        phase("onion-gateway setup done for rx and tx")

        bad_onion = bad_checksum(rx_gw.onion)
        dns.srv = [SrvEntry(RX_DOMAIN, rx_gw.onion), SrvEntry(TX_DOMAIN, tx_gw.onion),
                   SrvEntry(BADSUM_DOMAIN, bad_onion)]
        dns.start()

        phase("dnsmasq and both daemons running")
        lab = MailLab(tor, rx_gw, tx_gw, trap, dns, bad_onion)
        tor.wait_bootstrapped(BOOTSTRAP_TIMEOUT_SECONDS)
        phase("c6 and h7 bootstrapped")
        lab.wait_onion_reachable(rx_gw.onion)
        phase("rx's onion answers through c6")
        lab.wait_onion_reachable(tx_gw.onion)
        phase("tx's onion answers through c6")
        yield lab
