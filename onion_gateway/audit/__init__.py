"""Prove that an onion-facing Postfix listener cannot relay (issue 4, ``onion-gateway audit-open-relay``).

Map of the package (dependencies point down):

* :mod:`.discover`  torrc ``HiddenServicePort`` (read by ``tor --dump-config``) or setup's record ->
  every master.cf service listening there -> its smtpd
* :mod:`.tables`    Postfix list and table matching for the Tor client (``postmap -q``)
* :mod:`.policy`    effective settings of that smtpd (``postconf -x -o``), restriction walk, static findings
* :mod:`.probe`     the one connection opener (TCP/unix, PROXY header, STARTTLS with a client certificate)
  and the live SMTP probes (never DATA), reply classification
* :mod:`.report`    :class:`AuditReport`, outcome/exit code, text and JSON

Entry points: :func:`audit_listener` for one endpoint, :func:`audit_torrc` for every onion port of a
torrc, :func:`audit_setup` for the listener ``onion-gateway setup`` recorded, and
:func:`analyse_listener`, the static half alone (``setup`` runs it on its planned configuration and
refuses a listener with a critical finding).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from onion_gateway import postfix
from onion_gateway.address import ListenAddress
from onion_gateway.audit.discover import (SETUP_MANIFEST, OnionPort, SetupRecord, find_listener,
                                          find_listeners, onion_ports, read_master, read_setup_state,
                                          running_onion_ports)
from onion_gateway.audit.policy import (SASL_OFFERED_TITLE, SEVERITY_ORDER, Check, EffectivePolicy, Finding,
                                        Setting, Severity, analyse,
                                        effective_policy, listener_inspection_findings, sender_keys,
                                        uses_proxy_protocol)
from onion_gateway.audit.probe import (TOR_PROXY_SOURCE, ClientCertificate, ProbeContext, ProxyHeader,
                                       expected_client_address, run_probes)
from onion_gateway.audit.report import AuditReport, Outcome, overall_exit_code, to_json, to_text
from onion_gateway.errors import PostfixError, Unreachable
from onion_gateway.postfix_syntax import split_list
from onion_gateway.config import load_config_file
from onion_gateway.setup.settings import setup_settings

__all__ = ["AuditOptions", "AuditReport", "ClientCertificate", "ListenAddress", "Outcome", "SetupRecord",
           "analyse_listener", "audit_listener", "audit_running_tor", "audit_setup", "audit_torrc", "read_setup_state", "setup_record",
           "overall_exit_code", "to_json", "to_text"]

log = logging.getLogger(__name__)

DEFAULT_TEST_DOMAIN = "example.com"
SMTP_PORTS = {25, 465, 587, 2525}


@dataclass(frozen=True)
class AuditOptions:
    """How to audit.

    :param config_dir: Postfix configuration directory, ``None`` for the default instance.
    :param test_domain: the foreign domain D that must never be relayed to.
    :param control_recipient: an address the server must accept; default ``postmaster@<a local domain>``.
    :param own_onion: the onion address of the service (else read from HiddenServiceDir/hostname).
    :param helo: EHLO name the probes use.
    :param timeout_seconds: per-command socket timeout.
    :param probe: run the live probes (``False``: static analysis only, outcome at best INCONCLUSIVE).
    :param client_cert: a TLS client certificate the probes present after STARTTLS (proves a
        ``permit_tls_*clientcerts`` relay), or ``None``.
    """

    config_dir: Path | None = None
    test_domain: str = DEFAULT_TEST_DOMAIN
    control_recipient: str | None = None
    own_onion: str | None = None
    helo: str = "localhost"
    timeout_seconds: float = 30.0
    probe: bool = True
    client_cert: ClientCertificate | None = None


#: Catalogue rounds when several services share the listener's address (each probe on a fresh connection).
SHARED_LISTENER_ROUNDS = 4


def audit_listener(endpoint: ListenAddress | str, options: AuditOptions = AuditOptions(),
                   onion_port: OnionPort | None = None) -> AuditReport:
    """Audit one listener: find its smtpd, analyse the effective policy, probe it live.

    :param endpoint: ``ListenAddress`` or text (``127.0.0.1:2525``, ``unix:/path``).
    :param options: see :class:`AuditOptions`.
    :param onion_port: the torrc line that leads here, if any (for the report and the own onion).
    :returns: the :class:`AuditReport`; its ``exit_code`` is the issue-4 exit code.
    :raises ConfigError: if *endpoint* is not an endpoint.
    :raises PostfixError: if postconf cannot read the configuration.
    """
    if isinstance(endpoint, str):
        endpoint = ListenAddress.parse(endpoint)
    report = analyse_listener(endpoint, options.config_dir, onion_port)
    own_onion = options.own_onion or (onion_port.onion if onion_port else None)
    policy = report.policy
    control = options.control_recipient or (_control_recipient(policy) if policy else None)
    ctx = ProbeContext(
        test_domain=options.test_domain,
        control_recipient=control,
        own_domain=control.rpartition("@")[2] if control and "@" in control else None,
        hostname=policy.value("myhostname") if policy else "localhost",
        own_onion=own_onion,
        xclient_addr=_xclient_address(policy),
        xclient_login=bool(policy and policy.value("smtpd_sasl_auth_enable").lower() == "yes"),
        sender_keys=tuple(sender_keys(policy, options.test_domain)) if policy else (),
        proxy=ProxyHeader(destination_port=onion_port.virtual_port if onion_port else 25)
        if policy and uses_proxy_protocol(policy) else None,
        proxy_forge_addr=_trusted_address(policy) if policy and uses_proxy_protocol(policy) else None,
        client_cert=options.client_cert,
        starttls=bool(policy and policy.value("smtpd_tls_security_level").lower() == "encrypt"),
        rounds=SHARED_LISTENER_ROUNDS if len(report.listener.get("services", [])) > 1 else 1,
    )
    if not options.probe:
        report.probed = False
        return report
    try:
        run = run_probes(endpoint, ctx, helo=options.helo, timeout_seconds=options.timeout_seconds)
    except Unreachable as exc:
        report.error = str(exc)
        return report
    report.client_address = run.client_address
    if run.helo and run.helo != options.helo:
        report.listener["helo"] = f"{run.helo} (HELO {options.helo} was refused)"
    report.control = run.control
    report.probes = run.probes
    if run.auth_offered is not None:
        report.findings.append(Finding(Severity.WARNING, Check.SASL_OFFERED, SASL_OFFERED_TITLE,
                                       f"AUTH {run.auth_offered}".rstrip(), "EHLO reply"))
        report.findings.sort(key=lambda f: SEVERITY_ORDER[f.severity])
    log.info("audit %s: %s", endpoint, report.outcome.name)
    return report


def analyse_listener(endpoint: ListenAddress | str, config_dir: Path | None = None,
                     onion_port: OnionPort | None = None) -> AuditReport:
    """The static half of the audit: find the smtpd behind *endpoint* and analyse its effective policy.

    Nothing connects to the listener, so this also works on a configuration that is not running yet
    (``setup`` runs it on its scratch copy of main.cf/master.cf before changing anything).

    :param endpoint: ``ListenAddress`` or text (``127.0.0.1:2525``, ``unix:/path``).
    :param config_dir: Postfix configuration directory, ``None`` for the default instance.
    :param onion_port: the torrc line (or setup record) that leads here, if any, for the report.
    :returns: an :class:`AuditReport` with ``policy`` (``None`` when no smtpd listens there: then a
        ``no_service`` warning is its only finding) and the static ``findings``; ``probed`` is left as is.
    :raises ConfigError: if *endpoint* is not an endpoint.
    :raises PostfixError: if postconf cannot read the configuration.
    """
    if isinstance(endpoint, str):
        endpoint = ListenAddress.parse(endpoint)
    report = AuditReport(target=str(endpoint))
    if onion_port is not None:
        report.listener.update(source=f"{onion_port.source} HiddenServicePort {onion_port.virtual_port} "
                                      f"{onion_port.target}",
                               onion=onion_port.onion, virtual_port=onion_port.virtual_port,
                               discovered_by=onion_port.discovered_by)
    _policy_for(endpoint, config_dir, report)
    return report


def audit_torrc(torrc: Path, options: AuditOptions = AuditOptions()) -> list[AuditReport]:
    """Audit every Postfix listener a torrc's ``HiddenServicePort`` lines lead to.

    Ports whose target is not an smtpd/postscreen service of this Postfix instance are skipped (and
    logged): the same onion may also serve a web server.

    :returns: one report per Postfix listener; empty if none.
    :raises ConfigError: if neither Tor (``tor --dump-config``) nor the torrc parser can read the torrc.
    :raises PostfixError: if postconf fails.
    """
    return _audit_ports(onion_ports(torrc), options)


def audit_running_tor(control: ListenAddress | str, options: AuditOptions = AuditOptions(),
                      password_file: Path | None = None) -> list[AuditReport]:
    """Audit every Postfix listener the onion services of a *running* Tor lead to (``GETCONF
    HiddenServiceOptions`` over its control port), skipping other ports like :func:`audit_torrc`.

    :param control: Tor's ControlPort (``127.0.0.1:9051``) or ControlSocket (``unix:/run/tor/control``).
    :param password_file: the control password file, or ``None`` (cookie or no authentication).
    :returns: one report per Postfix listener; empty if none.
    :raises TorError: if Tor cannot be asked.
    :raises ConfigError: if *control* is not an address.
    :raises PostfixError: if postconf fails.
    """
    if isinstance(control, str):
        control = ListenAddress.parse(control)
    return _audit_ports(running_onion_ports(control, password_file), options)


def _audit_ports(ports: list[OnionPort], options: AuditOptions) -> list[AuditReport]:
    reports = []
    services = read_master(options.config_dir)
    globals_ = _globals(options.config_dir)
    for port in ports:
        if find_listener(services, port.target, inet_interfaces=globals_["inet_interfaces"],
                         queue_directory=globals_["queue_directory"],
                         pass_service_name=_pass_name(options.config_dir)) is None:
            level = logging.WARNING if port.virtual_port in SMTP_PORTS else logging.INFO
            log.log(level, "%s: HiddenServicePort %s -> %s is not a Postfix smtpd listener, skipped",
                    port.source, port.virtual_port, port.target)
            continue
        reports.append(audit_listener(port.target, options, port))
    return reports


def audit_setup(record: SetupRecord, options: AuditOptions = AuditOptions()) -> AuditReport:
    """Audit the listener ``onion-gateway setup`` recorded (no torrc needed).

    :param record: from :func:`~onion_gateway.audit.discover.read_setup_state` or :func:`setup_record`.
    :param options: see :class:`AuditOptions`; its ``config_dir``, when set, wins over the recorded one.
    :returns: the :class:`AuditReport` (see :func:`audit_listener`).
    :raises PostfixError: if postconf cannot read the configuration.
    """
    config_dir = options.config_dir if options.config_dir is not None else record.postfix_config_dir
    port = record.as_onion_port()
    return audit_listener(port.target, replace(options, config_dir=config_dir), port)


def setup_record(config_file: Path) -> SetupRecord:
    """The listener of a config file's ``[setup]`` table: what setup recorded in that table's state
    directory if it ran, else what the table itself says (``listener``, ``onion_port``,
    ``hidden_service_dir``, ``postfix_config_dir``; defaults as for ``onion-gateway setup``).

    :param config_file: the TOML file (relative paths in it are taken from its directory).
    :returns: a :class:`SetupRecord`.
    :raises ConfigError: if the file or its ``[setup]`` table is invalid, or the state directory holds
        an unreadable manifest.
    """
    settings = setup_settings(load_config_file(config_file).get("setup", {}), None, config_file.resolve().parent)
    if (settings.state_dir / SETUP_MANIFEST).exists():
        return read_setup_state(settings.state_dir)
    return SetupRecord(settings.listener, settings.onion_port, str(settings.hidden_service_dir),
                       settings.postfix_config_dir, f"{config_file} [setup]", tor_control=settings.tor_control,
                       domains=settings.domains)


def _globals(config_dir: Path | None) -> dict[str, str]:
    return postfix.get_parameters(config_dir, ["inet_interfaces", "queue_directory"])


def _pass_name(config_dir: Path | None):
    def name(service) -> str:
        overrides = [f"{k}={v}" for k, v in service.overrides.items()]
        return postfix.get_parameter(config_dir, "smtpd_service_name", overrides=overrides).strip()
    return name


def _policy_for(endpoint: ListenAddress, config_dir: Path | None, report: AuditReport) -> EffectivePolicy | None:
    """Analyse every smtpd that can receive a connection on *endpoint* (several services may share one
    port); ``report.policy`` becomes the one with the most critical findings."""
    services = read_master(config_dir)
    globals_ = _globals(config_dir)
    matches = find_listeners(services, endpoint, inet_interfaces=globals_["inet_interfaces"],
                             queue_directory=globals_["queue_directory"],
                             pass_service_name=_pass_name(config_dir))
    if not matches:
        report.findings.append(Finding(Severity.WARNING, Check.NO_SERVICE,
                                       "no smtpd or postscreen service of this Postfix listens here: "
                                       "policy not analysed", str(endpoint),
                                       f"master.cf in {config_dir or 'the default configuration directory'}"))
        return None
    analysed = []
    for match in matches:
        policy = effective_policy(config_dir, match.smtpd, expected_client_address(endpoint))
        if match.smtpd is not match.service:     # postscreen takes the connection: its own PROXY setting counts
            overrides = [f"{k}={v}" for k, v in match.service.overrides.items()]
            name = "postscreen_upstream_proxy_protocol"
            value = postfix.get_parameter(config_dir, name, overrides=overrides).strip()
            policy.settings["smtpd_upstream_proxy_protocol"] = Setting(
                value, f"{name} of {match.service.label} (postscreen receives the connection)")
        if uses_proxy_protocol(policy):        # Postfix sees the address in the PROXY header, not the socket's
            policy.client_address = TOR_PROXY_SOURCE
        findings = analyse(policy, all_interfaces=match.all_interfaces, bound=match.bound_addresses)
        if len(matches) > 1:
            findings = [replace(f, source=f"{match.smtpd.label}: {f.source}") for f in findings]
        analysed.append((match, policy, findings))
    match, policy, _ = max(analysed, key=lambda item: sum(f.severity is Severity.CRITICAL for f in item[2]))
    report.listener.update(service=match.service.label, command=match.service.command,
                           bound=match.bound_addresses)
    if match.smtpd is not match.service:
        report.listener["via"] = f"postscreen -> {match.smtpd.label}"
    report.policy = policy
    found = [f for _, _, findings in analysed for f in findings]
    found += listener_inspection_findings(config_dir, services, match.smtpd, _pass_name(config_dir))
    if len(matches) > 1:
        labels = [m.service.label for m, _, _ in analysed]
        report.listener["services"] = labels
        open_ = any(f.severity is Severity.CRITICAL for f in found)
        found.insert(0, Finding(Severity.CRITICAL if open_ else Severity.WARNING, Check.SHARED_LISTENER,
                                f"{len(matches)} master.cf services accept connections on {endpoint}: the kernel "
                                "hands each connection to any of them"
                                + (", and one of them may relay" if open_ else ""),
                                ", ".join(labels), "master.cf"))
    report.findings[:0] = sorted(found, key=lambda f: SEVERITY_ORDER[f.severity])
    return policy


def _control_recipient(policy: EffectivePolicy) -> str | None:
    """``postmaster@`` the first domain of virtual_mailbox_domains, mydestination, virtual_alias_domains,
    relay_domains (in that order; tables listed with ``postmap -s``; ``localhost`` and onion names last;
    ``.parent`` and ``*`` forms skipped)."""
    candidates: list[str] = []
    for name in ("virtual_mailbox_domains", "mydestination", "virtual_alias_domains", "relay_domains"):
        for item in split_list(policy.value(name)):
            if ":" in item or item.startswith("/") or item.startswith(".") or item == "*":
                try:
                    pairs = postfix.postmap_dump(item, policy.config_dir) if ":" in item else None
                except PostfixError:
                    pairs = None
                candidates += [k for k, _ in pairs or [] if "." in k and not k.startswith(".")]
                continue
            candidates.append(item)
    candidates = [c.rstrip(".") for c in candidates if c]
    if not candidates:
        return None
    candidates.sort(key=lambda d: (d == "localhost" or d.startswith("localhost."), d.endswith(".onion")))
    return f"postmaster@{candidates[0]}"


def _trusted_address(policy: EffectivePolicy) -> str | None:
    """An address inside mynetworks to claim in a forged PROXY header (loopback included), or ``None``."""
    for item in split_list(policy.value("mynetworks")):
        try:
            network = ipaddress.ip_network(item.replace("[", "").replace("]", ""), strict=False)
        except ValueError:
            continue
        hosts = network.hosts() if network.num_addresses > 2 else iter([network.network_address])
        return str(next(hosts, network.network_address))
    return None


def _xclient_address(policy: EffectivePolicy | None) -> str:
    """An address to claim with XCLIENT: a non-loopback one inside mynetworks if there is one."""
    if policy is None:
        return "127.0.0.1"
    for item in split_list(policy.value("mynetworks")):
        try:
            network = ipaddress.ip_network(item.replace("[", "").replace("]", ""), strict=False)
        except ValueError:
            continue
        if network.version == 4 and not network.is_loopback:
            hosts = network.hosts() if network.num_addresses > 2 else iter([network.network_address])
            return str(next(hosts, network.network_address))
    return "127.0.0.1"

