"""The pieces of a gateway that ``onion-gateway setup`` (issue 3) will generate, made by hand for now.

Each function builds one piece on a test Postfix instance, in the shape LAB-NOTES §6/§7 proved:
the onion-facing hardened listener of the receiver, the torsocks configuration, the ``smtptor``
transport of the sender and its ``transport_maps``. When setup lands, the e2e lab calls setup instead
and these go away; nothing else in the tests depends on how the pieces were made.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.daemon import ServeProcess
from tests.support.postfix import PostfixInstance

ONION_SYSLOG_NAME = "postfix/onion"
SMTPTOR_SYSLOG_NAME = "postfix/smtptor"


def hand_made_onion_listener(port: int) -> str:
    """master.cf text for rx's onion-facing smtpd: no mynetworks, relay only to own domains (LAB-NOTES §7).

    Onion traffic arrives from 127.0.0.1, so this listener must not trust loopback.
    """
    return (f"127.0.0.1:{port} inet n - n - - smtpd\n"
            f"  -o syslog_name={ONION_SYSLOG_NAME}\n"
            "  -o mynetworks=\n"
            "  -o smtpd_relay_restrictions=reject_unauth_destination\n"
            "  -o smtpd_recipient_restrictions=reject_unauth_destination\n")


def hand_made_torsocks_conf(path: Path, socks_port: int) -> Path:
    """A torsocks.conf(5) for the private client's SocksPort; onion names map into 127.42.42.0/24."""
    path.write_text("TorAddress 127.0.0.1\n"
                    f"TorPort {socks_port}\n"
                    "OnionAddrRange 127.42.42.0/24\n"
                    "AllowInbound 0\n"
                    "AllowOutboundLocalhost 0\n")
    return path


def hand_made_smtptor(tx: PostfixInstance, torsocks_conf: Path) -> Path:
    """Add the ``smtptor`` transport to tx: smtp(8) wrapped in torsocks, added with postconf -M/-P.

    master(8) runs ``$daemon_directory/<command>``, so the wrapper is named by a path relative to
    daemon_directory (LAB-NOTES §6). The smtp client must not use DNS (``smtp_dns_support_level=disabled``)
    and must resolve with getaddrinfo (``smtp_host_lookup=native``), which torsocks intercepts.

    :returns: the wrapper script.
    """
    wrapper = tx.root / "smtp_tor"
    wrapper.write_text("#!/bin/sh\n"
                       "# smtp(8) through torsocks; master(8) gives a clean environment, sh a default PATH.\n"
                       f"TORSOCKS_CONF_FILE={torsocks_conf}\n"
                       "export TORSOCKS_CONF_FILE\n"
                       'exec torsocks "$(postconf -h daemon_directory)/smtp" "$@"\n')
    wrapper.chmod(0o755)
    daemon_directory = tx.postconf("-h", "daemon_directory").strip()
    command = os.path.relpath(wrapper, daemon_directory)
    tx.postconf("-M", f"smtptor/unix=smtptor unix - - n - - {command}")
    for option in (f"syslog_name={SMTPTOR_SYSLOG_NAME}", "smtp_dns_support_level=disabled",
                   "smtp_host_lookup=native", "smtp_tls_security_level=none"):
        tx.postconf("-P", f"smtptor/unix/{option}")
    return wrapper


def hand_made_transport_maps(tx: PostfixInstance, serve: ServeProcess) -> None:
    """Point tx's transport_maps at the daemon's socketmap listener."""
    tx.postconf("-e", f"transport_maps = {serve.socketmap}")
