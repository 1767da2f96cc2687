"""The onion path setup writes: the torrc options of the onion service and what the listener copies.

- :func:`service_options`: the ``HiddenService*`` lines after ``HiddenServicePort`` (per-circuit identity,
  stream cap, DoS defences), limited to what the installed tor accepts (``tor --list-torrc-options``).
- :func:`torrc_piece`: the :class:`~onion_gateway.render.TorrcPiece` context, the one place it is built.
- :func:`listener_inspection`: the content inspection the port-25 smtpd sets in its own master.cf entry,
  repeated on the onion listener so that onion mail is filtered like the rest.
- :func:`listener_client_checks`: main.cf's restriction lists the listener inherits, minus the checks keyed
  on the client address (reverse DNS, DNSBLs, client tables) that cannot apply to Tor circuit addresses.

Why each value, and how the limits fit together: docs/onion-path.md.
"""

from __future__ import annotations

from pathlib import Path

from onion_gateway import postfix
from onion_gateway.audit.discover import read_master
from onion_gateway.audit.policy import (CLIENT_ADDRESS_CHECKS, CLIENT_CHECK_REASONS, INHERITED_LISTS,
                                        INSPECTION_PARAMETERS, port25_smtpd, restriction_text, without_client_checks)
from onion_gateway.render import TorrcPiece
from onion_gateway.setup.settings import SetupSettings
from onion_gateway.tor import supported_options

#: The parameters that hand received mail to a content filter (FILTER_README, SMTPD_PROXY_README).
FILTER_PARAMETERS = ("content_filter", "smtpd_proxy_filter")

#: Every option :func:`service_options` may write, in the order it writes them (tor(1), "HIDDEN SERVICE OPTIONS").
SERVICE_OPTION_NAMES = ("HiddenServiceExportCircuitID", "HiddenServiceMaxStreams", "HiddenServiceMaxStreamsCloseCircuit",
                        "HiddenServiceEnableIntroDoSDefense", "HiddenServicePoWDefensesEnabled")


def service_options(settings: SetupSettings, supported: set[str]) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    """The onion service's options beyond its port, as setup writes them (torrc piece and ``SETCONF``).

    :param settings: ``export_circuit_id``, ``onion_max_streams``, ``onion_max_streams_close_circuit``,
        ``onion_intro_dos_defense``, ``onion_pow_defenses``.
    :param supported: the option names the installed tor accepts (:func:`onion_gateway.tor.supported_options`).
    :returns: ``(((option, value), ...), notes)``; a note names each wanted option this tor lacks.
    """
    wanted: list[tuple[str, str]] = []
    if settings.export_circuit_id:
        wanted.append(("HiddenServiceExportCircuitID", "haproxy"))
    if settings.onion_max_streams:
        wanted.append(("HiddenServiceMaxStreams", str(settings.onion_max_streams)))
        if settings.onion_max_streams_close_circuit:
            wanted.append(("HiddenServiceMaxStreamsCloseCircuit", "1"))
    if settings.onion_intro_dos_defense:
        wanted.append(("HiddenServiceEnableIntroDoSDefense", "1"))
    if settings.onion_pow_defenses:
        wanted.append(("HiddenServicePoWDefensesEnabled", "1"))
    notes = [f"the installed tor does not support {name} (tor --list-torrc-options, or no pow module): "
             "not written" for name, _ in wanted if name not in supported]
    return tuple((name, value) for name, value in wanted if name in supported), notes


def torrc_piece(settings: SetupSettings, notes: list[str] | None = None, tor_program: str = "tor") -> TorrcPiece:
    """The torrc piece's context for *settings*, with only the options the installed tor supports.

    :param settings: the setup settings.
    :param notes: where to append a note for each option left out (or ``None``).
    :param tor_program: the tor binary asked.
    :returns: the :class:`TorrcPiece`.
    :raises TorError: if tor is missing or ``--list-torrc-options`` fails.
    """
    options, missing = service_options(settings, supported_options(SERVICE_OPTION_NAMES, tor_program))
    if notes is not None:
        notes.extend(missing)
    metrics = settings.tor_metrics_port
    return TorrcPiece(hidden_service_dir=str(settings.hidden_service_dir), onion_port=settings.onion_port,
                      target=str(settings.listener), options=options,
                      metrics_port=str(metrics) if metrics is not None else "")


def listener_inspection(config_dir: Path | None) -> tuple[tuple[tuple[str, str], ...], str]:
    """Content inspection the port-25 smtpd sets in its own master.cf entry (``-o smtpd_milters=...``),
    to repeat on the onion listener. What it inherits from main.cf the listener inherits too.

    When the port-25 smtpd hands mail to a filter (its effective ``content_filter`` or
    ``smtpd_proxy_filter`` is set, in its entry or in main.cf) and its entry sets
    ``receive_override_options``, that is copied too: FILTER_README's advanced content filter (and
    amavisd-new's README.postfix) pair ``-o content_filter=...`` with
    ``-o receive_override_options=no_address_mappings`` on the receiving smtpd, because the smtpd that
    takes the filtered mail back does the address mappings; without it onion mail would have virtual
    aliases expanded and automatic BCCs added twice.

    :param config_dir: the Postfix configuration directory (``None``: the default instance).
    :returns: ``(((parameter, raw value), ...), "smtp/inet")``; ``((), "")`` without a port-25 smtpd.
    :raises PostfixError: if postconf fails.
    """
    def pass_name(service) -> str:
        overrides = [f"{k}={v}" for k, v in service.overrides.items()]
        return postfix.get_parameter(config_dir, "smtpd_service_name", overrides=overrides).strip()

    port25 = port25_smtpd(read_master(config_dir), pass_name)
    if port25 is None:
        return (), ""
    pairs = [(name, port25.overrides[name]) for name in INSPECTION_PARAMETERS if name in port25.overrides]
    if "receive_override_options" in port25.overrides:
        filters = postfix.get_parameters(config_dir, FILTER_PARAMETERS, expand=True,
                                         overrides=[f"{k}={v}" for k, v in port25.overrides.items()])
        if any(value.strip() for value in filters.values()):
            pairs.append(("receive_override_options", port25.overrides["receive_override_options"]))
    return tuple(pairs), port25.label if pairs else ""


def listener_client_checks(config_dir: Path | None) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    """The restriction lists the PROXY listener must override so that it does not inherit main.cf's
    client-address checks.

    Tor's PROXY header presents every onion client as a per-circuit ``fc00:dead:beef:4dad::<circuit>``
    address, which has no reverse DNS (``reject_unknown_client_hostname`` and its kin defer every onion
    delivery with 450), is never on a DNS list (a pointless query per connection) and matches no client
    table key. Each of :data:`~onion_gateway.audit.policy.INHERITED_LISTS` whose effective main.cf value
    (``postconf -x``) holds one of :data:`~onion_gateway.audit.policy.CLIENT_ADDRESS_CHECKS` is repeated
    without them; everything else in it (HELO and sender checks, policy services) stays.

    :param config_dir: the Postfix configuration directory (``None``: the default instance).
    :returns: ``(((list name, remaining value), ...), notes)``, one note per removed restriction; ``((), [])``
        when main.cf's lists hold none.
    :raises PostfixError: if postconf fails.
    """
    values = postfix.get_parameters(config_dir, INHERITED_LISTS, expand=True)
    overrides = []
    notes = []
    for list_name in INHERITED_LISTS:
        kept, removed = without_client_checks(values[list_name])
        if not removed:
            continue
        overrides.append((list_name, kept))
        for name, arg in removed:
            notes.append(f"the onion listener does not inherit '{restriction_text(name, arg)}' from main.cf's "
                         f"{list_name}: {CLIENT_CHECK_REASONS[CLIENT_ADDRESS_CHECKS[name]]}")
    return tuple(overrides), notes
