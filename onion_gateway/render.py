"""Render setup's files from the Jinja2 templates in ``templates/`` (package ``onion_gateway.templates``).

One environment, ``StrictUndefined`` (a missing value is an error, never an empty string), no
autoescaping (these are config files, not HTML). Each template has a typed context, a frozen dataclass
below; :func:`render` takes one of them and returns text that starts with the "managed by" header
(after the ``#!`` line for scripts).

  ============================  ========================  ==========================================
  template                      context                   output
  ============================  ========================  ==========================================
  postfix/master.cf.j2          :class:`MasterCf`         master.cf entries, applied with postconf -M
  postfix/main.cf.j2            :class:`MainCf`           main.cf parameters, applied with postconf -e
  postfix/own-domains.regexp.j2 :class:`OwnDomains`       regexp_table(5) first in transport_maps
  bin/smtp_tor.j2               :class:`Wrapper`          the smtp_tor wrapper (POSIX sh)
  tor/torsocks.conf.j2          :class:`TorsocksConf`     torsocks.conf(5)
  tor/onion-gateway.torrc.j2    :class:`TorrcPiece`       HiddenServiceDir/Port + DoS options
  tor/include.j2                :class:`TorrcInclude`     the line added to the main torrc
  systemd/onion-gateway...j2    :class:`SystemdUnit`      systemd unit for ``onion-gateway serve``
  ============================  ========================  ==========================================
"""

from __future__ import annotations

import importlib.resources
import re
import shlex
from dataclasses import dataclass, fields

import jinja2

from onion_gateway.errors import ConfigError

MANAGED_BY = ("managed by onion-gateway: written by 'onion-gateway setup', "
              "undone by 'onion-gateway setup --rollback'; local edits are overwritten")
PACKAGED_BY = ("shipped by the onion-gateway Debian package; change it with 'systemctl edit' "
               "(a drop-in), not here: an upgrade replaces this file")


def _load(name: str) -> str:
    try:
        return importlib.resources.files("onion_gateway.templates").joinpath(name).read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        raise jinja2.TemplateNotFound(name) from None


def _shquote(value: object) -> str:
    return shlex.quote(str(value))


_ENV = jinja2.Environment(loader=jinja2.FunctionLoader(_load), undefined=jinja2.StrictUndefined,
                          autoescape=False, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
_ENV.filters["shquote"] = _shquote
_ENV.filters["regex_escape"] = lambda value: re.sub(r"([^A-Za-z0-9_-])", r"\\\1", str(value))
_ENV.globals["managed_by"] = MANAGED_BY


@dataclass(frozen=True, slots=True)
class MasterCf:
    """master.cf(5) entries: the smtptor transport and the hardened onion-facing smtpd listener.

    :param transport: the service name of the Tor transport (``smtptor``).
    :param command: the transport's command, relative to daemon_directory (``smtp_tor`` or ``../../../x``).
    :param tls_level: ``smtp_tls_security_level`` for the transport.
    :param listener: the listener's service name, ``IP:PORT``.
    :param relay_restrictions: ``smtpd_relay_restrictions`` of the listener, comma-separated, no spaces.
    :param recipient_restrictions: ``smtpd_recipient_restrictions`` of the listener, same form; empty =
        none (main.cf's list is never inherited).
    :param proxy_protocol: the listener reads Tor's PROXY header (``HiddenServiceExportCircuitID
        haproxy``): ``smtpd_upstream_proxy_protocol=haproxy``, ``inet_protocols=all`` and the per-circuit
        limits below are written.
    :param connection_count_limit: ``smtpd_client_connection_count_limit`` (per circuit; 0 = none).
    :param connection_rate_limit: ``smtpd_client_connection_rate_limit`` (per circuit and
        ``anvil_rate_time_unit``; 0 = none).
    :param inspection: ``(parameter, value)`` pairs of content inspection the port-25 smtpd sets in its
        own master.cf entry (``smtpd_milters``, ``content_filter``, ...), repeated on the listener.
    :param inspection_source: the service they were copied from (``smtp/inet``), for the comment.
    :param client_checks: ``(list name, value)`` pairs: main.cf's restriction lists minus their client-address
        checks (:func:`onion_gateway.setup.onionpath.listener_client_checks`); PROXY listener only.
    """

    transport: str
    command: str
    tls_level: str
    listener: str
    relay_restrictions: str = "reject_unauth_destination"
    recipient_restrictions: str = ""
    proxy_protocol: bool = False
    connection_count_limit: int = 0
    connection_rate_limit: int = 0
    inspection: tuple[tuple[str, str], ...] = ()
    inspection_source: str = ""
    client_checks: tuple[tuple[str, str], ...] = ()
    template = "postfix/master.cf.j2"


@dataclass(frozen=True, slots=True)
class MainCf:
    """main.cf(5) parameters.

    :param transport_maps: the full new value of ``transport_maps`` (ours first, the user's after).
    """

    transport_maps: str
    template = "postfix/main.cf.j2"


@dataclass(frozen=True, slots=True)
class Wrapper:
    """The ``smtp_tor`` wrapper: Postfix's smtp(8) run under torsocks.

    :param daemon_directory: Postfix's daemon_directory (where ``smtp`` lives).
    :param torsocks: the torsocks program.
    :param isolation: pass ``-i`` (a new Tor circuit per connection).
    :param torsocks_conf: a torsocks.conf to use, or ``""`` for the system one.
    """

    daemon_directory: str
    torsocks: str
    isolation: bool
    torsocks_conf: str
    template = "bin/smtp_tor.j2"


@dataclass(frozen=True, slots=True)
class TorsocksConf:
    """torsocks.conf(5) for a SOCKS port that is not the default.

    :param host: Tor's SocksPort address.
    :param port: Tor's SocksPort port.
    """

    host: str
    port: int
    template = "tor/torsocks.conf.j2"


@dataclass(frozen=True, slots=True)
class TorrcPiece:
    """The torrc fragment that makes Tor load the onion service at every start.

    :param hidden_service_dir: the service's directory (keys and ``hostname``).
    :param onion_port: the virtual port (25).
    :param target: where Tor forwards it, ``IP:PORT`` (the hardened listener).
    :param options: further ``(HiddenService option, value)`` lines for this service, in order
        (``HiddenServiceExportCircuitID haproxy``, the DoS defences; :func:`onion_gateway.tor.service_options`).
    :param metrics_port: ``IP:PORT`` on loopback for tor's ``MetricsPort`` (with a policy admitting only
        that address), or ``""`` for none.
    """

    hidden_service_dir: str
    onion_port: int
    target: str
    options: tuple[tuple[str, str], ...] = ()
    metrics_port: str = ""
    template = "tor/onion-gateway.torrc.j2"


@dataclass(frozen=True, slots=True)
class OwnDomains:
    """The regexp table that answers for the gateway's own domains before the daemon is asked.

    :param entries: ``(domain, result)`` pairs; result ``:`` keeps Postfix's default transport, any
        other result is what the user's own transport table answered for the domain at setup time.
    """

    entries: tuple[tuple[str, str], ...]
    template = "postfix/own-domains.regexp.j2"


@dataclass(frozen=True, slots=True)
class TorrcInclude:
    """The lines appended to the main torrc so that Tor reads the piece.

    :param piece: the torrc piece's path.
    """

    piece: str
    template = "tor/include.j2"


@dataclass(frozen=True, slots=True)
class SystemdUnit:
    """systemd.service(5) unit running ``onion-gateway serve`` as a dynamic, dedicated user.

    :param exec_start: the full ExecStart command line.
    :param socket: the name of its socket unit (:class:`SystemdSocket`), wanted and ordered before it.
    :param managed_by: the header comment: who wrote the file and how it is undone
        (:data:`MANAGED_BY` for setup's, :data:`PACKAGED_BY` for the Debian package's).
    """

    exec_start: str
    socket: str = "onion-gateway.socket"
    managed_by: str = MANAGED_BY
    template = "systemd/onion-gateway.service.j2"


@dataclass(frozen=True, slots=True)
class SystemdSocket:
    """systemd.socket(5) unit holding the daemon's listening sockets across restarts (sd_listen_fds(3)).

    :param listen_streams: one ListenStream per tcp_table/socketmap listener: ``127.0.0.1:10025``,
        ``[::1]:10025`` or a unix socket path.
    :param socket_mode: SocketMode of unix sockets (``"0660"``).
    :param socket_group: SocketGroup of unix sockets (``"postfix"``), or ``None``.
    :param service: the name of the service unit the sockets are passed to (:class:`SystemdUnit`).
    :param managed_by: the header comment, as :class:`SystemdUnit`'s.
    """

    listen_streams: tuple[str, ...]
    socket_mode: str = "0660"
    socket_group: str | None = None
    service: str = "onion-gateway.service"
    managed_by: str = MANAGED_BY
    template = "systemd/onion-gateway.socket.j2"


Context = MasterCf | MainCf | OwnDomains | Wrapper | TorsocksConf | TorrcPiece | TorrcInclude | SystemdUnit | SystemdSocket


def render(context: Context) -> str:
    """Render the template that belongs to *context*.

    :param context: one of the context dataclasses above; its fields are the template's variables.
    :returns: the rendered text, ending in a newline.
    :raises ConfigError: when the template is missing, broken or uses a value the context lacks.
    """
    values = {f.name: getattr(context, f.name) for f in fields(context)}
    try:
        return _ENV.get_template(context.template).render(**values)
    except jinja2.TemplateError as exc:
        raise ConfigError(f"template {context.template}: {exc}") from exc
