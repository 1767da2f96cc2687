#!/usr/bin/env python3
"""Soak: many cached lookups through the load generator, with the daemon's RSS sampled throughout.

Starts dnsmasq on loopback with 100 SRV domains (TTL 3600, so every lookup after the first is a cache
hit) and ``onion-gateway serve``; then sends ``--total`` requests in chunks of ``--chunk`` over
``--concurrency`` persistent tcp_table connections, reading the daemon's RSS (``/proc/PID/status``
VmRSS) after each chunk. Bounded: stops at ``--total`` requests or ``--max-seconds``, whichever first.
Loopback only. Prints a markdown table for benchmarks/SOAK.md.

    python benchmarks/soak.py --total 10000000 --chunk 500000 --concurrency 8 --max-seconds 1500
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import run_load, run_sync  # noqa: E402

from onion_gateway.onion import onion_from_public_key  # noqa: E402


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="bounded soak of cached lookups (loopback only)")
    parser.add_argument("--total", type=int, default=10_000_000)
    parser.add_argument("--chunk", type=int, default=500_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=1500)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="og-soak-", dir="/tmp"))
    dns_port, tcp_port, sm_port = free_port(), free_port(), free_port()
    domains = [f"hot{i}.soak.test" for i in range(100)]
    lines = [f"port={dns_port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv", "no-hosts",
             "user=root", "local=/soak.test/", "local-ttl=3600"]
    lines += [f"srv-host=_onion-mx._tcp.{d},{onion_from_public_key(hashlib.sha256(d.encode()).digest())},25,10,5"
              for d in domains]
    (work / "dnsmasq.conf").write_text("\n".join(lines) + "\n")
    procs = [subprocess.Popen(["dnsmasq", "-k", "-C", str(work / "dnsmasq.conf")])]
    try:
        time.sleep(0.3)
        daemon = subprocess.Popen([sys.executable, "-m", "onion_gateway", "serve", "--tcp-table",
                                   f"127.0.0.1:{tcp_port}", "--socketmap", f"127.0.0.1:{sm_port}",
                                   "--dns-server", f"127.0.0.1:{dns_port}", "--log-level", "warning"])
        procs.append(daemon)
        time.sleep(1.0)
        keys = [f"user@{d}" for d in domains]
        started = time.monotonic()
        rows = []
        sent = 0
        print(f"| requests so far | chunk req/s | p99 µs | daemon RSS MiB |\n|---|---|---|---|")
        print(f"| 0 | | | {rss_kib(daemon.pid) / 1024:.1f} |", flush=True)
        while sent < args.total and time.monotonic() - started < args.max_seconds:
            chunk = min(args.chunk, args.total - sent)
            result = run_sync(run_load("tcp_table", "127.0.0.1", tcp_port, keys, concurrency=args.concurrency,
                                       max_requests=chunk, max_seconds=args.max_seconds))
            sent += result.requests
            bad = sum(v for k, v in result.replies.items() if k != "200") + result.errors
            rows.append((sent, result.rate, result.percentile_us(99), rss_kib(daemon.pid) / 1024, bad))
            print(f"| {sent:,} | {result.rate:,.0f} | {result.percentile_us(99):.0f} | {rows[-1][3]:.1f} |"
                  + (f" {bad} non-200 replies!" if bad else ""), flush=True)
        elapsed = time.monotonic() - started
        print(f"\n{sent:,} requests in {elapsed:.0f} s; RSS after first chunk {rows[0][3]:.1f} MiB, "
              f"at the end {rows[-1][3]:.1f} MiB; non-200 replies: {sum(r[4] for r in rows)}")
        return 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
