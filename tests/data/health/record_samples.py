"""Record the health readers' samples from a real, private Postfix 3.7 instance on loopback.

Run from the repository root (as root, like the integration tests)::

    .venv/bin/python tests/data/health/record_samples.py [--keep]

It writes, next to this file:

- ``postqueue.jsonl``: ``postqueue -j`` output (one JSON object per message) with deferred onion mail
  to two partner domains, a multi-recipient message (two onion partners + one clear-net domain), a
  message in the deferred queue for a clear-net domain only, a bounce notice (empty sender)
  deferred for an onion partner, and a burst of four one-recipient messages to a dead partner;
- ``maillog``: the instance's ``maillog_file`` with ``postfix/smtptor/smtp`` lines ending
  ``status=sent`` (an smtp-sink), ``status=bounced`` (an smtp-sink rejecting RCPT with 5xx) and
  ``status=deferred`` (a closed loopback port, and an onion nexthop whose torsocks finds no Tor SOCKS
  port: the "our Tor is down" shape), plus plain ``postfix/smtp`` lines for clear-net mail;
- ``recorded.json``: when the recording ran and the partner domains / their routes.

Nothing leaves loopback: every nexthop is ``[127.0.0.1]:port`` or an onion name that torsocks maps
to 127.42.42.0/24 and then fails to hand to a (closed) SOCKS port on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tests.support.onions import ONION_A  # noqa: E402
from tests.support.postfix import new_instance  # noqa: E402
from tests.support.procs import free_port, port_accepts, wait_for  # noqa: E402

SENT = "sent.partner.test"          # smtptor -> smtp-sink that accepts
BOUNCE = "bounce.partner.test"      # smtptor -> smtp-sink that rejects RCPT with 550
DEAD1 = "dead1.partner.test"        # smtptor -> closed loopback port
DEAD2 = "dead2.partner.test"        # smtptor -> closed loopback port
TORDOWN = "tordown.partner.test"    # smtptor -> [<onion>]:25 through torsocks, no Tor listening
CLEAR = "clear.example"             # not in transport_maps: relayhost (closed port) via plain smtp


def main(keep: bool = False, journal: bool = False) -> None:
    """Record the samples; with *journal*, Postfix logs through syslog(3) to a journald that
    record_journal.sh started in a private mount namespace, and only ``journal.jsonl`` is written."""
    sink_ok, sink_reject, dead, dead_socks = free_port(), free_port(), free_port(), free_port()
    pf = new_instance("og-health-rec-", hostname="gw.lab.test", domains=["lab.test"])
    root = pf.root
    (root / "torsocks.conf").write_text(
        f"TorAddress 127.0.0.1\nTorPort {dead_socks}\nOnionAddrRange 127.42.42.0/24\n"
        "AllowInbound 0\nAllowOutboundLocalhost 1\n")
    wrapper = root / "smtp_tor"
    wrapper.write_text(f"#!/bin/sh\nTORSOCKS_CONF_FILE={root}/torsocks.conf\nexport TORSOCKS_CONF_FILE\n"
                       'exec torsocks /usr/lib/postfix/sbin/smtp "$@"\n')
    wrapper.chmod(0o755)
    routes = {SENT: f"smtptor:[127.0.0.1]:{sink_ok}", BOUNCE: f"smtptor:[127.0.0.1]:{sink_reject}",
              DEAD1: f"smtptor:[127.0.0.1]:{dead}", DEAD2: f"smtptor:[127.0.0.1]:{dead}",
              TORDOWN: f"smtptor:[{ONION_A}]:25"}
    (root / "transport").write_text("".join(f"{d} {r}\n" for d, r in routes.items()))
    if journal:
        pf.main_extra["maillog_file"] = ""
    pf.main_extra.update({"transport_maps": f"texthash:{root}/transport",
                          # retry quickly so one recording holds several attempts
                          "queue_run_delay": "5s", "minimal_backoff_time": "5s", "maximal_backoff_time": "10s"})
    pf.master_extra = (f"smtptor unix - - n - - ../../../..{wrapper}\n"
                       "  -o syslog_name=postfix/smtptor\n"
                       "  -o smtp_dns_support_level=disabled\n"
                       "  -o smtp_host_lookup=native\n")
    pf.write()
    sinks = [subprocess.Popen(["smtp-sink", "-u", "postfix", f"127.0.0.1:{sink_ok}", "10"]),
             subprocess.Popen(["smtp-sink", "-u", "postfix", "-f", "rcpt", f"127.0.0.1:{sink_reject}", "10"])]
    try:
        wait_for(lambda: port_accepts(sink_ok) and port_accepts(sink_reject), 10, "smtp-sinks")
        pf.start()
        with pf.smtp() as client:
            client.sendmail("alice@lab.test", [f"bob@{SENT}"], "Subject: sent\r\n\r\nover smtptor\r\n")
            client.sendmail("alice@lab.test", [f"carol@{BOUNCE}"], "Subject: bounced\r\n\r\nrejected\r\n")
            client.sendmail("alice@lab.test", [f"dave@{DEAD1}"], "Subject: one\r\n\r\ndeferred\r\n")
            time.sleep(3)       # so the oldest deferred message is older than the others
            client.sendmail("alice@lab.test", [f"erin@{DEAD1}", f"frank@{DEAD1}", f"grace@{DEAD2}",
                                               f"heidi@{CLEAR}", f"ivan@{SENT}"],
                            "Subject: multi\r\n\r\nfive recipients\r\n")
            client.sendmail("alice@lab.test", [f"judy@{CLEAR}"], "Subject: clear\r\n\r\nclear-net only\r\n")
            client.sendmail("alice@lab.test", [f"mallory@{TORDOWN}"], "Subject: tor\r\n\r\ntor is down\r\n")
            # the bounce notice for this one goes to a dead onion partner: a deferred message with <> sender
            client.sendmail(f"oscar@{DEAD2}", [f"peggy@{BOUNCE}"], "Subject: dsn\r\n\r\nbounce me\r\n")
            # a burst to one dead destination: after the first failure the queue manager suspends the
            # destination and defers the rest itself, logged as postfix/error, not as smtptor attempts
            for name in ("rupert", "sybil", "trent", "victor"):
                client.sendmail("alice@lab.test", [f"{name}@{DEAD2}"], "Subject: burst\r\n\r\nburst\r\n")
        # first attempts, then one retry round of the deferred mail
        wait_for(lambda: _log(pf, journal).count("status=deferred") >= 8, 60, "deferrals in the log")
        # the queue manager's "delivery temporarily suspended" echo (postfix/error) of a dead
        # destination shows up on a later queue run; the readers must not count it as an attempt
        try:
            wait_for(lambda: "postfix/error[" in _log(pf, journal), 60, "a postfix/error deferral")
        except AssertionError as exc:
            print("warning:", exc, file=sys.stderr)
        pf.postfix("flush")
        time.sleep(5)
        if journal:
            pf.stop()
            time.sleep(1)
            (HERE / "journal.jsonl").write_text("".join(line + "\n" for line in _journal_lines()))
            return
        queue = subprocess.run(["postqueue", "-c", str(pf.config_dir), "-j"], capture_output=True,
                               text=True, check=True).stdout
        (HERE / "postqueue.jsonl").write_text(queue)
        pf.stop()
        time.sleep(1)
        (HERE / "maillog").write_text(pf.log_text())
        (HERE / "recorded.json").write_text(json.dumps({
            "recorded_at": time.time(),
            "mail_version": subprocess.run(["postconf", "-dh", "mail_version"], capture_output=True,
                                           text=True).stdout.strip(),
            "onion_routes": dict(routes),
            "clear_domains": [CLEAR]}, indent=2, sort_keys=True) + "\n")
    finally:
        pf.stop()
        for sink in sinks:
            sink.terminate()
            sink.wait(5)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(root)


def _journal_lines() -> list[str]:
    out = subprocess.run(["journalctl", "-D", "/run/log/journal", "-o", "json", "--no-pager", "-q"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if json.loads(line).get("SYSLOG_IDENTIFIER", "").startswith("postfix")]


def _log(pf, journal: bool) -> str:
    if not journal:
        return pf.log_text()
    records = [json.loads(line) for line in _journal_lines()]
    return "\n".join(f"{r.get('SYSLOG_IDENTIFIER')}[{r.get('SYSLOG_PID')}]: {r.get('MESSAGE')}" for r in records)


if __name__ == "__main__":
    main(keep="--keep" in sys.argv, journal="--journal" in sys.argv)
