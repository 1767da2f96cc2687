#!/usr/bin/env python3
"""Mail delivery throughput over an onion service on the private Tor network (issue 14; a measurement).

Builds the end-to-end lab of tests/e2e/conftest.py once (3 authorities, 3 relays, client c6, onion node
h7 on 127.0.0.1; rx and tx Postfix instances configured by ``onion-gateway setup``), then for each
configuration of tx, burst size and domain count injects a burst of small messages into tx's smtpd
(4 parallel SMTP sessions) and measures from the first injection to the last file in rx's Maildir.

Configurations of tx (rx stays as setup wrote it):

  setup      what ``onion-gateway setup`` writes: smtptor without the connection cache
  cache-on   the previous smtptor: no ``-o smtp_connection_cache_*`` (main.cf defaults: cache on demand)
  loopback   direct SMTP to rx's port-25 smtpd on 127.0.0.1 (transport_maps inline route), no Tor

"several domains" = that many rx domains, each with its own SRV record naming rx's onion (one
destination queue in tx: the nexthop is the same onion). Each run is bounded (``--run-timeout``);
every process is loopback-only and stopped at the end. Prints a markdown table (min/median seconds and
messages per second) for benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/onion_delivery.py --sizes 50,200 --domains 1,4 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import smtplib
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.conftest import TX_DOMAIN, LabGateway, MailLab  # noqa: E402
from tests.support.dnsserver import Dnsmasq, SrvEntry  # noqa: E402
from tests.support.postfix import PostfixInstance  # noqa: E402
from tests.support.procs import free_tcp_udp_port, public_tempdir  # noqa: E402
from tests.support.tornet import TorNetwork  # noqa: E402
from tests.support.trap import SmtpTrap  # noqa: E402

INJECT_SESSIONS = 4
CONFIGS = ("setup", "cache-on", "loopback")


def build_lab(stack: contextlib.ExitStack, domains: list[str]) -> MailLab:
    """The e2e lab (same pieces, same order as the ``lab`` fixture) with rx serving *domains*."""
    tor = TorNetwork(public_tempdir("og-bench-tor-"))
    stack.callback(shutil.rmtree, tor.workdir, ignore_errors=True)
    stack.callback(tor.stop)
    tor.setup()
    tor.start()
    trap = SmtpTrap().start()
    stack.callback(trap.stop)
    dns = Dnsmasq(public_tempdir("og-bench-dns-"), port=free_tcp_udp_port(), local_zones=[*domains, TX_DOMAIN, "lab.test"])
    stack.callback(shutil.rmtree, dns.workdir, ignore_errors=True)
    stack.callback(dns.stop)
    rx = PostfixInstance(root=public_tempdir("og-bench-rx-"), hostname="rx.lab.test", domains=domains).write()
    tx = PostfixInstance(root=public_tempdir("og-bench-tx-"), hostname="tx.lab.test", domains=[TX_DOMAIN],
                         dead_relay_port=trap.port).write()
    gateways = [LabGateway("rx", rx, tor.onion_node, tor, domains[0], dns.address),
                LabGateway("tx", tx, tor.client, tor, TX_DOMAIN, dns.address)]
    for gw in gateways:
        stack.callback(shutil.rmtree, gw.pf.root, ignore_errors=True)
        stack.callback(shutil.rmtree, gw.root, ignore_errors=True)
        gw.pf.start()
        stack.callback(gw.pf.stop)
        gw.write_config()
        stack.callback(gw.serve.stop)
        gw.start_serve()
    for gw, proc in [(gw, gw.start_setup()) for gw in gateways]:
        gw.finish_setup(proc)
    rx_gw, tx_gw = gateways
    dns.srv = [SrvEntry(d, rx_gw.onion) for d in domains] + [SrvEntry(TX_DOMAIN, tx_gw.onion)]
    dns.start()
    lab = MailLab(tor, rx_gw, tx_gw, trap, dns, "")
    tor.wait_bootstrapped(120)
    lab.wait_onion_reachable(rx_gw.onion)
    return lab


def configure(lab: MailLab, config: str, domains: list[str], base_maps: str) -> None:
    """Switch tx to *config* and reload it."""
    tx = lab.tx
    for name in ("smtp_connection_cache_on_demand", "smtp_connection_cache_destinations"):
        with contextlib.suppress(Exception):
            tx.postconf("-PX", f"smtptor/unix/{name}")
    if config != "cache-on":
        tx.postconf("-P", "smtptor/unix/smtp_connection_cache_on_demand=no")
        tx.postconf("-P", "smtptor/unix/smtp_connection_cache_destinations=")
    maps = base_maps
    if config == "loopback":
        routes = ", ".join(f"{d}=smtp:[127.0.0.1]:{lab.rx.smtp_port}" for d in domains)
        maps = f"inline:{{ {routes} }}, {base_maps}"
    tx.postconf("-e", f"transport_maps = {maps}")
    time.sleep(1.1)                      # postconf and daemons wait for main.cf older than a second
    tx.postfix("reload")
    time.sleep(1)


def maildir_count(lab: MailLab) -> int:
    new = lab.rx.mailbox / "new"
    return sum(1 for _ in new.iterdir()) if new.is_dir() else 0


def inject(lab: MailLab, count: int, domains: list[str]) -> None:
    """Submit *count* messages into tx over :data:`INJECT_SESSIONS` parallel SMTP sessions."""
    def worker(index: int) -> None:
        client = lab.tx.smtp()
        try:
            for n in range(index, count, INJECT_SESSIONS):
                rcpt = f"user{n}@{domains[n % len(domains)]}"
                client.sendmail(f"bench@{TX_DOMAIN}", [rcpt], f"Subject: bench {n}\r\n\r\nmessage {n}\r\n")
        finally:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(INJECT_SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def one_run(lab: MailLab, count: int, domains: list[str], timeout_seconds: float) -> tuple[float, float]:
    """:returns: (seconds from first injection to the last Maildir file, seconds injecting)."""
    before = maildir_count(lab)
    started = time.monotonic()
    inject(lab, count, domains)
    injected = time.monotonic() - started
    while maildir_count(lab) < before + count:
        if time.monotonic() - started > timeout_seconds:
            raise TimeoutError(f"{maildir_count(lab) - before} of {count} delivered after {timeout_seconds} s")
        time.sleep(0.01)
    return time.monotonic() - started, injected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200", help="burst sizes (comma-separated)")
    parser.add_argument("--domains", default="1,4", help="domain counts (comma-separated)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--run-timeout", type=float, default=180.0, help="seconds per burst at most")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = [int(d) for d in args.domains.split(",")]
    configs = args.configs.split(",")
    all_domains = [f"d{i}.rx.test" for i in range(max(counts))]
    rows = []
    with contextlib.ExitStack() as stack:
        t0 = time.monotonic()
        lab = build_lab(stack, all_domains)
        print(f"lab ready in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        base_maps = lab.tx.postconf("-h", "transport_maps").strip()
        for config in configs:
            configure(lab, config, all_domains, base_maps)
            for ndom in counts:
                for size in sizes:
                    times, injects = [], []
                    for _ in range(args.repeats):
                        try:
                            seconds, injected = one_run(lab, size, all_domains[:ndom], args.run_timeout)
                        except TimeoutError as exc:
                            print(f"{config} {ndom} {size}: {exc}", file=sys.stderr)
                            lab.flush_tx()
                            continue
                        times.append(seconds)
                        injects.append(injected)
                        print(f"{config} domains={ndom} n={size}: {seconds:.2f} s", file=sys.stderr)
                    if times:
                        rows.append((config, ndom, size, len(times), min(times), statistics.median(times),
                                     statistics.median(injects)))
        configure(lab, "setup", all_domains, base_maps)
    print("| tx configuration | domains | messages | runs | min s | median s | msg/s (median) | injection s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for config, ndom, size, runs, low, median, injected in rows:
        print(f"| {config} | {ndom} | {size} | {runs} | {low:.2f} | {median:.2f} | {size / median:.0f} | "
              f"{injected:.2f} |")


if __name__ == "__main__":
    main()
