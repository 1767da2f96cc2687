#!/usr/bin/env python3
"""Show the main job working on this machine, loopback only.

1. dnsmasq on 127.0.0.1:20053 publishes ``_onion-mx._tcp.example.test SRV 10 5 25 <demo onion>.``
2. ``onion-gateway serve --config examples/onion-gateway.toml`` answers on 127.0.0.1:6013 (tcp_table)
   and 127.0.0.1:6014 (socketmap), asking that dnsmasq.
3. Postfix's ``postmap -q`` asks both listeners where mail for alice@example.test goes.

``--keep`` leaves the daemon and dnsmasq running until Ctrl-C, for trying more postmap -q queries.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DNS_PORT = 20053


def main() -> int:
    from onion_gateway.onion import onion_from_public_key

    onion = onion_from_public_key(hashlib.sha256(b"onion-gateway demo").digest())
    work = Path(tempfile.mkdtemp(prefix="onion-gateway-demo-"))
    conf = work / "dnsmasq.conf"
    conf.write_text("\n".join([
        f"port={DNS_PORT}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv", "no-hosts",
        "no-poll", "user=root", "local=/example.test/",
        f"srv-host=_onion-mx._tcp.example.test,{onion},25,10,5", ""]))
    procs: list[subprocess.Popen] = []
    try:
        print(f"== dnsmasq on 127.0.0.1:{DNS_PORT}: _onion-mx._tcp.example.test. SRV 10 5 25 {onion}.")
        procs.append(subprocess.Popen(["dnsmasq", "-k", "-C", str(conf)]))
        print("== onion-gateway serve --config examples/onion-gateway.toml")
        daemon = subprocess.Popen([sys.executable, "-m", "onion_gateway", "serve", "--config",
                                   str(ROOT / "examples" / "onion-gateway.toml")],
                                  stderr=subprocess.PIPE, text=True)
        procs.append(daemon)
        assert daemon.stderr is not None
        for line in daemon.stderr:
            sys.stderr.write(line)
            if " ready: " in line:
                break
        else:
            print("onion-gateway serve did not start", file=sys.stderr)
            return 1
        time.sleep(0.2)
        status = 0
        for table in ("tcp:127.0.0.1:6013", "socketmap:inet:127.0.0.1:6014:onion"):
            for key in ("alice@example.test", "bob@no-srv.example.test"):
                cmd = ["postmap", "-q", key, table]
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
                shown = result.stdout.strip() or "(not found: Postfix uses its normal transport)"
                print(f"$ {' '.join(cmd)}\n{shown}")
                if key.startswith("alice") and result.stdout.strip() != f"smtptor:[{onion}]:25":
                    status = 1
        if "--keep" in sys.argv:
            print("== serving until Ctrl-C")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return status
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
