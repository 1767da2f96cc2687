"""A private Tor network on 127.0.0.1 for end-to-end tests (chutney's ``hs-v3-min`` shape, no chutney).

Nodes (every port a free 127.0.0.1 port, nothing fixed, so tests of other sessions can run beside it)::

    a0 a1 a2   directory authorities   ORPort, DirPort, ControlPort; keys from tor-gencert
    r3 r4 r5   non-exit relays         ORPort, DirPort, ControlPort
    c6         client                  SocksPort (ExtendedErrors), ControlPort; the sending gateway's tor
    h7         onion-service node      SocksPort, ControlPort; the receiving gateway's tor (optional)

The mail lab (tests/e2e/conftest.py) points ``onion-gateway setup`` at c6's and h7's ControlPorts: setup
adds a ``HiddenServiceDir`` through SETCONF and an ``%include`` of its torrc piece to the node's torrc.

Safety (the project's hard network rule): every torrc has ``TestingTorNetwork 1`` (tor then refuses to
run with the public authorities), only loopback ``DirAuthority`` lines, ``UseDefaultFallbackDirs 0`` and
``ClientUseIPv6 0``, and every tor starts with ``--defaults-torrc <empty file>`` so the system's
torrc-defaults cannot add anything. No node is an exit (``ExitPolicy reject *:*``).

Timing on the CI machine (LAB-NOTES §6): the network bootstraps 10-40 s after launch, depending on where
the launch falls in the 10 s voting schedule; :meth:`TorNetwork.wait_bootstrapped` polls up to 120 s.

The torrc options are chutney's (``torrc_templates/{common,authority,relay,client,hs}.i``) as trimmed in
the lab (LAB-NOTES §6); tor(1) documents each of them.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import free_port, tail

BOOTSTRAP_DONE = "Bootstrapped 100%"
STARTED = "Bootstrapped 0%"          # logged after every listener is open (or tor has exited)
BIND_FAILURE = "Could not bind to"    # on stdout only: the notice log file is not open yet
STARTUP_TIMEOUT_SECONDS = 20.0
START_ATTEMPTS = 3
STOP_TIMEOUT_SECONDS = 10.0

COMMON_TORRC = """\
TestingTorNetwork 1
DataDirectory {data_dir}
PidFile {data_dir}/pid
RunAsDaemon 0
Nickname {nick}
ShutdownWaitLength 0
ControlPort 127.0.0.1:{control_port}
CookieAuthentication 1
Log notice file {data_dir}/notice.log
ProtocolWarnings 1
SafeLogging 0
LogTimeGranularity 1
AssumeReachable 1
PathsNeededToBuildCircuits 0.67
TestingDirAuthVoteExit *
TestingDirAuthVoteHSDir *
TestingDirAuthVoteGuard *
TestingMinExitFlagThreshold 0
V3AuthNIntervalsValid 2
UseDefaultFallbackDirs 0
ClientUseIPv6 0
"""

RELAY_TORRC = """\
SocksPort 0
ORPort 127.0.0.1:{or_port}
DirPort 127.0.0.1:{dir_port}
Address 127.0.0.1
ExitRelay 0
ExitPolicy reject *:*
TestingServerDownloadInitialDelay 0
TestingServerConsensusDownloadInitialDelay 0
"""

AUTHORITY_TORRC = """\
AuthoritativeDirectory 1
V3AuthoritativeDirectory 1
ContactInfo {nick}@tornet.test
TestingV3AuthInitialVotingInterval 5
V3AuthVotingInterval 10
TestingV3AuthInitialVoteDelay 2
V3AuthVoteDelay 2
TestingV3AuthInitialDistDelay 2
V3AuthDistDelay 2
"""

CLIENT_TORRC = """\
SocksPort 127.0.0.1:{socks_port} ExtendedErrors
"""

ONION_NODE_TORRC = """\
SocksPort 127.0.0.1:{socks_port} ExtendedErrors
"""


@dataclass
class TorNode:
    """One tor process of the network.

    :param nick: the Nickname (``a0``, ``r3``, ``c6``, ``h7``).
    :param kind: ``"authority"``, ``"relay"``, ``"client"`` or ``"onion"``.
    :param data_dir: its DataDirectory (mode 0700, tor insists).
    :param control_port: its ControlPort on 127.0.0.1 (cookie authentication).
    :param or_port: ORPort (authorities and relays), else 0.
    :param dir_port: DirPort (authorities and relays), else 0.
    :param socks_port: SocksPort (the client and the onion node), else 0.
    """

    nick: str
    kind: str
    data_dir: Path
    control_port: int
    or_port: int = 0
    dir_port: int = 0
    socks_port: int = 0
    v3ident: str = ""
    fingerprint: str = ""
    proc: subprocess.Popen | None = None
    log_offset: int = 0
    stdout_offset: int = 0
    stopped_on_purpose: bool = False

    @property
    def torrc(self) -> Path:
        return self.data_dir / "torrc"

    @property
    def notice_log(self) -> Path:
        return self.data_dir / "notice.log"

    @property
    def stdout_log(self) -> Path:
        return self.data_dir / "stdout.log"

    @property
    def is_relay(self) -> bool:
        """True for nodes with an ORPort (authorities and relays)."""
        return self.kind in ("authority", "relay")

    def running(self) -> bool:
        """True while the tor process we started is alive."""
        return self.proc is not None and self.proc.poll() is None

    def log_since_start(self) -> str:
        """The notice log written since the last :meth:`TorNetwork.start_node` of this node."""
        try:
            with open(self.notice_log, "rb") as fh:
                fh.seek(self.log_offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def stdout_since_start(self) -> str:
        """tor's stdout/stderr since the last start (startup errors land here, not in the notice log)."""
        try:
            with open(self.stdout_log, "rb") as fh:
                fh.seek(self.stdout_offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def bootstrapped(self) -> bool:
        """True once this run of the node logged ``Bootstrapped 100%``."""
        return BOOTSTRAP_DONE in self.log_since_start()


@dataclass
class TorNetwork:
    """The private network: :meth:`setup` (keys, torrcs), :meth:`start`, :meth:`wait_bootstrapped`, :meth:`stop`.

    :param workdir: an existing directory for every node's DataDirectory (a ``public_tempdir``).
    :param with_onion_node: also run ``h7``, a second client tor (SocksPort + ControlPort) that hosts onion
        services: in the mail lab it is the receiving gateway's own tor.
    :param n_authorities: directory authorities (3: a majority must sign the consensus).
    :param n_relays: non-exit relays (3: enough for guard + middle + rendezvous paths).
    """

    workdir: Path
    with_onion_node: bool = True
    n_authorities: int = 3
    n_relays: int = 3
    nodes: list[TorNode] = field(default_factory=list)

    @property
    def empty_defaults(self) -> Path:
        """The empty file passed as ``--defaults-torrc`` so nothing from /etc/tor leaks in."""
        return self.workdir / "empty-defaults-torrc"

    @property
    def client(self) -> TorNode:
        return self._node("client")

    @property
    def onion_node(self) -> TorNode:
        return self._node("onion")

    @property
    def client_socks_port(self) -> int:
        """The client's SocksPort on 127.0.0.1 (with ExtendedErrors: 0xf0-0xf7 reply codes)."""
        return self.client.socks_port

    @property
    def client_control_port(self) -> int:
        return self.client.control_port

    @property
    def hs_control_port(self) -> int:
        """ControlPort of the onion-service node (the receiving gateway's setup points here)."""
        return self.onion_node.control_port

    def _node(self, kind: str) -> TorNode:
        for node in self.nodes:
            if node.kind == kind:
                return node
        raise AssertionError(f"the network has no {kind} node (setup() not run, or with_onion_node=False)")

    # --- setup -----------------------------------------------------------------------------------------

    def setup(self) -> "TorNetwork":
        """Choose free ports, make the authority and relay keys, and write every node's torrc.

        Runs ``tor-gencert`` once per authority and ``tor --list-fingerprint`` once per relay or
        authority (about 3 s in all).

        :returns: self.
        :raises AssertionError: if tor-gencert or tor fails (with its stderr).
        """
        self.empty_defaults.write_text("")
        ports = _distinct_free_ports(3 * (self.n_authorities + self.n_relays) + 4)
        specs = [("authority", f"a{i}") for i in range(self.n_authorities)]
        specs += [("relay", f"r{i}") for i in range(self.n_authorities, self.n_authorities + self.n_relays)]
        specs.append(("client", f"c{len(specs)}"))
        if self.with_onion_node:
            specs.append(("onion", f"h{len(specs)}"))
        self.nodes = []
        for kind, nick in specs:
            data_dir = self.workdir / nick
            (data_dir / "keys").mkdir(parents=True, exist_ok=True)
            data_dir.chmod(0o700)
            node = TorNode(nick, kind, data_dir, control_port=ports.pop())
            if node.is_relay:
                node.or_port, node.dir_port = ports.pop(), ports.pop()
            if kind in ("client", "onion"):
                node.socks_port = ports.pop()
            self.nodes.append(node)
        for node in self.nodes:
            if node.kind == "authority":
                node.v3ident = self._make_authority_key(node)
            if node.is_relay:
                node.fingerprint = self._relay_fingerprint(node)
        authorities = [self._dir_authority_line(n) for n in self.nodes if n.kind == "authority"]
        for node in self.nodes:
            node.torrc.write_text(self._torrc(node) + "\n".join(authorities) + "\n")
        return self

    def _make_authority_key(self, node: TorNode) -> str:
        """tor-gencert(1): identity + signing key + certificate; returns the v3 identity fingerprint."""
        keys = node.data_dir / "keys"
        _run(["tor-gencert", "--create-identity-key", "-m", "12", "-a", f"127.0.0.1:{node.dir_port}",
              "-i", str(keys / "authority_identity_key"), "-s", str(keys / "authority_signing_key"),
              "-c", str(keys / "authority_certificate"), "--passphrase-fd", "0"], stdin="\n")
        certificate = (keys / "authority_certificate").read_text()
        match = re.search(r"^fingerprint (\S+)", certificate, re.M)
        assert match, f"no fingerprint line in {keys / 'authority_certificate'}"
        return match.group(1)

    def _relay_fingerprint(self, node: TorNode) -> str:
        """Create the relay identity key and return its RSA fingerprint (40 hex digits, no spaces).

        ``tor --list-fingerprint`` exits right after printing ``<nick> XXXX XXXX ...``; the dummy
        loopback DirAuthority keeps it from even considering the public authorities.
        """
        out = _run(["tor", "--list-fingerprint", "--quiet", "--defaults-torrc", str(self.empty_defaults),
                    "-f", str(self.empty_defaults), "--DataDirectory", str(node.data_dir), "--ORPort", "1",
                    "--Nickname", node.nick, "--DirAuthority",
                    "x orport=1 127.0.0.1:1 ffffffffffffffffffffffffffffffffffffffff"])
        fingerprint = "".join(out.strip().splitlines()[-1].split()[1:])
        assert re.fullmatch(r"[0-9A-F]{40}", fingerprint), f"unexpected --list-fingerprint output: {out!r}"
        return fingerprint

    @staticmethod
    def _dir_authority_line(node: TorNode) -> str:
        return (f"DirAuthority {node.nick} orport={node.or_port} no-v2 v3ident={node.v3ident} "
                f"127.0.0.1:{node.dir_port} {node.fingerprint}")

    @staticmethod
    def _torrc(node: TorNode) -> str:
        values = {"data_dir": node.data_dir, "nick": node.nick, "control_port": node.control_port,
                  "or_port": node.or_port, "dir_port": node.dir_port, "socks_port": node.socks_port}
        text = COMMON_TORRC
        if node.is_relay:
            text += RELAY_TORRC
        if node.kind == "authority":
            text += AUTHORITY_TORRC
        if node.kind == "client":
            text += CLIENT_TORRC
        if node.kind == "onion":
            text += ONION_NODE_TORRC
        return text.format(**values)

    # --- processes -------------------------------------------------------------------------------------

    def start(self, attempts: int = START_ATTEMPTS) -> "TorNetwork":
        """Start every node (``tor -f torrc --defaults-torrc <empty>``), each in its own session, and wait
        until each has opened its listeners (well under a second).

        The ports were free at :meth:`setup`, but other test sessions on the machine may take one before
        tor binds it. A node that logs ``Could not bind to`` makes the whole network stop, pick new ports
        (and keys) with :meth:`setup`, and start again, at most *attempts* times.

        :param attempts: how many port choices to try.
        :returns: self (does not wait for the bootstrap: call :meth:`wait_bootstrapped`).
        :raises AssertionError: when a node exits at startup for another reason, or every attempt hit a
            port clash (with :meth:`diagnostics`).
        """
        assert self.nodes, "call setup() first"
        for attempt in range(1, attempts + 1):
            for node in self.nodes:
                self.start_node(node)
            exited = self._wait_started(STARTUP_TIMEOUT_SECONDS)
            if not exited:
                return self
            clash = all(BIND_FAILURE in node.stdout_since_start() for node in exited)
            report = self.diagnostics()
            self.stop()
            if not clash or attempt == attempts:
                raise AssertionError(f"tor node(s) {[n.nick for n in exited]} exited at startup "
                                     f"(attempt {attempt} of {attempts})\n{report}")
            for node in self.nodes:
                shutil.rmtree(node.data_dir, ignore_errors=True)
            self.setup()
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait_started(self, timeout_seconds: float) -> list[TorNode]:
        """Wait until every node logged ``Bootstrapped 0%`` or exited; return the exited ones."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            exited = [n for n in self.nodes if not n.running()]
            pending = [n for n in self.nodes if n.running() and STARTED not in n.log_since_start()]
            if not pending:
                return exited
            if time.monotonic() > deadline:
                raise AssertionError(f"tor node(s) {[n.nick for n in pending]} did not start within "
                                     f"{timeout_seconds} s\n{self.diagnostics()}")
            time.sleep(0.1)

    def start_node(self, node: TorNode) -> None:
        """Start one node; its bootstrap is then judged only from log lines written after this call."""
        assert not node.running(), f"{node.nick} is already running"
        node.stopped_on_purpose = False
        node.log_offset = _size(node.notice_log)
        node.stdout_offset = _size(node.stdout_log)
        with open(node.stdout_log, "ab") as out:
            node.proc = subprocess.Popen(["tor", "-f", str(node.torrc), "--defaults-torrc", str(self.empty_defaults)],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def stop_node(self, node: TorNode) -> None:
        """SIGTERM one node and wait for it to exit (SIGKILL after 10 s); a stopped node is left alone."""
        node.stopped_on_purpose = True
        proc = node.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop_client(self) -> None:
        """Stop the client tor: its SocksPort closes, so nothing can reach an onion until :meth:`start_client`."""
        self.stop_node(self.client)

    def start_client(self) -> None:
        """Start the client again (same DataDirectory, so it reuses its cached consensus)."""
        self.start_node(self.client)

    def stop(self) -> None:
        """Stop every node (idempotent; safe to call from a finalizer after a failed setup)."""
        for node in self.nodes:
            if node.running():
                assert node.proc is not None
                node.stopped_on_purpose = True
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            self.stop_node(node)

    def wait_bootstrapped(self, timeout_seconds: float = 120.0, nodes: list[TorNode] | None = None) -> float:
        """Wait until the client (and the onion node) log ``Bootstrapped 100%`` since their last start.

        :param timeout_seconds: how long to poll (the network needs 10-40 s from launch).
        :param nodes: the nodes to wait for; default the client and, if present, the onion node.
        :returns: the seconds waited.
        :raises AssertionError: on timeout or when any node exited, with :meth:`diagnostics`.
        """
        targets = nodes or [n for n in self.nodes if n.kind in ("client", "onion")]
        started = time.monotonic()
        deadline = started + timeout_seconds
        while True:
            dead = [n.nick for n in self.nodes
                    if n.proc is not None and n.proc.poll() is not None and not n.stopped_on_purpose]
            if dead:
                raise AssertionError(f"tor node(s) {dead} exited during bootstrap\n{self.diagnostics()}")
            if all(n.bootstrapped() for n in targets):
                return time.monotonic() - started
            if time.monotonic() > deadline:
                waiting = [n.nick for n in targets if not n.bootstrapped()]
                raise AssertionError(f"private Tor network: {waiting} not bootstrapped after {timeout_seconds} s\n"
                                     f"{self.diagnostics()}")
            time.sleep(0.25)

    def diagnostics(self, lines: int = 15) -> str:
        """Excerpts for a failure message: each node's state and the end of its notice log.

        :param lines: notice-log lines per node.
        :returns: multi-line text.
        """
        parts = []
        for node in self.nodes:
            state = "running" if node.running() else (
                f"exited {node.proc.returncode}" if node.proc is not None else "not started")
            parts.append(f"--- tor {node.nick} ({node.kind}, control {node.control_port}, {state}) "
                         f"{node.notice_log}")
            parts.append(tail(node.notice_log, lines))
            if node.proc is not None and not node.running():
                parts.append(f"--- {node.nick} stdout/stderr")
                parts.append("\n".join(node.stdout_since_start().splitlines()[-lines:]))
        return "\n".join(parts)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _distinct_free_ports(count: int) -> list[int]:
    """*count* different free TCP ports on 127.0.0.1."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _run(argv: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed (exit {done.returncode}):\n{done.stderr}{done.stdout}")
    return done.stdout


def socks_connect(socks_port: int, host: str, port: int = 25, isolation: str | None = None,
                  timeout_seconds: float = 30.0) -> socket.socket:
    """A stream to *host*:*port* through a SOCKS5 proxy on 127.0.0.1 (RFC 1928); the caller closes it.

    :param isolation: ``None``: no authentication; else sent as SOCKS username and password (RFC 1929),
        which Tor uses to isolate streams (``IsolateSOCKSAuth``, on by default): different credentials
        get different circuits, the same credentials share one.
    :returns: the connected socket (the server's greeting is still unread).
    :raises ConnectionError: with the SOCKS reply code (tor ExtendedErrors: 0xf0 descriptor not found,
        0xf6 bad onion address, ...) when the proxy refuses.
    :raises OSError: when the proxy cannot be reached or the connection fails.
    """
    sock = socket.create_connection(("127.0.0.1", socks_port), timeout=timeout_seconds)
    try:
        method = b"\x00" if isolation is None else b"\x02"
        sock.sendall(b"\x05\x01" + method)
        if sock.recv(2) != b"\x05" + method:
            raise ConnectionError(f"SOCKS5 proxy refused method {method.hex()}")
        if isolation is not None:
            user = isolation.encode()
            sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(user)]) + user)
            if sock.recv(2) != b"\x01\x00":
                raise ConnectionError("SOCKS5 proxy refused the credentials")
        name = host.encode("ascii")
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
        reply = sock.recv(10)
        if len(reply) < 2 or reply[1] != 0:
            raise ConnectionError(f"SOCKS5 reply {reply[1:2].hex() or 'none'} for {host}:{port}")
        return sock
    except BaseException:
        sock.close()
        raise


def smtp_banner_via_socks(socks_port: int, host: str, port: int = 25, timeout_seconds: float = 30.0) -> str:
    """Connect to *host*:*port* through a SOCKS5 proxy on 127.0.0.1 (:func:`socks_connect`) and read the banner.

    :returns: the first line the server sends (``"220 ..."``).
    :raises ConnectionError: when the proxy refuses (its reply code in the message).
    :raises OSError: when the proxy cannot be reached or the connection fails.
    """
    with socks_connect(socks_port, host, port, timeout_seconds=timeout_seconds) as sock:
        banner = sock.makefile("rb").readline().decode(errors="replace").strip()
        with contextlib.suppress(OSError):
            sock.sendall(b"QUIT\r\n")
        return banner

