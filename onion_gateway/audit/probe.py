"""Live relay probes against one listener, connecting the way Tor does. Never DATA.

Each probe is one envelope: ``MAIL FROM`` then one or two ``RCPT TO``, then ``RSET``. The session ends
with ``QUIT``. Postfix slows a client down after ``smtpd_soft_error_limit`` (10) errors and hangs up
after ``smtpd_hard_error_limit`` (20), so the runner opens a fresh connection every
:data:`ERRORS_PER_CONNECTION` rejected commands; each probe then takes milliseconds.

Reply classification (RFC 5321 §4.2, RFC 3463 enhanced codes, Postfix's "Relay access denied"):

=========================================  ===========================
reply to RCPT                              verdict
=========================================  ===========================
2xx                                        ACCEPTED (the server relays)
X.7.1 (5.7.1/4.7.1) or "Relay access denied"  DENIED
530 (authentication required)              AUTH_REQUIRED
anything else (e.g. 4.1.2 domain unknown)  INCONCLUSIVE
=========================================  ===========================

A permanent refusal of the *sender* (5xx on MAIL FROM) means that envelope can never relay:
SENDER_REFUSED, which counts as a denial. A temporary one is INCONCLUSIVE.

Wire example (a hardened listener)::

    -> MAIL FROM:<audit@example.com>
    <- 250 2.1.0 Ok
    -> RCPT TO:<relay-test@example.com>
    <- 554 5.7.1 <relay-test@example.com>: Relay access denied
    -> RSET
    <- 250 2.0.0 Ok
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass, field, replace

from onion_gateway.address import ListenAddress
from onion_gateway.errors import GreetingRefused, Unreachable
from onion_gateway.onion import onion_from_public_key

log = logging.getLogger(__name__)

ERRORS_PER_CONNECTION = 8
ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


class Verdict(enum.Enum):
    """What one probe's reply means."""

    ACCEPTED = "accepted"
    DENIED = "denied"
    AUTH_REQUIRED = "auth_required"
    SENDER_REFUSED = "sender_refused"
    INCONCLUSIVE = "inconclusive"
    SKIPPED = "skipped"

    @property
    def safe(self) -> bool:
        """The envelope could not be relayed."""
        return self in (Verdict.DENIED, Verdict.AUTH_REQUIRED, Verdict.SENDER_REFUSED)


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: code, enhanced status code (``"5.7.1"`` or ``""``) and text (lines joined)."""

    code: int
    enhanced: str
    text: str

    @classmethod
    def from_smtplib(cls, code: int, message: bytes | str) -> "Reply":
        """Build a :class:`Reply` from smtplib's ``(code, message)``, splitting off an RFC 3463 enhanced code."""
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        text = " ".join(text.split("\n"))
        match = ENHANCED.match(text)
        if match:
            return cls(code, match.group(0), text[match.end():].strip())
        return cls(code, "", text.strip())

    def __str__(self) -> str:
        return " ".join(str(p) for p in (self.code, self.enhanced, self.text) if p)


def classify_rcpt(reply: Reply) -> Verdict:
    """Classify the reply to a RCPT TO for a foreign recipient (see the module table).

    :param reply: the server's reply.
    :returns: ACCEPTED, DENIED, AUTH_REQUIRED or INCONCLUSIVE.
    """
    if 200 <= reply.code < 300:
        return Verdict.ACCEPTED
    if reply.code == 530 or reply.enhanced == "5.7.0" and "authenticat" in reply.text.lower():
        return Verdict.AUTH_REQUIRED
    if reply.code // 100 in (4, 5) and reply.enhanced in ("5.7.1", "4.7.1"):
        return Verdict.DENIED
    if reply.code // 100 in (4, 5) and "relay access denied" in reply.text.lower():
        return Verdict.DENIED
    return Verdict.INCONCLUSIVE


def classify_mail(reply: Reply) -> Verdict | None:
    """Classify the reply to MAIL FROM: ``None`` if accepted (go on to RCPT), else the probe's verdict."""
    if 200 <= reply.code < 300:
        return None
    if reply.code == 530:
        return Verdict.AUTH_REQUIRED
    if 500 <= reply.code < 600:
        return Verdict.SENDER_REFUSED
    return Verdict.INCONCLUSIVE


@dataclass(frozen=True)
class ProbeSpec:
    """One envelope to try.

    :param name: short identifier (``"percent_hack_literal"``).
    :param mail_from: the MAIL FROM argument, brackets included (``"<a@b>"``).
    :param rcpt_to: the RCPT TO arguments in order; the verdict is taken from the last one.
    :param xclient: XCLIENT attributes to send first (``"ADDR=192.0.2.1"``), or ``None``.
    :param proxy_source: on a PROXY listener, the client address to claim in the header (a fresh
        connection), or ``None`` for the context's header.
    """

    name: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    xclient: str | None = None
    proxy_source: str | None = None


@dataclass
class ProbeResult:
    """The outcome of one probe: the command that decided, its reply and the verdict."""

    spec: ProbeSpec
    verdict: Verdict
    stage: str = ""
    reply: Reply | None = None
    note: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """The probe as JSON-ready ``{name, mail_from, rcpt_to, xclient, proxy_source, stage, code, ...}``."""
        return {"name": self.spec.name, "mail_from": self.spec.mail_from, "rcpt_to": list(self.spec.rcpt_to),
                "xclient": self.spec.xclient, "proxy_source": self.spec.proxy_source, "stage": self.stage,
                "code": self.reply.code if self.reply else None,
                "enhanced_code": self.reply.enhanced if self.reply else None,
                "text": self.reply.text if self.reply else None,
                "verdict": self.verdict.value, "note": self.note, "seconds": round(self.seconds, 4)}


@dataclass(frozen=True)
class ProbeContext:
    """What the catalogue is built from.

    :param test_domain: the foreign domain D (``--test-domain``).
    :param control_recipient: an address the server must accept, or ``None`` if none is known.
    :param own_domain: a domain the server serves (from the control recipient).
    :param hostname: the server's myhostname.
    :param own_onion: the service's own onion address, if known.
    :param xclient_addr: address to claim with XCLIENT (one inside mynetworks if any).
    :param xclient_login: also send ``LOGIN=`` (SASL is enabled).
    :param sender_keys: sender addresses an access table may permit (``check_sender_access``): each
        is tried as MAIL FROM.
    :param proxy: the PROXY header every connection starts with, or ``None`` (plain listener).
    :param proxy_forge_addr: on a PROXY listener, a trusted (mynetworks) address to claim, or ``None``.
    :param client_cert: a TLS client certificate to present after STARTTLS, or ``None``.
    :param rounds: how many times to run the catalogue, each probe on a fresh connection when more than
        one (several services share the listener's port: the kernel spreads connections among them).
    :param starttls: start TLS on every connection even without a client certificate (the listener
        requires it, ``smtpd_tls_security_level = encrypt``: in the clear every command gets 530).
    """

    test_domain: str
    control_recipient: str | None
    own_domain: str | None
    hostname: str
    own_onion: str | None = None
    xclient_addr: str = "127.0.0.1"
    xclient_login: bool = False
    sender_keys: tuple[str, ...] = ()
    proxy: "ProxyHeader | None" = None
    proxy_forge_addr: str | None = None
    client_cert: "ClientCertificate | None" = None
    rounds: int = 1
    starttls: bool = False


def other_onion() -> str:
    """A well-formed v3 onion address that is not ours (fixed, derived from a hash)."""
    return onion_from_public_key(hashlib.sha256(b"onion-gateway audit other onion").digest())


def catalogue(ctx: ProbeContext) -> list[ProbeSpec]:
    """The full probe catalogue of issue 4, in order (senders first, then recipient tricks).

    :returns: specs; probes that need an unknown value (own onion, own domain) are left out.
    """
    d = ctx.test_domain
    r = "relay-test"
    third = f"<audit@{d}>"
    specs: list[ProbeSpec] = []

    def add(name, mail_from, *rcpt, xclient=None):
        specs.append(ProbeSpec(name, mail_from, tuple(rcpt), xclient))

    plain = f"<{r}@{d}>"
    # senders
    add("third_party_sender", third, plain)
    add("null_sender", "<>", plain)
    add("own_hostname_sender", f"<audit@{ctx.hostname}>", plain)
    if ctx.own_domain:
        add("own_domain_sender", f"<audit@{ctx.own_domain}>", plain)
        add("postmaster_sender", f"<postmaster@{ctx.own_domain}>", plain)
    if ctx.own_onion:
        add("own_onion_sender", f"<audit@{ctx.own_onion}>", plain)
    for i, sender in enumerate(ctx.sender_keys):
        add(f"table_sender_{i + 1}", f"<{sender}>", plain)
    add("unqualified_sender", "<audit>", plain)
    add("ip_literal_sender", "<audit@[127.0.0.1]>", plain)
    add("bang_path_sender", f"<{d}!audit>", plain)
    # recipients
    add("percent_hack_literal", third, f"<{r}%{d}@[127.0.0.1]>")
    add("percent_hack_hostname", third, f"<{r}%{d}@{ctx.hostname}>")
    if ctx.own_onion:
        add("percent_hack_own_onion", third, f"<{r}%{d}@{ctx.own_onion}>")
    add("percent_hack_unqualified", third, f"<{r}%{d}>")
    add("quoted_unqualified", third, f'<"{r}@{d}">')
    add("quoted_literal", third, f'<"{r}@{d}"@[127.0.0.1]>')
    add("double_at_literal", third, f"<{r}@{d}@[127.0.0.1]>")
    add("source_route", third, f"<@[127.0.0.1]:{r}@{d}>")
    add("bang_path", third, f"<{d}!{r}>")
    add("bang_path_literal", third, f"<{d}!{r}@[127.0.0.1]>")
    add("unbracketed", third, f"{r}@{d}")
    add("other_onion", third, f"<{r}@{other_onion()}>")
    add("foreign_literal", third, f"<{r}@[192.0.2.1]>")
    add("trailing_dot", third, f"<{r}@{d}.>")
    add("upper_case", third, f"<{r.upper()}@{d.upper()}>")
    if ctx.control_recipient:
        add("local_then_foreign", third, f"<{ctx.control_recipient}>", plain)
    return specs


def xclient_spec(ctx: ProbeContext) -> ProbeSpec:
    """The XCLIENT probe: claim a trusted address (and a login when SASL is on), then relay."""
    attrs = f"ADDR={ctx.xclient_addr} NAME=[UNAVAILABLE]"
    if ctx.xclient_login:
        attrs += " LOGIN=audit"
    return ProbeSpec("xclient", f"<audit@{ctx.test_domain}>", (f"<relay-test@{ctx.test_domain}>",), attrs)


#: The PROXY v1 header Tor sends with ``HiddenServiceExportCircuitID haproxy`` (tor(1)): the circuit id is
#: encoded in the low 32 bits of an address in fc00:dead:beef:4dad::/64. Postfix sees that address.
TOR_PROXY_NETWORK = "fc00:dead:beef:4dad::/64"
TOR_PROXY_SOURCE = "fc00:dead:beef:4dad::1"


@dataclass(frozen=True)
class ProxyHeader:
    """A PROXY protocol v1 header (haproxy proxy-protocol.txt §2.1), sent before the SMTP greeting.

    Wire example (what Tor sends for circuit 1 to virtual port 25)::

        PROXY TCP6 fc00:dead:beef:4dad::1 ::1 12345 25\r\n
    """

    source: str = TOR_PROXY_SOURCE
    destination: str = "::1"
    source_port: int = 12345
    destination_port: int = 25

    def encode(self) -> bytes:
        """The header line as bytes (``TCP6`` when the source is IPv6, else ``TCP4``)."""
        family = "TCP6" if ":" in self.source else "TCP4"
        destination = self.destination if (":" in self.destination) == (family == "TCP6") else \
            ("::1" if family == "TCP6" else "127.0.0.1")
        return (f"PROXY {family} {self.source} {destination} {self.source_port} "
                f"{self.destination_port}\r\n").encode("ascii")


@dataclass(frozen=True)
class ClientCertificate:
    """A TLS client certificate the probes present after STARTTLS (``--client-cert``/``--client-key``).

    :param cert_file: PEM certificate (chain) path.
    :param key_file: PEM private key path (``None``: the key is in *cert_file*).
    """

    cert_file: str
    key_file: str | None = None


def open_connection(address: ListenAddress, timeout_seconds: float, proxy: ProxyHeader | None = None) -> socket.socket:
    """Open one connection to a listener the way Tor does: the one place the audit connects.

    :param address: TCP (from 127.0.0.1 when the listener is on IPv4 loopback) or unix socket.
    :param timeout_seconds: connect and read timeout.
    :param proxy: a PROXY v1 header to send first (listeners with ``smtpd_upstream_proxy_protocol = haproxy``).
    :returns: the connected socket; the SMTP greeting is still unread.
    :raises OSError: if the connection fails.
    """
    if address.is_unix:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_seconds)
        try:
            sock.connect(address.path)
        except OSError:
            sock.close()
            raise
    else:
        source = ("127.0.0.1", 0) if _is_loopback(address.host) and ":" not in address.host else None
        sock = socket.create_connection((address.host, address.port), timeout_seconds, source_address=source)
    if proxy is not None:
        sock.sendall(proxy.encode())
    return sock


class ListenerSMTP(smtplib.SMTP):
    """smtplib over :func:`open_connection` (unix sockets and PROXY headers included).

    ``ListenerSMTP(address, ProxyHeader(), timeout=30)`` then ``connect(host, port)`` (the arguments
    only fill smtplib's bookkeeping: the socket always goes to *address*).

    :param address: the listener.
    :param proxy: the PROXY v1 header to send first, or ``None``.
    :param kwargs: :class:`smtplib.SMTP`'s keyword arguments (``local_hostname``, ``timeout``); no host.
    """

    def __init__(self, address: ListenAddress, proxy: ProxyHeader | None, **kwargs):
        self._address = address
        self._proxy = proxy
        super().__init__(**kwargs)

    def _get_socket(self, host, port, timeout):
        return open_connection(self._address, timeout, self._proxy)




@dataclass
class Session:
    """One SMTP connection to the listener; counts error replies so the runner can reconnect early.

    :param proxy: PROXY header to send first, or ``None``.
    :param client_cert: present this certificate after STARTTLS, or ``None``.
    :param starttls: STARTTLS without a certificate too (when offered); :attr:`tls` says it happened.
    """

    endpoint: ListenAddress
    helo: str
    timeout_seconds: float
    proxy: ProxyHeader | None = None
    client_cert: ClientCertificate | None = None
    starttls: bool = False
    client: smtplib.SMTP | None = None
    tls: bool = False
    errors: int = 0
    extensions: dict = field(default_factory=dict)
    client_address: str = ""

    def open(self) -> None:
        """Connect (with the PROXY header if any), EHLO, and STARTTLS with the client certificate if any
        (a listener that offers no STARTTLS is probed in the clear).

        :raises Unreachable: on a connection error or a greeting other than 220.
        """
        self.tls = False
        try:
            self.client = ListenerSMTP(self.endpoint, self.proxy, local_hostname=self.helo,
                                        timeout=self.timeout_seconds)
            code, banner = self.client.connect(self.endpoint.host or "localhost", self.endpoint.port or 0)
            if code != 220:
                raise GreetingRefused(f"greeting {code}", Reply.from_smtplib(code, banner))
            if self.proxy is not None:
                self.client_address = f"{self.proxy.source} (PROXY header)"
            elif self.endpoint.is_unix:
                self.client_address = "127.0.0.1 (unix socket)"
            else:
                self.client_address = self.client.sock.getsockname()[0]
            code, _ = self.client.ehlo()
            if code != 250:
                code, _ = self.client.helo()
            if self.client_cert is not None or self.starttls:
                if self.client.has_extn("starttls"):
                    self._starttls()
                    if self.client_cert is not None:
                        self.client_address += " (TLS client certificate)"
                else:                                 # no TLS here: nothing to present, probe in the clear
                    log.info("%s offers no STARTTLS: probing in the clear", self.endpoint)
            self.extensions = dict(self.client.esmtp_features)
        except Unreachable:
            self.close()
            raise
        except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
            self.close()
            raise Unreachable(f"{self.endpoint}: {exc}") from exc
        self.errors = 0

    def _starttls(self) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE          # the audit judges the server's policy, not its certificate
        if self.client_cert is not None:
            context.load_cert_chain(self.client_cert.cert_file, self.client_cert.key_file)
        self.client._host = self.endpoint.host or "localhost"      # smtplib's SNI name (set only by __init__)
        self.client.starttls(context=context)
        self.tls = True
        self.client.ehlo()

    def auth_after_starttls(self) -> str | None:
        """STARTTLS (no client certificate) on this open session and the AUTH mechanisms of the EHLO
        reply that follows (``smtpd_tls_auth_only = yes`` hides AUTH until then; RFC 3207 §4.2, RFC 4954 §3).

        :returns: the mechanisms (``"PLAIN LOGIN"``), or ``None`` when none are offered.
        :raises OSError, smtplib.SMTPException, ssl.SSLError: if STARTTLS fails.
        """
        self._starttls()
        auth = self.client.esmtp_features.get("auth")
        return auth.strip() if auth is not None else None

    def command(self, verb: str, args: str = "") -> Reply:
        """Send one command and read its reply (``docmd``: the argument goes out verbatim)."""
        if verb.upper() in ("DATA", "BDAT"):
            raise ValueError("the relay audit never sends message content")
        code, message = self.client.docmd(verb, args)
        reply = Reply.from_smtplib(code, message)
        if code >= 400:
            self.errors += 1
        log.debug("%s %s -> %s", verb, args, reply)
        return reply

    def close(self) -> None:
        """QUIT and close the SMTP session (errors while closing are ignored)."""
        if self.client is None:
            return
        try:
            self.client.quit()
        except (OSError, smtplib.SMTPException):
            try:
                self.client.close()
            except OSError:
                pass
        self.client = None


def expected_client_address(endpoint: ListenAddress) -> str:
    """The address Postfix will see Tor (and these probes) connect from.

    127.0.0.1 for unix sockets (smtpd_peer.c) and loopback targets; for another target the local
    address the kernel would pick to reach it (a UDP ``connect`` sends nothing).
    """
    if endpoint.is_unix or _is_loopback(endpoint.host):
        return "127.0.0.1"
    family = socket.AF_INET6 if ":" in (endpoint.host or "") else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((endpoint.host, endpoint.port))
            return sock.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def _is_loopback(host: str | None) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return (host or "").lower() == "localhost"


@dataclass
class ProbeRun:
    """Everything the live part produced.

    :param helo: the HELO name the probes finally used (a second one when the first was refused).
    :param auth_offered: the SASL mechanisms the first EHLO reply offered (``AUTH PLAIN LOGIN`` ->
        ``"PLAIN LOGIN"``; ``"PLAIN LOGIN (after STARTTLS)"`` when only the EHLO after STARTTLS offers
        them), or ``None`` when no AUTH is offered (RFC 4954 §3).
    """

    client_address: str
    control: ProbeResult | None
    probes: list[ProbeResult]
    xclient_offered: bool = False
    helo: str = ""
    auth_offered: str | None = None


def run_probes(endpoint: ListenAddress, ctx: ProbeContext, *, helo: str = "localhost",
               timeout_seconds: float = 30.0) -> ProbeRun:
    """Connect like Tor does and run the control and the catalogue.

    When the control recipient is refused because of the HELO name (``Helo command rejected``), the
    whole run is repeated once with :func:`second_helo`: a HELO check proves nothing about relaying.

    :param endpoint: the listener (TCP connections come from 127.0.0.1 when it is on loopback).
    :param ctx: what the catalogue is built from (PROXY header, client certificate, rounds included).
    :param helo: the EHLO name to send.
    :param timeout_seconds: per-command socket timeout.
    :returns: the :class:`ProbeRun`.
    :raises Unreachable: if the first connection fails. A non-220 greeting is not raised: it comes
        back as a failed control with no probes (inconclusive).
    """
    run = _run(endpoint, ctx, helo, timeout_seconds)
    refused = run.control is not None and run.control.reply is not None and run.control.reply.code >= 400
    if refused and "helo command rejected" in run.control.reply.text.lower():
        log.info("%s refuses HELO %s; probing again with HELO %s", endpoint, helo, second_helo(ctx))
        run = _run(endpoint, ctx, second_helo(ctx), timeout_seconds)
    return run


def second_helo(ctx: ProbeContext) -> str:
    """The HELO name tried when the first is refused: a fully qualified name under the test domain."""
    return f"probe.{ctx.test_domain}"


def _run(endpoint: ListenAddress, ctx: ProbeContext, helo: str, timeout_seconds: float) -> ProbeRun:
    session = Session(endpoint, helo, timeout_seconds, ctx.proxy, ctx.client_cert, ctx.starttls)
    try:
        session.open()
    except GreetingRefused as exc:            # reachable, but refuses everyone: proves nothing
        spec = ProbeSpec("greeting", "", ())
        return ProbeRun(expected_client_address(endpoint),
                        ProbeResult(spec, Verdict.INCONCLUSIVE, "connect", exc.reply, "greeting refused"), [],
                        helo=helo)
    client_address = session.client_address
    xclient_offered = "xclient" in session.extensions
    auth = session.extensions.get("auth")
    auth_offered = auth.strip() if auth is not None else None
    if auth_offered is not None and session.tls:
        auth_offered += " (after STARTTLS)"
    if auth_offered is None and not session.tls and "starttls" in session.extensions:
        auth_offered = _auth_after_starttls(endpoint, ctx, helo, timeout_seconds)
    control = None
    try:
        if ctx.control_recipient:
            control = _run_one(session, ProbeSpec("control", f"<audit@{ctx.test_domain}>",
                                                  (f"<{ctx.control_recipient}>",)))
        results = []
        lost = ""
        specs = catalogue(ctx) + [xclient_spec(ctx)] + proxy_specs(ctx)
        for round_ in range(max(1, ctx.rounds)):
            for spec in specs:
                if round_:
                    spec = replace(spec, name=f"{spec.name}#{round_ + 1}")
                if spec.xclient and not xclient_offered:
                    results.append(ProbeResult(spec, Verdict.SKIPPED, note="XCLIENT not offered in EHLO"))
                    continue
                fresh = spec.xclient or spec.proxy_source or ctx.rounds > 1 or session.proxy is not ctx.proxy
                if not lost and (fresh or session.errors >= ERRORS_PER_CONNECTION or session.client is None):
                    session.close()
                    session.proxy = replace(ctx.proxy, source=spec.proxy_source) if spec.proxy_source \
                        else ctx.proxy
                    try:
                        session.open()
                    except Unreachable as exc:         # the server went away mid-run: the rest is unknown
                        lost = f"could not reconnect: {exc}"
                if lost:
                    results.append(ProbeResult(spec, Verdict.INCONCLUSIVE, "connection", note=lost))
                    continue
                results.append(_run_one(session, spec))
    finally:
        session.close()
    return ProbeRun(client_address, control, results, xclient_offered, helo, auth_offered)


def _auth_after_starttls(endpoint: ListenAddress, ctx: ProbeContext, helo: str, timeout_seconds: float) -> str | None:
    """AUTH offered after STARTTLS on a connection of its own, as ``"<mechanisms> (after STARTTLS)"``;
    ``None`` when none is offered or TLS fails (then nothing is known, and nothing is claimed)."""
    session = Session(endpoint, helo, timeout_seconds, ctx.proxy)
    try:
        session.open()
        auth = session.auth_after_starttls()
    except (Unreachable, OSError, smtplib.SMTPException, ssl.SSLError) as exc:
        log.info("%s: STARTTLS for the AUTH check failed: %s", endpoint, exc)
        return None
    finally:
        session.close()
    return f"{auth} (after STARTTLS)" if auth is not None else None


def proxy_specs(ctx: ProbeContext) -> list[ProbeSpec]:
    """On a PROXY-protocol listener: a probe whose PROXY header claims a trusted address (one in
    mynetworks), as any local process can; empty when there is no such address to claim."""
    if ctx.proxy is None or not ctx.proxy_forge_addr:
        return []
    return [ProbeSpec("proxy_forged_trusted", f"<audit@{ctx.test_domain}>",
                      (f"<relay-test@{ctx.test_domain}>",), proxy_source=ctx.proxy_forge_addr)]


def _run_one(session: Session, spec: ProbeSpec) -> ProbeResult:
    started = time.monotonic()
    try:
        result = _envelope(session, spec)
    except (OSError, smtplib.SMTPException) as exc:
        session.close()
        result = ProbeResult(spec, Verdict.INCONCLUSIVE, "connection", note=f"connection lost: {exc}")
    result.seconds = time.monotonic() - started
    return result


def _envelope(session: Session, spec: ProbeSpec) -> ProbeResult:
    if spec.xclient:
        reply = session.command("XCLIENT", spec.xclient)
        if reply.code != 220:
            return ProbeResult(spec, Verdict.DENIED if reply.code in (550, 554) or reply.code // 100 == 5
                               else Verdict.INCONCLUSIVE, "xclient", reply, "XCLIENT refused")
        code, _ = session.client.ehlo()
        if code != 250:
            return ProbeResult(spec, Verdict.INCONCLUSIVE, "ehlo", Reply(code, "", ""), "EHLO after XCLIENT failed")
    reply = session.command("MAIL", f"FROM:{spec.mail_from}")
    verdict = classify_mail(reply)
    if verdict is not None:
        session.command("RSET")
        return ProbeResult(spec, verdict, "mail", reply)
    for i, rcpt in enumerate(spec.rcpt_to):
        reply = session.command("RCPT", f"TO:{rcpt}")
        last = i == len(spec.rcpt_to) - 1
        if not last and reply.code // 100 != 2:
            session.command("RSET")
            return ProbeResult(spec, Verdict.INCONCLUSIVE, "rcpt", reply, "first (local) recipient refused")
    session.command("RSET")
    return ProbeResult(spec, classify_rcpt(reply), "rcpt", reply)
