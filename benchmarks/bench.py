"""Side-by-side benchmark of Postfix lookup-table daemons on one loopback DNS fixture.

Servers (each started fresh for every run, on loopback, in one private network namespace):

- ``onion-gateway``  this tree's ``onion-gateway serve`` (tcp_table and socketmap), uvloop if installed.
- ``og-before``      the same daemon at an older git ref (``--baseline-ref``, default: none), for
                     before/after numbers of the per-request path.
- ``onionrouter``    PyPI onionrouter (tcp_table; a process per connection, no cache).
- ``mta-sts``        PyPI postfix-mta-sts-resolver (socketmap, internal LRU cache, uvloop).
- ``constant``       benchmarks/constant_server.py: one canned reply, the ceiling.

DNS fixture: dnsmasq on 127.0.0.1:53 answering ``bench.test``: 100 hot domains (SRV to a v3 onion,
plus an MTA-STS TXT record and an HTTPS policy for mta-sts), ``--cold-domains`` cold domains with
SRV records, and nothing else (NXDOMAIN). Scenarios:

- ``hits``      100 hot domains, cycled, after one warm-up pass (answers come from a cache, if any).
- ``cold``      ``--cold-domains`` distinct domains, each asked once by a freshly started server.
- ``notfound``  100 NXDOMAIN domains, cycled, after one warm-up pass.
- ``nodns``     (onion-gateway rows only) an excluded domain: the per-request path without DNS.

Isolation: the script re-executes itself under ``unshare --net --mount`` (root): the namespace has only
``lo``, /etc/resolv.conf is bind-mounted to ``nameserver 127.0.0.1`` (c-ares in mta-sts reads it), so no
query or connection can leave the machine. Every run is bounded by a request count and a time limit.
Needs root, dnsmasq, ``unshare`` (util-linux), ``ip`` (iproute2) and ``openssl``.

    sudo .venv/bin/python benchmarks/bench.py --peers-venv /tmp/og-bench-peers \\
        --baseline-ref main --output /tmp/bench.md

The peers are not project dependencies: install them into a separate venv first::

    python3 -m venv /tmp/og-bench-peers
    /tmp/og-bench-peers/bin/pip install onionrouter postfix-mta-sts-resolver uvloop
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from loadgen import LoadResult, run_load, run_sync  # noqa: E402

from onion_gateway.onion import onion_from_public_key  # noqa: E402

ZONE = "bench.test"
HOT = [f"hot{i}.{ZONE}" for i in range(100)]
NOTFOUND = [f"nf{i}.{ZONE}" for i in range(100)]
EXCLUDED = f"own.{ZONE}"
CONCURRENCY = (1, 8, 64)
MTA_STS_POLICY = b"version: STSv1\nmode: enforce\nmx: mx.bench.test\nmax_age: 86400\n"


def onion_for(seed: str) -> str:
    return onion_from_public_key(hashlib.sha256(seed.encode()).digest())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- isolation -----------------------------------------------------------------------------------
def enter_namespace() -> None:
    """Re-run this script inside a fresh network + mount namespace (only lo)."""
    if os.environ.get("OG_BENCH_NETNS") == "1":
        return
    if os.geteuid() != 0:
        sys.exit("bench.py: run as root (it creates a private network namespace with unshare)")
    env = {**os.environ, "OG_BENCH_NETNS": "1"}
    os.execvpe("unshare", ["unshare", "--net", "--mount", "--propagation", "private",
                           sys.executable, *sys.argv], env)


def setup_namespace(workdir: Path) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    interfaces = [name for _, name in socket.if_nameindex()]
    assert interfaces == ["lo"], f"network namespace has more than lo: {interfaces}"
    resolv = workdir / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    subprocess.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)


# -- DNS and HTTPS fixture -----------------------------------------------------------------------
def start_dnsmasq(workdir: Path, cold: list[str]) -> subprocess.Popen:
    lines = ["port=53", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv", "no-hosts", "no-poll",
             f"local=/{ZONE}/", "local-ttl=300", "user=root", f"pid-file={workdir / 'dnsmasq.pid'}",
             "dns-forward-max=1000", "cache-size=0"]
    for domain in HOT:
        lines.append(f"srv-host=_onion-mx._tcp.{domain},{onion_for(domain)},25,10,5")
        lines.append(f'txt-record=_mta-sts.{domain},"v=STSv1; id=1"')
        lines.append(f"host-record=mta-sts.{domain},127.0.0.1")
    for domain in cold:
        lines.append(f"srv-host=_onion-mx._tcp.{domain},{onion_for(domain)},25,10,5")
    conf = workdir / "dnsmasq.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(["dnsmasq", "-k", "-C", str(conf)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", 53), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("dnsmasq did not start")


def make_certificate(workdir: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for every mta-sts.<hot domain> name."""
    ca_key, ca_pem = workdir / "ca.key", workdir / "ca.pem"
    key, csr, pem, ext = workdir / "srv.key", workdir / "srv.csr", workdir / "srv.pem", workdir / "ext.cnf"
    quiet = {"check": True, "capture_output": True}
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key,
                    "-out", ca_pem, "-days", "2", "-subj", "/CN=og-bench-ca"], **quiet)
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
                    "-subj", f"/CN=mta-sts.{ZONE}"], **quiet)
    ext.write_text("subjectAltName=" + ",".join(f"DNS:mta-sts.{d}" for d in HOT) + "\n")
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial",
                    "-out", pem, "-days", "2", "-extfile", ext], **quiet)
    return ca_pem, pem, key


def start_policy_server(cert: Path, key: Path) -> http.server.HTTPServer:
    """HTTPS on 127.0.0.1:443 serving the MTA-STS policy (RFC 8461 §3.3) for mta-sts's warm-up."""
    class Policy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/.well-known/mta-sts.txt":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(MTA_STS_POLICY)))
            self.end_headers()
            self.wfile.write(MTA_STS_POLICY)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 443), Policy)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# -- process measurements ------------------------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    """*pid* and all its descendants (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_ns(pid: int) -> int:
    """CPU time of *pid*'s process tree, all threads (nanoseconds, from /proc/*/task/*/schedstat)."""
    total = 0
    for p in process_tree(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{p}/task/{task}/schedstat") as fh:
                    total += int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


def pss_kib(pid: int) -> int:
    """Proportional set size of *pid*'s process tree (KiB): RSS that counts forked children fairly."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# -- the servers ---------------------------------------------------------------------------------
@dataclass
class Server:
    """One server under test: how to start it and which protocols/key forms it speaks."""

    name: str
    protocols: tuple[str, ...]
    key_form: str = "address"          # "address" (user@domain, transport_maps) or "domain" (tls policy maps)
    map_name: str = "onion"
    proc: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)
    ready_seconds: float = 0.0

    def command(self, workdir: Path) -> tuple[list[str], dict[str, str], Path | None]:
        raise NotImplementedError

    def probe(self, protocol: str) -> str:
        return "*"

    def key(self, domain: str) -> str:
        return f"user@{domain}" if self.key_form == "address" else domain

    def start(self, workdir: Path, log: Path, keep_ports: bool = False) -> None:
        if not (keep_ports and self.ports):
            self.ports = {p: free_port() for p in self.protocols}
        argv, env, cwd = self.command(workdir)
        started = time.perf_counter()
        self.proc = subprocess.Popen(argv, env={**os.environ, **env}, cwd=cwd, stdout=log.open("ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = started + 20
        waiting = list(self.protocols)          # ready = every listener answers
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {log}")
            waiting = [p for p in waiting if not _probe(p, self.ports[p], self.probe(p), self.map_name)]
            if not waiting:
                self.ready_seconds = time.perf_counter() - started
                return
            time.sleep(0.002)
        raise RuntimeError(f"{self.name} not ready after 20 s: see {log}")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None


def _probe_reply(protocol: str, port: int, key: str, map_name: str = "onion") -> str:
    """One request on a fresh connection; the reply as text ("" on any failure)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            if protocol == "tcp_table":
                s.sendall(b"get " + key.encode() + b"\n")
            else:
                payload = f"{map_name} {key}".encode()
                s.sendall(b"%d:%s," % (len(payload), payload))
            return s.recv(4096).decode(errors="replace")
    except OSError:
        return ""


def _probe(protocol: str, port: int, key: str, map_name: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            if protocol == "tcp_table":
                s.sendall(b"get " + key.encode() + b"\n")
            else:
                payload = f"{map_name} {key}".encode()
                s.sendall(b"%d:%s," % (len(payload), payload))
            return bool(s.recv(4096))
    except OSError:
        return False


class OnionGateway(Server):
    def __init__(self, name: str = "onion-gateway", source: Path | None = None, extra: list[str] | None = None):
        super().__init__(name, ("tcp_table", "socketmap"))
        self.source = source
        self.extra = extra or []

    def command(self, workdir):
        argv = [sys.executable, "-m", "onion_gateway", "serve",
                "--tcp-table", f"127.0.0.1:{self.ports['tcp_table']}",
                "--socketmap", f"127.0.0.1:{self.ports['socketmap']}",
                "--dns-server", "127.0.0.1:53", "--exclude-domains", EXCLUDED, "--log-level", "warning",
                *self.extra]
        env = {"PYTHONPATH": str(self.source)} if self.source else {}
        return argv, env, self.source or ROOT


class OnionRouter(Server):
    def __init__(self, venv: Path):
        super().__init__("onionrouter", ("tcp_table",))
        self.venv = venv

    def command(self, workdir):
        confdir = workdir / "onionrouter"
        (confdir / "mappings").mkdir(parents=True, exist_ok=True)
        (confdir / "onionrouter.ini").write_text(
            "[RESOLVER]\nresolver_ip: 127.0.0.1\nresolver_port: 53\ntcp: False\n\n"
            f"[DOMAIN]\nhostname: myself.{ZONE}\n\n[DNS]\nsrv_record: _onion-mx._tcp.\n\n"
            f"[REROUTE]\nonion_transport: smtptor\n\n[IGNORED]\ndomains: {EXCLUDED}\n")
        # An empty mapping directory: onionrouter 0.6.2 calls yaml.load() without a Loader, which
        # PyYAML >= 6 refuses, so any mapping file turns every answer into "500" plus a closed
        # connection. (With no mappings it re-lists the directory on every request.)
        argv = [str(self.venv / "bin" / "onionrouter"), "--config", str(confdir / "onionrouter.ini"),
                "--mappings", str(confdir / "mappings"), "--host", "127.0.0.1",
                "--port", str(self.ports["tcp_table"])]
        return argv, {}, None

    def probe(self, protocol):
        return "*"


class MtaSts(Server):
    def __init__(self, venv: Path, ca: Path):
        super().__init__("mta-sts", ("socketmap",), key_form="domain", map_name="postfix")
        self.venv = venv
        self.ca = ca

    def command(self, workdir):
        conf = workdir / "mta-sts.yml"
        conf.write_text(f"host: 127.0.0.1\nport: {self.ports['socketmap']}\nreuse_port: true\n"
                        "shutdown_timeout: 2\ncache_grace: 3600\n"
                        "cache:\n  type: internal\n  options:\n    cache_size: 10000\n"
                        "default_zone:\n  strict_testing: false\n  timeout: 4\n")
        argv = [str(self.venv / "bin" / "mta-sts-daemon"), "-c", str(conf), "-v", "warn"]
        return argv, {"SSL_CERT_FILE": str(self.ca)}, None

    def probe(self, protocol):
        return ".probe"          # parent-domain form: answered NOTFOUND without a lookup


class Constant(Server):
    def __init__(self):
        super().__init__("constant", ("tcp_table", "socketmap"))

    def command(self, workdir):
        return [sys.executable, str(ROOT / "benchmarks" / "constant_server.py"),
                "--tcp-table", f"127.0.0.1:{self.ports['tcp_table']}",
                "--socketmap", f"127.0.0.1:{self.ports['socketmap']}"], {}, None


# -- runs ----------------------------------------------------------------------------------------
@dataclass
class Row:
    server: str
    protocol: str
    scenario: str
    concurrency: int
    rate: float
    p50_us: float
    p99_us: float
    cpu_us_per_request: float
    pss_mib: float
    ready_seconds: float
    replies: dict[str, int]
    errors: int


def measure(server: Server, protocol: str, scenario: str, concurrency: int, keys: list[str], cycle: bool,
            max_requests: int, max_seconds: float, warm: bool) -> Row:
    port = server.ports[protocol]
    if warm:   # one pass over the key set on one connection: fills whatever cache the server has
        run_sync(run_load(protocol, "127.0.0.1", port, keys, concurrency=1, max_requests=len(keys),
                             max_seconds=30, cycle=False, map_name=server.map_name))
    samples: dict[str, int] = {}
    pid = server.proc.pid

    def before():
        samples["cpu0"] = cpu_ns(pid)

    def after():
        samples["cpu1"] = cpu_ns(pid)
        samples["pss"] = pss_kib(pid)

    result: LoadResult = run_sync(run_load(
        protocol, "127.0.0.1", port, keys, concurrency=concurrency, max_requests=max_requests,
        max_seconds=max_seconds, cycle=cycle, map_name=server.map_name, on_connected=before, on_finished=after))
    cpu = (samples.get("cpu1", 0) - samples.get("cpu0", 0)) / 1000 / max(1, result.requests)
    return Row(server.name, protocol, scenario, concurrency, result.rate, result.percentile_us(50),
               result.percentile_us(99), cpu, samples.get("pss", 0) / 1024, server.ready_seconds,
               result.replies, result.errors)


def run_matrix(servers: list[Server], cold: list[str], args, workdir: Path, log: Path) -> list[Row]:
    rows: list[Row] = []
    scenarios = [("hits", HOT, True, True), ("notfound", NOTFOUND, True, True), ("cold", None, False, False),
                 ("nodns", [EXCLUDED], True, False)]
    for scenario, domains, cycle, warm in scenarios:
        for server in servers:
            if scenario == "nodns" and not isinstance(server, OnionGateway):
                continue
            for protocol in server.protocols:
                for concurrency in CONCURRENCY:
                    # every run starts a fresh server, so its cache (if any) is empty: the cold set is
                    # the same for all servers and misses every time
                    keyset = cold[:args.cold_requests] if scenario == "cold" else domains
                    keys = [server.key(d) for d in keyset]
                    limit = len(keys) if scenario == "cold" else args.requests
                    seconds = args.cold_seconds if scenario == "cold" else args.seconds
                    server.start(workdir, log)
                    try:
                        row = measure(server, protocol, scenario, concurrency, keys, cycle, limit, seconds, warm)
                    finally:
                        server.stop()
                    rows.append(row)
                    print(json.dumps(row.__dict__), flush=True)
    return rows


def memory_with_cache(entries: int, workdir: Path, log: Path) -> dict[str, float]:
    """Start onion-gateway with a saved cache of *entries* domains; report ready time and RSS."""
    from onion_gateway.config import serve_settings
    from onion_gateway.lookup.daemon import cache_fingerprint
    from onion_gateway.lookup.persist import save_rows

    settings = serve_settings({"exclude_domains": [EXCLUDED]})
    now = time.time()
    rows = [(f"d{i}.{ZONE}", "found", f"smtptor:[{onion_for(str(i))}]:25", now + 3600, now + 3600)
            for i in range(entries)]
    path = workdir / "cache-100k.sqlite"
    save_rows(rows, path, cache_fingerprint(settings))
    server = OnionGateway(extra=["--cache-file", str(path)])
    empty = OnionGateway()
    try:
        empty.start(workdir, log)
        empty_rss = rss_kib(empty.proc.pid) / 1024
        empty_ready = empty.ready_seconds
    finally:
        empty.stop()
    try:
        started = time.perf_counter()
        server.start(workdir, log)
        # the probe proves listening; the last entry answered "200" (its domain is not in DNS) proves
        # the file is loaded
        # the file is loaded (a probe that came too early is answered from DNS and cached as not
        # found, so every probe asks for another domain, walking down from the last row)
        probe = entries - 1
        while not _probe_reply("tcp_table", server.ports["tcp_table"], f"x@d{probe}.{ZONE}").startswith("200"):
            if time.perf_counter() - started > 30:
                raise RuntimeError("cache file not loaded after 30 s")
            probe -= 1
            time.sleep(0.01)
        loaded = time.perf_counter() - started
        time.sleep(0.5)
        return {"entries": entries, "rss_mib": rss_kib(server.proc.pid) / 1024, "ready_seconds": server.ready_seconds,
                "loaded_seconds": loaded, "empty_rss_mib": empty_rss, "empty_ready_seconds": empty_ready}
    finally:
        server.stop()


# -- the daemon under abuse and at scale (issue 12) ----------------------------------------------
def write_config(path: Path, **serve) -> Path:
    """A TOML config with a [serve] table of *serve* (strings and numbers)."""
    lines = ["[serve]"] + [f"{k} = {json.dumps(v)}" for k, v in serve.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_pins(path: Path, domains: list[str], server: Server) -> Path:
    """A pins file pinning each of *domains* to an onion: sqlite for this tree, version-1 JSON for a
    baseline that predates it."""
    if getattr(server, "source", None) is None:
        import sqlite3

        from onion_gateway.lookup.pins import PinFile

        path = path.with_suffix(".sqlite")
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            leftover.unlink(missing_ok=True)
        PinFile(path).close()
        with sqlite3.connect(path) as db:
            db.executemany("INSERT INTO pin VALUES (?, ?, '', 1.0, NULL)", [(d, onion_for(d)) for d in domains])
        return path
    path.write_text(json.dumps({"version": 1, "domains": {
        d: {"onions": [onion_for(d)], "pending": [], "first_seen": 1.0, "changed_at": None} for d in domains}}))
    return path


def pinning_rows(servers: list[Server], cold: list[str], args, workdir: Path, log: Path) -> list[dict]:
    """Cold and cached lookups at c=8 with pinning off, on (memory only), and on with a pins file of
    10k / 100k other domains."""
    rows = []
    variants = [("pinning off", {"pinning": "off"}, 0), ("warn, in memory", {"pinning": "warn"}, 0),
                ("warn, pins file 10k", {"pinning": "warn"}, 10_000),
                ("warn, pins file 100k", {"pinning": "warn"}, 100_000)]
    for server in servers:
        for label, serve, pins in variants:
            for scenario in ("cold", "hits"):
                config = dict(serve)
                if pins:
                    pins_path = write_pins(workdir / f"pins-{server.name}-{pins}.json",
                                           [f"pinned{i}.example" for i in range(pins)], server)
                    config["pins_file"] = str(pins_path)
                conf = write_config(workdir / f"pin-{server.name}.toml", **config)
                runner = OnionGateway(server.name, getattr(server, "source", None), extra=["--config", str(conf)])
                keys = [runner.key(d) for d in (cold[:args.cold_requests] if scenario == "cold" else HOT)]
                runner.start(workdir, log)
                try:
                    time.sleep(3.0 if pins else 0.1)       # let the pins file load (not measured)
                    row = measure(runner, "tcp_table", scenario, 8, keys, scenario != "cold",
                                  len(keys) if scenario == "cold" else args.requests,
                                  args.cold_seconds if scenario == "cold" else args.seconds, scenario != "cold")
                finally:
                    runner.stop()
                rows.append({"server": server.name, "variant": label, "scenario": scenario, "rate": row.rate,
                             "p50_us": row.p50_us, "p99_us": row.p99_us, "cpu_us": row.cpu_us_per_request})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def memory_rows(servers: list[Server], entries: int, workdir: Path, log: Path) -> list[dict]:
    """RSS with *entries* cached domains (cache file), pinning off, and on with all of them pinned."""
    from onion_gateway.config import serve_settings
    from onion_gateway.lookup.daemon import cache_fingerprint
    from onion_gateway.lookup.persist import save_rows

    now = time.time()
    domains = [f"d{i}.{ZONE}" for i in range(entries)]
    rows = []
    for server in servers:
        for label, pinned in (("pinning off", False), ("pinning warn + pins file", True)):
            serve: dict = {"pinning": "warn" if pinned else "off"}
            settings = serve_settings({"exclude_domains": [EXCLUDED]})
            path = workdir / f"cache-{server.name}-{pinned}.sqlite"
            save_rows([(d, "found", f"smtptor:[{onion_for(d)}]:25", now + 3600, now + 3600) for d in domains],
                      path, cache_fingerprint(settings))
            serve["cache_file"] = str(path)
            if pinned:
                pins_path = write_pins(workdir / f"pins-{server.name}-mem.json", domains, server)
                serve["pins_file"] = str(pins_path)
            conf = write_config(workdir / f"mem-{server.name}.toml", **serve)
            runner = OnionGateway(server.name, getattr(server, "source", None), extra=["--config", str(conf)])
            runner.start(workdir, log)
            try:
                started = time.perf_counter()
                probe = entries - 1
                while not _probe_reply("tcp_table", runner.ports["tcp_table"], f"x@d{probe}.{ZONE}").startswith("200"):
                    if time.perf_counter() - started > 60:
                        raise RuntimeError("cache file not loaded after 60 s")
                    probe -= 1
                    time.sleep(0.01)
                time.sleep(3.0 if pinned else 0.5)        # the pins load after the cache
                rows.append({"server": server.name, "variant": label, "entries": entries,
                             "rss_mib": rss_kib(runner.proc.pid) / 1024})
            finally:
                runner.stop()
            print(json.dumps(rows[-1]), flush=True)
    return rows


def non_reader_rows(servers: list[Server], seconds: float, workdir: Path, log: Path) -> list[dict]:
    """A client that pipelines cached lookups and never reads, next to a well-behaved client: the
    daemon's RSS and the well-behaved client's latency."""
    rows = []
    for server in servers:
        runner = OnionGateway(server.name, getattr(server, "source", None))
        runner.start(workdir, log)
        try:
            port = runner.ports["tcp_table"]
            keys = [runner.key(d) for d in HOT]
            run_sync(run_load("tcp_table", "127.0.0.1", port, keys, concurrency=1, max_requests=len(keys),
                              max_seconds=30, cycle=False))
            rss_before = rss_kib(runner.proc.pid) / 1024
            stop = threading.Event()
            sent = [0]

            def hog():
                sock = socket.create_connection(("127.0.0.1", port))
                sock.setblocking(False)
                burst = b"".join(f"get {k}\n".encode() for k in keys) * 50
                while not stop.is_set():
                    try:
                        sent[0] += sock.send(burst)
                    except BlockingIOError:
                        time.sleep(0.002)
                    except OSError:
                        break
                sock.close()

            peak = [rss_before]

            def sample():
                while not stop.is_set():
                    try:
                        peak[0] = max(peak[0], rss_kib(runner.proc.pid) / 1024)
                    except OSError:
                        break
                    time.sleep(0.05)

            threads = [threading.Thread(target=hog), threading.Thread(target=sample)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            result = run_sync(run_load("tcp_table", "127.0.0.1", port, keys, concurrency=1,
                                       max_requests=10**9, max_seconds=seconds))
            stop.set()
            for t in threads:
                t.join()
            rows.append({"server": server.name, "rss_before_mib": rss_before, "rss_peak_mib": peak[0],
                         "hog_sent_mib": sent[0] / 2**20, "other_requests": result.requests,
                         "other_p50_us": result.percentile_us(50), "other_p99_us": result.percentile_us(99),
                         "other_max_us": result.latencies_ns[-1] / 1000 if result.latencies_ns else float("nan"),
                         "other_errors": result.errors})
        finally:
            runner.stop()
        print(json.dumps(rows[-1]), flush=True)
    return rows


def abuse_report(pinning: list[dict], memory: list[dict], readers: list[dict]) -> str:
    out = []
    if pinning:
        out.append("\n### pinning on the request path (tcp_table, c=8)\n")
        out.append("| server | pinning | scenario | req/s | p50 µs | p99 µs | server CPU µs/req |")
        out.append("|---|---|---|---:|---:|---:|---:|")
        for r in pinning:
            out.append(f"| {r['server']} | {r['variant']} | {r['scenario']} | {r['rate']:,.0f} | {r['p50_us']:,.0f} | "
                       f"{r['p99_us']:,.0f} | {r['cpu_us']:,.1f} |")
    if memory:
        out.append("\n### memory at scale\n")
        out.append("| server | variant | cached domains | RSS MB |")
        out.append("|---|---|---:|---:|")
        for r in memory:
            out.append(f"| {r['server']} | {r['variant']} | {r['entries']:,} | {r['rss_mib']:.1f} |")
    if readers:
        out.append("\n### a client that never reads, next to a well-behaved one\n")
        out.append("| server | RSS before MB | RSS peak MB | hog sent MB | other: requests | other p50 µs | "
                   "other p99 µs | other max µs | other errors |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in readers:
            out.append(f"| {r['server']} | {r['rss_before_mib']:.1f} | {r['rss_peak_mib']:.1f} | {r['hog_sent_mib']:,.0f} | "
                       f"{r['other_requests']:,} | {r['other_p50_us']:,.0f} | {r['other_p99_us']:,.0f} | "
                       f"{r['other_max_us']:,.0f} | {r['other_errors']} |")
    return "\n".join(out) + "\n"


# -- Postfix's own throughput with the daemon (issue 12) --------------------------------------------
def postfix_rows(servers: list[Server], args, workdir: Path, log: Path) -> list[dict]:
    """Postfix delivering ``--postfix-messages`` held messages to ``--postfix-domains`` domains through
    ``smtptor`` (plain ``smtp`` here) to an smtp-sink on 127.0.0.2:25, with transport_maps = a hash:
    map of the same routes, then the daemon cold (fresh, empty cache), then warm (the same daemon again).

    Messages are injected with smtp-source and held (``smtpd_data_restrictions = check_client_access
    static:HOLD``); the clock runs from ``postsuper -H ALL`` + ``postqueue -f`` to the last
    ``status=sent`` in the maillog.
    The onion names resolve to 127.0.0.2 through /etc/hosts, bind-mounted inside the namespace.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.postfix import new_instance

    domains = [f"cold{i}.{ZONE}" for i in range(args.postfix_domains)]
    hosts = workdir / "hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.2 {onion_for(d)}\n" for d in domains))
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", "127.0.0.2:25", "1024"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    per_domain = max(1, args.postfix_messages // len(domains))
    rows = []

    def deliver(label: str, transport_maps: str, server: str, before_release=None) -> None:
        pf = new_instance("og-bench-pf-", hostname="mx.bench.test", domains=["local.bench.test"], main_extra={
            "transport_maps": transport_maps, "smtpd_data_restrictions": "check_client_access static:HOLD",
            "smtp_host_lookup": "native", "smtp_dns_support_level": "disabled",
            "default_destination_concurrency_limit": "20"},
            master_extra="smtptor unix - - n - - smtp\n")
        if transport_maps.startswith("hash:"):
            subprocess.run(["postmap", transport_maps.removeprefix("hash:")], check=True)
        pf.start()
        try:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda d: subprocess.run(
                    ["smtp-source", "-m", str(per_domain), "-f", "sender@local.bench.test", "-t", f"user@{d}",
                     f"127.0.0.1:{pf.smtp_port}"], check=True, capture_output=True, timeout=60), domains))
            expected = per_domain * len(domains)
            deadline = time.monotonic() + 60
            while len(pf.queue_ids()) < expected and time.monotonic() < deadline:
                time.sleep(0.2)
            if before_release is not None:
                before_release()
            sent_before = pf.log_text().count("status=sent")
            started = time.perf_counter()
            # released messages go to the deferred queue: flush it so they are delivered now
            subprocess.run(["postsuper", "-c", str(pf.config_dir), "-H", "ALL"], check=True, capture_output=True)
            subprocess.run(["postqueue", "-c", str(pf.config_dir), "-f"], check=True, capture_output=True)
            deadline = started + 300
            sent = 0
            while time.perf_counter() < deadline:
                sent = pf.log_text().count("status=sent") - sent_before
                if sent >= expected:
                    break
                time.sleep(0.05)
            seconds = time.perf_counter() - started
            text = pf.log_text()
            rows.append({"server": server, "variant": label, "messages": sent, "seconds": seconds,
                         "rate": sent / seconds, "deferred": text.count("status=deferred")})
            print(json.dumps(rows[-1]), flush=True)
        finally:
            pf.stop()

    try:
        table = workdir / "transport"
        table.write_text("".join(f"{d} smtptor:[{onion_for(d)}]:25\n" for d in domains))
        for _ in range(args.postfix_repeats):
            deliver("transport_maps = hash:", f"hash:{table}", "postfix")
        for server in servers:
            runner = OnionGateway(server.name, getattr(server, "source", None))      # SRV TTL 300 s: warm stays warm
            runner.start(workdir, log)

            def restart():
                # smtpd already asked the daemon at RCPT time: a fresh daemon makes delivery ask DNS again
                runner.stop()
                runner.start(workdir, log, keep_ports=True)
            try:
                socketmap = f"socketmap:inet:127.0.0.1:{runner.ports['socketmap']}:onion"
                for _ in range(args.postfix_repeats):
                    deliver("daemon cold", socketmap, server.name, restart)
                    deliver("daemon warm", socketmap, server.name)
            finally:
                runner.stop()
    finally:
        sink.terminate()
        sink.wait(5)
    return rows


def postfix_report(rows: list[dict]) -> str:
    out = ["\n### Postfix throughput (held queue released, smtptor = smtp to smtp-sink on 127.0.0.2)\n",
           "| transport_maps | server | messages | seconds | messages/s (median run) | ÷ hash: | deferred |",
           "|---|---|---:|---:|---:|---:|---:|"]
    grouped: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        grouped.setdefault((r["server"], r["variant"]), []).append(r)
    rows = [sorted(group, key=lambda r: r["rate"])[len(group) // 2] | {"runs": len(group)}
            for group in grouped.values()]
    base = next((r["rate"] for r in rows if r["server"] == "postfix"), 0.0)
    for r in rows:
        ratio = f"{r['rate'] / base:.2f}" if base else ""
        out.append(f"| {r['variant']} | {r['server']} | {r['messages']:,} | {r['seconds']:.2f} | {r['rate']:,.0f} | "
                   f"{ratio} | {r['deferred']} |")
    return "\n".join(out) + "\n"


def pin_cost_in_process(domains: int = 20_000) -> str:
    """CPU per fresh SRV answer routed with pinning off and on (in process, one core, no sockets):
    ``Router.route_from_answer`` + ``RouteCache._store`` for *domains* distinct domains."""
    from onion_gateway.lookup.cache import CachePolicy, RouteCache
    from onion_gateway.lookup.dns import DnsStatus, SrvAnswer, SrvRecord, SrvResolver
    from onion_gateway.lookup.pins import PinStore
    from onion_gateway.lookup.routing import Router, RoutingTable

    names = [f"d{i}.{ZONE}" for i in range(domains)]
    answers = [SrvAnswer(DnsStatus.ANSWER, (SrvRecord(10, 5, 25, onion_for(d)),), ttl_seconds=300) for d in names]
    out = ["| pinning | µs per fresh answer (route + store), median of 5 |", "|---|---:|"]
    for label, pinning in (("off", False), ("warn, in memory", True), ("warn, pins file (batched)", "file")):
        times = []
        for _ in range(5):
            router = Router(SrvResolver([("127.0.0.1", 9)], 1.0), RoutingTable())
            cache = RouteCache(router, CachePolicy(max_entries=100_000))
            if pinning:
                path = Path(tempfile.mkdtemp(prefix="og-pincost-")) / "pins.sqlite" if pinning == "file" else None
                router.pins = PinStore(path)
                router.pins.use_memory(cache)
                cache.on_evict = router.pins.evicted
            started = time.perf_counter()
            for domain, answer in zip(names, answers):
                cache._store(domain, router.route_from_answer(domain, answer), answer)
            times.append((time.perf_counter() - started) / domains * 1e6)
        out.append(f"| {label} | {statistics.median(times):.2f} |")
    return "\n### pinning cost in process (route + store of a fresh answer)\n\n" + "\n".join(out) + "\n"


def help_seconds() -> float:
    exe = Path(sys.executable).with_name("onion-gateway")
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([str(exe), "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- report --------------------------------------------------------------------------------------
def report(rows: list[Row], memory: dict, help_time: float, args) -> str:
    out = []
    label = {("onion-gateway", "tcp_table"): "onion-gateway tcp_table", ("onion-gateway", "socketmap"): "onion-gateway socketmap"}
    for scenario in ("hits", "cold", "notfound", "nodns"):
        subset = [r for r in rows if r.scenario == scenario]
        if not subset:
            continue
        out.append(f"\n### {scenario}\n")
        out.append("| server | protocol | c | req/s | p50 µs | p99 µs | server CPU µs/req | PSS MB | replies |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for r in subset:
            replies = ", ".join(f"{k}×{v}" for k, v in sorted(r.replies.items()))
            if r.errors:
                replies += f", errors×{r.errors}"
            out.append(f"| {label.get((r.server, r.protocol), r.server)} | {r.protocol} | {r.concurrency} | "
                       f"{r.rate:,.0f} | {r.p50_us:,.0f} | {r.p99_us:,.0f} | {r.cpu_us_per_request:,.1f} | "
                       f"{r.pss_mib:.1f} | {replies} |")
        ratios = []
        for c in CONCURRENCY:
            for protocol, peer in (("tcp_table", "onionrouter"), ("socketmap", "mta-sts"), ("tcp_table", "og-before")):
                ours = next((r for r in subset if r.server == "onion-gateway" and r.protocol == protocol
                             and r.concurrency == c), None)
                theirs = next((r for r in subset if r.server == peer and r.concurrency == c
                               and r.protocol == protocol), None)
                ceiling = next((r for r in subset if r.server == "constant" and r.protocol == protocol
                                and r.concurrency == c), None)
                if ours and theirs and theirs.rate:
                    line = f"| {c} | {protocol} | {peer} | {ours.rate / theirs.rate:.2f}× |"
                    line += f" {ours.rate / ceiling.rate:.2f} |" if ceiling and ceiling.rate else " |"
                    ratios.append(line)
        if ratios:
            out.append(f"\nonion-gateway req/s relative to each peer ({scenario}):\n")
            out.append("| c | protocol | peer | onion-gateway ÷ peer | onion-gateway ÷ constant ceiling |")
            out.append("|---:|---|---|---:|---:|")
            out.extend(ratios)
    ready = {}
    for r in rows:
        ready.setdefault(r.server, []).append(r.ready_seconds)
    out.append("\n### start-up, memory, CLI\n")
    out.append("| measure | value |")
    out.append("|---|---|")
    for name, values in ready.items():
        out.append(f"| {name}: start -> first answer (median of {len(values)} starts) | "
                   f"{statistics.median(values) * 1000:.0f} ms |")
    if memory:
        out.append(f"| onion-gateway RSS, empty cache | {memory['empty_rss_mib']:.1f} MB |")
        out.append(f"| onion-gateway RSS with {memory['entries']:,} cached domains (loaded from cache file) | "
                   f"{memory['rss_mib']:.1f} MB |")
        out.append(f"| onion-gateway start -> first answer with that cache file | "
                   f"{memory['ready_seconds'] * 1000:.0f} ms |")
        out.append(f"| onion-gateway start -> all {memory['entries']:,} entries loaded and answering | "
                   f"{memory['loaded_seconds'] * 1000:.0f} ms |")
    out.append(f"| `onion-gateway --help` (median of 5) | {help_time * 1000:.0f} ms |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="side-by-side lookup daemon benchmark (loopback, bounded)")
    parser.add_argument("--peers-venv", type=Path, help="venv with onionrouter and postfix-mta-sts-resolver")
    parser.add_argument("--baseline-ref", help="also run onion-gateway at this git ref (before/after)")
    parser.add_argument("--cold-domains", type=int, default=1000, help="cold SRV domains published (+100 hot)")
    parser.add_argument("--cold-requests", type=int, default=1000, help="distinct domains per cold run")
    parser.add_argument("--requests", type=int, default=20000, help="request bound of hits/notfound runs")
    parser.add_argument("--seconds", type=float, default=2.0, help="time bound of hits/notfound runs")
    parser.add_argument("--cold-seconds", type=float, default=15.0, help="time bound of cold runs")
    parser.add_argument("--memory-entries", type=int, default=100_000)
    parser.add_argument("--only", help="comma-separated server names to run")
    parser.add_argument("--output", type=Path, help="write the markdown report here too")
    parser.add_argument("--suite", choices=("matrix", "abuse", "postfix", "pincost"), default="matrix",
                        help="matrix: the side-by-side runs; abuse: pinning, memory at scale and a "
                             "non-reading client (issue 12); postfix: Postfix's own throughput")
    parser.add_argument("--abuse-seconds", type=float, default=10.0, help="time bound of the non-reader run")
    parser.add_argument("--abuse-parts", help="comma-separated subset of pinning,memory,readers")
    parser.add_argument("--postfix-messages", type=int, default=2000)
    parser.add_argument("--postfix-domains", type=int, default=1000)
    parser.add_argument("--postfix-repeats", type=int, default=3, help="runs per transport_maps variant")
    args = parser.parse_args()
    enter_namespace()
    workdir = Path(tempfile.mkdtemp(prefix="og-bench-", dir="/tmp"))
    log = workdir / "servers.log"
    setup_namespace(workdir)
    cold = [f"cold{i}.{ZONE}" for i in range(args.cold_domains)]
    dnsmasq = start_dnsmasq(workdir, cold)
    policy = None
    try:
        servers: list[Server] = [OnionGateway()]
        if args.baseline_ref:
            source = workdir / "baseline"
            source.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_ref], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
            servers.append(OnionGateway("og-before", source))
        if args.peers_venv:
            ca, cert, key = make_certificate(workdir)
            policy = start_policy_server(cert, key)
            servers += [OnionRouter(args.peers_venv), MtaSts(args.peers_venv, ca)]
        servers.append(Constant())
        if args.only:
            wanted = set(args.only.split(","))
            servers = [s for s in servers if s.name in wanted]
        if args.suite != "matrix":
            ours = [s for s in servers if isinstance(s, OnionGateway)]
            if args.suite == "pincost":
                text = pin_cost_in_process()
            elif args.suite == "abuse":
                parts = set((args.abuse_parts or "pinning,memory,readers").split(","))
                text = abuse_report(pinning_rows(ours, cold, args, workdir, log) if "pinning" in parts else [],
                                    memory_rows(ours, args.memory_entries, workdir, log) if "memory" in parts else [],
                                    non_reader_rows(ours, args.abuse_seconds, workdir, log) if "readers" in parts else [])
            else:
                text = postfix_report(postfix_rows(ours, args, workdir, log))
            print(text)
            if args.output:
                args.output.write_text(text)
            return
        rows = run_matrix(servers, cold, args, workdir, log)
        memory = memory_with_cache(args.memory_entries, workdir, log) if args.memory_entries else {}
        text = report(rows, memory, help_seconds(), args)
        print(text)
        if args.output:
            args.output.write_text(text)
    finally:
        if policy is not None:
            policy.shutdown()
        dnsmasq.terminate()
        dnsmasq.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
