"""The end-to-end mail lab: a private Tor network, two Postfix instances, DNS and the lookup daemon.

::

    smtplib --> tx Postfix (127.0.0.1:P) --transport_maps socketmap--> onion-gateway serve --> dnsmasq
                  |  smtptor = torsocks + smtp(8)                     (_onion-mx._tcp.rx.test SRV)
                  v
           client tor c6 (SocksPort) ==private Tor network==> onion node h7 (ADD_ONION)
                                                                   |
                                       rx Postfix hardened "postfix/onion" listener --> Maildir

    tx's normal transport (relayhost) is an SmtpTrap: any mail that takes the clear route is seen there.

The ``hand_made_*`` functions (tests/support/handmade.py) build what ``onion-gateway setup`` will
generate (issue 3); when setup lands they are replaced by setup runs against the same instances.
Everything listens on free 127.0.0.1 ports; every process is stopped by the fixture's finalizer,
also when building the lab fails half-way.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import smtplib
import subprocess
import time
import uuid
from dataclasses import dataclass

import pytest

from tests.conftest import require
from tests.support.daemon import ServeProcess
from tests.support.dnsserver import Dnsmasq, SrvEntry
from tests.support.handmade import (hand_made_onion_listener, hand_made_smtptor, hand_made_torsocks_conf,
                                    hand_made_transport_maps)
from tests.support.onions import bad_checksum
from tests.support.postfix import PostfixInstance
from tests.support.procs import free_port, public_tempdir, tail
from tests.support.tornet import TorNetwork, add_onion_service, smtp_banner_via_socks
from tests.support.trap import SmtpTrap

RX_DOMAIN = "rx.test"          # delivered over the onion
BADSUM_DOMAIN = "badsum.test"  # its SRV names an onion with a broken checksum
TX_DOMAIN = "tx.test"          # the sender's own domain
DNS_TIMEOUT_SECONDS = 2
BOOTSTRAP_TIMEOUT_SECONDS = 120


# --- the lab -----------------------------------------------------------------------------------------


@dataclass
class MailLab:
    """Everything the e2e tests talk to."""

    tor: TorNetwork
    rx: PostfixInstance
    rx_onion_port: int
    tx: PostfixInstance
    trap: SmtpTrap
    dns: Dnsmasq
    serve: ServeProcess
    onion: str
    bad_onion: str

    def diagnostics(self) -> str:
        """Log excerpts of every component, for failure messages."""
        return "\n".join([
            "=== tx maillog", tail(self.tx.maillog, 30),
            "=== rx maillog", tail(self.rx.maillog, 20),
            "=== onion-gateway serve", "\n".join(self.serve.lines[-20:]),
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

    def wait_delivered(self, token: str, timeout_seconds: float) -> None:
        """Wait until rx's Maildir holds the message with *token*."""
        deadline = time.monotonic() + timeout_seconds
        while not self.mailbox_has(token):
            if time.monotonic() > deadline:
                raise AssertionError(f"message {token} not in rx's mailbox after {timeout_seconds} s\n"
                                     f"{self.diagnostics()}")
            time.sleep(0.2)

    def wait_onion_reachable(self, timeout_seconds: float = 60.0) -> float:
        """Wait until rx's banner comes back over the client's SocksPort (descriptor fetched, circuits up).

        :returns: the seconds waited.
        """
        started = time.monotonic()
        errors: list[str] = []
        while True:
            try:
                banner = smtp_banner_via_socks(self.tor.client_socks_port, self.onion)
                if banner.startswith("220"):
                    return time.monotonic() - started
                errors.append(f"banner {banner!r}")
            except OSError as exc:
                errors.append(str(exc))
            if time.monotonic() - started > timeout_seconds:
                raise AssertionError(f"{self.onion} not reachable through the client after {timeout_seconds} s "
                                     f"(last errors {errors[-3:]})\n{self.diagnostics()}")
            time.sleep(1)

    def flush_tx(self) -> None:
        """``postqueue -f``: retry every deferred message now (as root, postqueue -c works; LAB-NOTES §2)."""
        subprocess.run(["postqueue", "-c", str(self.tx.config_dir), "-f"], check=True, capture_output=True,
                       timeout=30)


@pytest.fixture(scope="module")
def lab():
    """Build the whole lab (about 20-50 s, mostly the Tor bootstrap) and tear everything down afterwards."""
    require("tor", "tor-gencert", "torsocks", "postfix", "postconf", "postqueue", "dnsmasq")
    with contextlib.ExitStack() as cleanup:
        tor = TorNetwork(public_tempdir("og-e2e-tor-"))
        cleanup.callback(shutil.rmtree, tor.workdir, ignore_errors=True)
        cleanup.callback(tor.stop)
        tor.setup().start()  # bootstraps while the rest is built

        trap = SmtpTrap().start()
        cleanup.callback(trap.stop)

        rx_onion_port = free_port()
        rx = PostfixInstance(root=public_tempdir("og-e2e-rx-"), hostname="rx.lab.test", domains=[RX_DOMAIN],
                             master_extra=hand_made_onion_listener(rx_onion_port)).write()
        cleanup.callback(shutil.rmtree, rx.root, ignore_errors=True)
        rx.start()
        cleanup.callback(rx.stop)

        serve = ServeProcess(tcp_port=free_port(), socketmap_port=free_port())
        tx = PostfixInstance(root=public_tempdir("og-e2e-tx-"), hostname="tx.lab.test", domains=[TX_DOMAIN],
                             dead_relay_port=trap.port).write()
        cleanup.callback(shutil.rmtree, tx.root, ignore_errors=True)
        torsocks_conf = hand_made_torsocks_conf(tx.root / "torsocks.conf", tor.client_socks_port)
        hand_made_smtptor(tx, torsocks_conf)
        hand_made_transport_maps(tx, serve)
        tx.start()
        cleanup.callback(tx.stop)

        tor.wait_bootstrapped(BOOTSTRAP_TIMEOUT_SECONDS)
        try:
            onion = add_onion_service(tor.hs_control_port, rx_onion_port)
        except Exception as exc:
            raise AssertionError(f"ADD_ONION on the onion node failed: {exc!r}\n{tor.diagnostics()}") from exc

        bad_onion = bad_checksum(onion)
        dns = Dnsmasq(public_tempdir("og-e2e-dns-"), local_zones=[RX_DOMAIN, BADSUM_DOMAIN],
                      srv=[SrvEntry(RX_DOMAIN, onion), SrvEntry(BADSUM_DOMAIN, bad_onion)])
        cleanup.callback(shutil.rmtree, dns.workdir, ignore_errors=True)
        cleanup.callback(dns.stop)
        dns.start()

        # tx's own domain is excluded, as setup will do: no SRV query for the sender's domain
        serve.args = ["--dns-server", dns.address, "--dns-timeout", str(DNS_TIMEOUT_SECONDS),
                      "--exclude-domains", TX_DOMAIN, "--log-level", "debug"]
        cleanup.callback(serve.stop)
        serve.start()

        lab = MailLab(tor, rx, rx_onion_port, tx, trap, dns, serve, onion, bad_onion)
        lab.wait_onion_reachable()
        yield lab
