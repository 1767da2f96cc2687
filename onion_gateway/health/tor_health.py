"""Tor's sending side, through a control connection the caller already opened.

Every function takes an authenticated stem ``Controller`` (or an entered
:class:`onion_gateway.tor.TorControl`) and only asks (control-spec.txt)::

    GETINFO status/bootstrap-phase       §4.1.10  NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"
    GETINFO status/circuit-established   §3.9     1 when Tor has built a circuit and can build more
    GETINFO network-liveness             §3.9     up / down
    HSFETCH <56 chars>                   §3.26    250 OK, then HS_DESC events (§4.1.25):
      650 HS_DESC REQUESTED <id> NO_AUTH $<HSDir>~<nick> <blinded id>
      650 HS_DESC RECEIVED <id> NO_AUTH $<HSDir>~<nick> <blinded id>
      650 HS_DESC FAILED <id> NO_AUTH $<HSDir>~<nick> <blinded id> REASON=NOT_FOUND
    GETINFO net/listeners/socks          §3.9     "127.0.0.1:9050" -- then a SOCKS5 CONNECT (RFC 1928)
                                                  to <onion>:<port> through it, closed at once

A descriptor stays on the HSDirs for hours after its service stopped, so a fetched descriptor alone
does not prove the partner is up: :func:`probe_onions` opens a connection through our SocksPort, which
succeeds only when the service's Tor answered the rendezvous and connected to its target port.

Nothing changes Tor's configuration or state beyond the descriptor cache an HSFETCH fills (as a
delivery to that onion would). Together the answers separate "our Tor is broken" (no bootstrap, no
circuits) from "their onion service is down" (our circuits fine, their descriptor cannot be fetched):
with no circuits Postfix's deferral says "Connection refused", which reads like the partner's fault.

This module does not import stem (tor.py is the only one that does) except for its exception types,
which it translates into :class:`~onion_gateway.errors.TorError`.
"""

from __future__ import annotations

import enum
import logging
import queue
import re
import time
from dataclasses import dataclass
from typing import Any

from stem import ControllerError, SocketError   # exception types only

from onion_gateway.errors import TorError
from onion_gateway.onion import OnionCheck, check_onion

log = logging.getLogger(__name__)

DEFAULT_FETCH_TIMEOUT_SECONDS = 30.0
MAX_HSFETCH_PER_ONION = 8     # Tor spreads a descriptor over 2 x 3 HSDirs (hsdir_n_replicas, hsdir_spread_fetch)


def _controller(control: Any) -> Any:
    """The stem Controller behind *control* (a Controller, or an entered TorControl)."""
    if hasattr(control, "get_info") and hasattr(control, "msg"):
        return control
    return control.controller      # onion_gateway.tor.TorControl; raises TorError when not open


@dataclass(frozen=True, slots=True)
class TorSendingState:
    """Can this Tor carry mail to onions right now?

    :param bootstrap_progress: 0-100 (``PROGRESS=``).
    :param bootstrap_tag: Tor's phase tag (``done``, ``starting``, ``conn``...).
    :param bootstrap_summary: Tor's SUMMARY text.
    :param circuit_established: ``GETINFO status/circuit-established`` said 1.
    :param network_liveness: ``up``, ``down``, or ``""`` when Tor did not say.
    """

    bootstrap_progress: int
    bootstrap_tag: str
    bootstrap_summary: str
    circuit_established: bool
    network_liveness: str

    @property
    def can_send(self) -> bool:
        """Bootstrapped to 100 % and circuits established."""
        return self.bootstrap_progress >= 100 and self.circuit_established


def sending_state(control: Any) -> TorSendingState:
    """Ask Tor for its bootstrap phase, whether circuits are established, and network liveness.

    :param control: an authenticated stem Controller, or an entered TorControl.
    :returns: the :class:`TorSendingState`.
    :raises TorError: if the connection fails or Tor refuses GETINFO.
    """
    controller = _controller(control)
    try:
        phase = controller.get_info("status/bootstrap-phase")
        established = controller.get_info("status/circuit-established")
        liveness = controller.get_info("network-liveness", "")
    except (ControllerError, SocketError) as exc:
        raise TorError(f"GETINFO on Tor's control port failed: {exc}") from exc
    progress = re.search(r"\bPROGRESS=(\d+)", phase)
    tag = re.search(r"\bTAG=(\S+)", phase)
    summary = re.search(r'\bSUMMARY="([^"]*)"', phase)
    return TorSendingState(int(progress.group(1)) if progress else 0, tag.group(1) if tag else "",
                           summary.group(1) if summary else phase, established.strip() == "1",
                           liveness.strip())


class FetchOutcome(enum.Enum):
    """What one HSFETCH came to within its bounded wait."""

    RECEIVED = "received"      # an HSDir returned the descriptor: the service is published
    FAILED = "failed"          # HSDirs answered, none had it (or Tor had no HSDir left to ask)
    NO_ANSWER = "no_answer"    # nothing came back within the wait (typical when our Tor cannot build circuits)
    REFUSED = "refused"        # Tor refused the HSFETCH command (e.g. not a valid v3 address)
    UNREACHABLE = "unreachable"  # fetched, but a connection through our SocksPort failed (service down)


@dataclass(frozen=True, slots=True)
class DescriptorFetch:
    """One partner onion's descriptor fetch.

    :param onion: the address asked about (``<56 chars>.onion``).
    :param outcome: the :class:`FetchOutcome`.
    :param detail: one line: the HSDir that answered, the failure reasons, or Tor's refusal.
    :param elapsed_seconds: how long it took (seconds).
    """

    onion: str
    outcome: FetchOutcome
    detail: str
    elapsed_seconds: float

    @property
    def fetched(self) -> bool:
        """True when the descriptor came back (and, if probed, the service answered)."""
        return self.outcome is FetchOutcome.RECEIVED


def fetch_descriptors(control: Any, onions: list[str] | tuple[str, ...],
                      timeout_seconds: float = DEFAULT_FETCH_TIMEOUT_SECONDS) -> dict[str, DescriptorFetch]:
    """Fetch several onions' descriptors at once, waiting at most *timeout_seconds* in total.

    An ``HSFETCH`` without ``SERVER=`` makes Tor ask one of the responsible HSDirs it has not asked in
    its requery period (15 minutes), announced by ``HS_DESC REQUESTED``. When that HSDir answers
    ``FAILED`` (``NOT_FOUND``), the fetch is sent again, so that the next HSDir is asked -- as Tor's
    own client does before it gives up on an onion -- until one answers ``RECEIVED``, Tor has no HSDir
    left (``FAILED ... REASON=QUERY_NO_HSDIR``), :data:`MAX_HSFETCH_PER_ONION` fetches were sent, or
    the wait ends. An onion with failures but no final answer is ``FAILED``; one with no event at all
    ``NO_ANSWER`` (what a Tor without circuits gives).

    :param control: an authenticated stem Controller, or an entered TorControl.
    :param onions: ``<56 chars>.onion`` addresses (duplicates asked once).
    :param timeout_seconds: the bounded wait for all of them together (seconds).
    :returns: ``{onion: DescriptorFetch}`` for every onion given, keyed ``<56 chars>.onion`` in lower case.
    :raises TorError: if the control connection fails.
    """
    controller = _controller(control)
    started = time.monotonic()
    wanted = {_service_id(o): _service_id(o) + ".onion" for o in onions}
    results: dict[str, DescriptorFetch] = {}
    failures: dict[str, list[str]] = {sid: [] for sid in wanted}
    sent: dict[str, int] = {sid: 0 for sid in wanted}
    events: queue.Queue = queue.Queue()

    def listener(event: Any) -> None:
        if getattr(event, "address", None) in wanted:
            events.put(event)

    def hsfetch(sid: str) -> None:
        try:
            reply = controller.msg(f"HSFETCH {sid}")
        except (ControllerError, SocketError) as exc:
            raise TorError(f"HSFETCH failed: {exc}") from exc
        sent[sid] += 1
        if not reply.is_ok():
            results[wanted[sid]] = DescriptorFetch(wanted[sid], FetchOutcome.REFUSED, f"Tor refused HSFETCH: {reply}",
                                                   time.monotonic() - started)

    try:
        controller.add_event_listener(listener, "HS_DESC")
    except (ControllerError, SocketError) as exc:
        raise TorError(f"SETEVENTS HS_DESC failed: {exc}") from exc
    try:
        for sid, onion in wanted.items():
            if check_onion(onion) is not OnionCheck.VALID:
                results[onion] = DescriptorFetch(onion, FetchOutcome.REFUSED, f"not a valid v3 onion address "
                                                 f"({check_onion(onion).value})", 0.0)
            else:
                hsfetch(sid)
        deadline = started + timeout_seconds
        while len(results) < len(wanted) and (left := deadline - time.monotonic()) > 0:
            try:
                event = events.get(timeout=left)
            except queue.Empty:
                break
            sid, onion = event.address, wanted[event.address]
            if onion in results:
                continue
            action = str(event.action)
            if action == "RECEIVED":
                results[onion] = DescriptorFetch(onion, FetchOutcome.RECEIVED,
                                                 f"descriptor fetched from HSDir {event.directory}",
                                                 time.monotonic() - started)
            elif action == "FAILED":
                reason = str(event.reason or "failed")
                if reason.upper().endswith("QUERY_NO_HSDIR"):
                    failures[sid].append("no HSDir left to ask")
                    results[onion] = _failed(onion, failures[sid], time.monotonic() - started)
                    continue
                failures[sid].append(f"{event.directory or '-'}: {reason}")
                if sent[sid] >= MAX_HSFETCH_PER_ONION:
                    results[onion] = _failed(onion, failures[sid], time.monotonic() - started)
                else:
                    hsfetch(sid)         # ask the next HSDir
        for sid, onion in wanted.items():
            if onion not in results:
                elapsed = time.monotonic() - started
                results[onion] = (_failed(onion, failures[sid], elapsed) if failures[sid] else
                                  DescriptorFetch(onion, FetchOutcome.NO_ANSWER,
                                                  f"no answer within {timeout_seconds:g} s", elapsed))
    finally:
        try:
            controller.remove_event_listener(listener)
        except (ControllerError, SocketError) as exc:
            log.debug("could not remove the HS_DESC listener: %s", exc)
    return results


def _failed(onion: str, failures: list[str], elapsed: float) -> DescriptorFetch:
    shown = "; ".join(failures[-4:])
    return DescriptorFetch(onion, FetchOutcome.FAILED, f"no HSDir returned the descriptor ({shown})", elapsed)


def fetch_descriptor(control: Any, onion: str, timeout_seconds: float = DEFAULT_FETCH_TIMEOUT_SECONDS) -> DescriptorFetch:
    """Fetch one onion's descriptor with a bounded wait; see :func:`fetch_descriptors`.

    :raises TorError: if the control connection fails.
    """
    return fetch_descriptors(control, [onion], timeout_seconds)[_service_id(onion) + ".onion"]


def _service_id(onion: str) -> str:
    return onion.strip().lower().rstrip(".").removesuffix(".onion")


# --- is the service behind a fetched descriptor up? ---------------------------------------------------------

#: SOCKS5 reply codes (RFC 1928 §6) and Tor's extended ones (tor's socks-extensions.txt, ExtendedErrors)
SOCKS_REPLIES = {
    0x01: "general failure", 0x02: "not allowed", 0x03: "network unreachable", 0x04: "host unreachable",
    0x05: "connection refused", 0x06: "TTL expired (timed out)", 0x07: "command not supported",
    0x08: "address type not supported", 0xF0: "onion service descriptor cannot be found",
    0xF1: "onion service descriptor is invalid", 0xF2: "onion service introduction failed",
    0xF3: "onion service rendezvous failed", 0xF4: "onion service client authorization missing",
    0xF5: "onion service client authorization wrong", 0xF6: "onion service address is invalid",
    0xF7: "onion service introduction timed out",
}


def socks_listener(control: Any) -> tuple[str, int] | None:
    """Our Tor's first SocksPort (``GETINFO net/listeners/socks``), or ``None`` when it has none.

    :raises TorError: if the connection fails.
    """
    controller = _controller(control)
    try:
        listeners = controller.get_info("net/listeners/socks", "")
    except (ControllerError, SocketError) as exc:
        raise TorError(f"GETINFO net/listeners/socks failed: {exc}") from exc
    for item in listeners.split():
        host, _, port = item.strip('"').rpartition(":")
        if port.isdigit() and host and not host.startswith("unix"):
            return host.strip("[]"), int(port)
    return None


def socks_connect(socks: tuple[str, int], host: str, port: int, timeout_seconds: float) -> str | None:
    """Open a connection to *host*:*port* through the SOCKS5 proxy *socks* (RFC 1928, no auth), then close it.

    Wire: ``05 01 00`` -> ``05 00``; ``05 01 00 03 <len> <host> <port>`` -> ``05 <REP> 00 ...``.
    Nothing is sent to the far end: Tor replies ``REP=00`` once the onion service connected the stream.

    :param socks: ``(ip, port)`` of the proxy.
    :param host: the destination name (``<56 chars>.onion``).
    :param port: the destination port.
    :param timeout_seconds: the whole budget (seconds).
    :returns: ``None`` when the connection succeeded, else one line saying why not.
    """
    import socket
    import struct

    deadline = time.monotonic() + timeout_seconds
    try:
        with socket.create_connection(socks, timeout=timeout_seconds) as sock:
            sock.sendall(b"\x05\x01\x00")
            if sock.recv(2) != b"\x05\x00":
                return f"the SocksPort {socks[0]}:{socks[1]} refused SOCKS5 without authentication"
            name = host.encode("ascii")
            sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            reply = sock.recv(10)
    except (TimeoutError, socket.timeout):
        return f"no answer within {timeout_seconds:g} s"
    except OSError as exc:
        return f"SocksPort {socks[0]}:{socks[1]}: {exc.strerror or exc}"
    if len(reply) < 2:
        return "the SocksPort closed the connection without a reply"
    if reply[1] != 0:
        return f"SOCKS reply 0x{reply[1]:02x}: {SOCKS_REPLIES.get(reply[1], 'unknown')}"
    return None


def probe_onions(control: Any, fetches: dict[str, DescriptorFetch], port_of: Any = None,
                 timeout_seconds: float = DEFAULT_FETCH_TIMEOUT_SECONDS) -> dict[str, DescriptorFetch]:
    """For each fetched descriptor, connect to the onion through our SocksPort (all at once, bounded).

    :param control: an authenticated stem Controller, or an entered TorControl (for the SocksPort).
    :param fetches: the results of :func:`fetch_descriptors`.
    :param port_of: ``onion -> port`` the route names (default 25 for all).
    :param timeout_seconds: the bounded wait for all connections together (seconds).
    :returns: *fetches* with each probed ``RECEIVED`` either kept (its detail saying the port answers) or
        turned into ``UNREACHABLE`` (why the connection failed). Unchanged when Tor has no SocksPort.
    :raises TorError: if the control connection fails.
    """
    import concurrent.futures

    wanted = [f for f in fetches.values() if f.outcome is FetchOutcome.RECEIVED]
    socks = socks_listener(control) if wanted else None
    if socks is None:
        return dict(fetches)
    ports = {f.onion: (port_of(f.onion) if port_of else 25) for f in wanted}
    started = time.monotonic()
    results = dict(fetches)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(wanted))) as pool:
        futures = {f.onion: pool.submit(socks_connect, socks, f.onion, ports[f.onion], timeout_seconds)
                   for f in wanted}
        for fetch in wanted:
            failure = futures[fetch.onion].result()
            elapsed = fetch.elapsed_seconds + time.monotonic() - started
            port = ports[fetch.onion]
            if failure is None:
                results[fetch.onion] = DescriptorFetch(fetch.onion, FetchOutcome.RECEIVED,
                                                       f"{fetch.detail}; port {port} answers", elapsed)
            else:
                results[fetch.onion] = DescriptorFetch(fetch.onion, FetchOutcome.UNREACHABLE,
                                                       f"{fetch.detail}, but no connection to port {port}: "
                                                       f"{failure}", elapsed)
    return results
