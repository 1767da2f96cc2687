"""End-to-end: the onion path setup writes (issue 14) on the private Tor network of tests/e2e/conftest.py.

Both gateways are built by ``onion-gateway setup`` with its defaults: rx's torrc piece exports the circuit
id (``HiddenServiceExportCircuitID haproxy``) with the DoS defences, rx's listener reads the PROXY header
with per-circuit limits, tx's smtptor runs without the connection cache. Separate Tor circuits are made
the way Tor isolates streams: a different SOCKS username/password (``IsolateSOCKSAuth``, on by default)
is a different circuit; the same credentials share one.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time

import pytest
import stem.control

from onion_gateway.address import ListenAddress
from onion_gateway.audit.probe import open_connection
from onion_gateway.setup.onionpath import SERVICE_OPTION_NAMES
from onion_gateway.setup.settings import SetupSettings
from onion_gateway.tor import TorControl, supported_options
from tests.e2e.conftest import FOREIGN_DOMAIN, ONION_SYSLOG_NAME, RX_DOMAIN, MailLab, og_command
from tests.support.tornet import socks_connect

pytestmark = pytest.mark.e2e

DELIVERY_TIMEOUT_SECONDS = 60
LOG_TIMEOUT_SECONDS = 15
BURST = 10
TOR_CIRCUIT_PREFIX = "fc00:dead:beef:4dad::"
CONNECT = re.compile(rf"{ONION_SYSLOG_NAME}/smtpd\[\d+\]: connect from \S*\[([0-9a-f:.]+)\]")


def read_reply(sock: socket.socket) -> str:
    """One SMTP reply (all its lines), or what came before the connection closed ("" for nothing)."""
    data = b""
    with contextlib.suppress(OSError):
        while not re.search(rb"(^|\n)\d{3} [^\n]*\n", data):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


def quit_and_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(b"QUIT\r\n")
        read_reply(sock)
    sock.close()


def new_connects(lab: MailLab, offset: int, count: int) -> list[str]:
    """Wait until rx's onion listener has logged *count* ``connect from`` lines past *offset*; their addresses."""
    deadline = time.monotonic() + LOG_TIMEOUT_SECONDS
    while True:
        found = CONNECT.findall(lab.rx.log_text()[offset:])
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"rx logged {found} after offset {offset}, expected {count} connects\n"
                                 f"{lab.diagnostics()}")
        time.sleep(0.2)


def circuit_address(lab: MailLab, circuit: str) -> str:
    """Open one SMTP session on *circuit*, quit, and return the client address rx's listener logged."""
    offset = len(lab.rx.log_text())
    sock = socks_connect(lab.tor.client_socks_port, lab.onion, isolation=circuit)
    try:
        assert read_reply(sock).startswith("220 "), f"no greeting on circuit {circuit}"
    finally:
        quit_and_close(sock)
    return new_connects(lab, offset, 1)[0]


def wait_delivered(lab: MailLab, tokens: list[str], timeout_seconds: float = DELIVERY_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not all(lab.mailbox_has(t) for t in tokens):
        if time.monotonic() > deadline:
            missing = [t for t in tokens if not lab.mailbox_has(t)]
            raise AssertionError(f"{len(missing)} of {len(tokens)} messages not delivered\n{lab.diagnostics()}")
        lab.flush_tx()
        time.sleep(1)


def test_mail_flows_and_onion_clients_are_logged_per_circuit(lab: MailLab) -> None:
    """A burst from tx arrives over the onion; rx's listener logs the client as an address in Tor's
    fc00:dead:beef:4dad::/64 (never 127.0.0.1), in the log and in the Received: header the receiver can
    filter on; tx's smtptor logged no trouble with scache (the connection cache is off for it)."""
    offset = len(lab.rx.log_text())
    sent = [lab.send(f"alice@{RX_DOMAIN}") for _ in range(BURST)]
    wait_delivered(lab, [token for _, token in sent])
    rx_log = lab.rx.log_text()[offset:]
    clients = re.findall(rf"{ONION_SYSLOG_NAME}/smtpd\[\d+\]: \w+: client=\S*\[([0-9a-f:.]+)\]", rx_log)
    assert len(clients) >= BURST and all(c.startswith(TOR_CIRCUIT_PREFIX) for c in clients), clients
    messages = [p.read_text(errors="replace") for p in (lab.rx.mailbox / "new").iterdir()]
    ours = [m for m in messages if sent[0][1] in m]
    assert ours and f"[IPv6:{TOR_CIRCUIT_PREFIX}" in ours[0].split("\n\n", 1)[0], ours[:1]
    tx_log = lab.tx.log_text()
    assert "scache" not in tx_log, [line for line in tx_log.splitlines() if "scache" in line][:3]
    overrides = lab.tx.postconf("-P", "smtptor/unix/smtp_connection_cache_on_demand").strip()
    assert overrides.endswith("= no"), overrides


def test_two_circuits_get_two_addresses(lab: MailLab) -> None:
    """Two circuits are two clients to Postfix; the same circuit keeps its address."""
    first = circuit_address(lab, "circuit-a")
    second = circuit_address(lab, "circuit-b")
    again = circuit_address(lab, "circuit-a")
    assert first.startswith(TOR_CIRCUIT_PREFIX) and second.startswith(TOR_CIRCUIT_PREFIX), (first, second)
    assert first != second and again == first, (first, second, again)


def test_connection_count_limit_acts_per_circuit(lab: MailLab) -> None:
    """With listener_connection_count_limit (30) sessions open on one circuit, the next connection on
    that circuit gets 421 from Postfix (Tor's stream cap, 64, is not reached, so the circuit survives),
    while a connection on another circuit is served."""
    limit = SetupSettings().listener_connection_count_limit
    held: list[socket.socket] = []
    try:
        for _ in range(limit):
            held.append(socks_connect(lab.tor.client_socks_port, lab.onion, isolation="circuit-flood"))
            assert read_reply(held[-1]).startswith("220 "), f"connection {len(held)} of {limit} not greeted"
        extra = socks_connect(lab.tor.client_socks_port, lab.onion, isolation="circuit-flood")
        try:
            reply = read_reply(extra)
        finally:
            extra.close()
        assert reply.startswith("421 ") and "too many connections" in reply.lower(), reply
        other = socks_connect(lab.tor.client_socks_port, lab.onion, isolation="circuit-other")
        try:
            assert read_reply(other).startswith("220 ")
        finally:
            quit_and_close(other)
        assert held[0].fileno() >= 0 and read_reply_after_noop(held[0]).startswith("250"), \
            "the circuit past the count limit was closed"
    finally:
        for sock in held:
            quit_and_close(sock)


def read_reply_after_noop(sock: socket.socket) -> str:
    sock.sendall(b"NOOP\r\n")
    return read_reply(sock)


def test_plain_loopback_connection_to_the_listener_is_refused(lab: MailLab) -> None:
    """A local client that does not send Tor's PROXY header gets no SMTP session: no greeting, only
    ``421 4.3.0 ... Server local error`` and the close, after Postfix's "unrecognized protocol header"
    warning; Postfix logs ``disconnect from localhost[127.0.0.1] commands=0/0``."""
    offset = len(lab.rx.log_text())
    with open_connection(ListenAddress.parse(lab.rx_gw.listener), timeout_seconds=20) as sock:
        sock.sendall(b"EHLO plain.lab.test\r\n")
        reply = read_reply(sock)
    assert reply.startswith("421 4.3.0 ") and "220" not in reply, reply
    deadline = time.monotonic() + LOG_TIMEOUT_SECONDS
    while "commands=0/0" not in (log := lab.rx.log_text()[offset:]):
        assert time.monotonic() < deadline, log
        time.sleep(0.2)
    onion = "\n".join(line for line in log.splitlines() if ONION_SYSLOG_NAME in line)
    assert "haproxy read: unrecognized protocol header" in onion, onion
    assert re.search(r"disconnect from \S*\[127\.0\.0\.1\] commands=0/0$", onion, re.M), onion


def test_tor_runs_the_onion_service_with_the_dos_defences(lab: MailLab) -> None:
    """rx's tor has every option setup writes (GETCONF), and its log says the PoW and INTRO2 DoS defences
    are on (tor logs that at info level when it configures the service: the test adds an info log to the
    running tor for a moment, which makes it configure the services again)."""
    node = lab.rx_gw.tor
    supported = supported_options(SERVICE_OPTION_NAMES)
    with TorControl(ListenAddress.parse(f"127.0.0.1:{node.control_port}")) as control:
        options = control.hidden_service_extra_options(lab.rx_gw.hidden_service_dir)
    assert options == {"HiddenServiceExportCircuitID": "haproxy", "HiddenServiceMaxStreams": "64",
                       "HiddenServiceMaxStreamsCloseCircuit": "1", "HiddenServiceEnableIntroDoSDefense": "1",
                       **({"HiddenServicePoWDefensesEnabled": "1"}
                          if "HiddenServicePoWDefensesEnabled" in supported else {})}, options
    if "HiddenServicePoWDefensesEnabled" not in supported:
        assert "does not support HiddenServicePoWDefensesEnabled" in lab.rx_gw.setup_output
    info_log = node.data_dir / "info-onion-path.log"
    controller = stem.control.Controller.from_port(port=node.control_port)
    try:
        controller.authenticate()
        controller.set_options([("Log", f"notice file {node.notice_log}"), ("Log", f"info file {info_log}")])
        deadline = time.monotonic() + LOG_TIMEOUT_SECONDS
        while "INTRO2 DoS defenses" not in (info_log.read_text() if info_log.exists() else ""):
            assert time.monotonic() < deadline, "tor logged nothing about the INTRO2 DoS defences"
            time.sleep(0.2)
    finally:
        controller.set_options([("Log", f"notice file {node.notice_log}")])
        controller.close()
    text = info_log.read_text()
    assert "Service INTRO2 DoS defenses rate set to" in text
    if "HiddenServicePoWDefensesEnabled" not in supported:
        pytest.xfail("this tor has no PoW defences (tor --list-torrc-options / --list-modules): setup left "
                     "HiddenServicePoWDefensesEnabled out and said so")
    assert "Service PoW defenses are enabled" in text


def test_relay_audit_speaks_proxy_to_the_listener(lab: MailLab) -> None:
    """audit-open-relay finds the PROXY listener through rx's torrc, sends Tor's PROXY header on every
    probe and passes (exit 0, SAFE); the listener skips no inspection of the lab's port-25 smtpd."""
    done = og_command("audit-open-relay", "--torrc", str(lab.rx_gw.tor.torrc), "--test-domain", FOREIGN_DOMAIN,
                      "--postfix-config-dir", str(lab.rx.config_dir), "--json", timeout_seconds=60)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)["reports"][0]
    assert report["outcome"] == "safe" and "PROXY header" in report["client_address"], report
    assert not [f for f in report["findings"] if f["check"] == "inspection_parity"], report["findings"]
