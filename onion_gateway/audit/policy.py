"""The effective relay policy of one smtpd service, and what is wrong with it (static analysis).

Effective = main.cf, then the service's master.cf ``-o`` overrides, then Postfix's defaults, with
``$name`` expanded: exactly what ``postconf -x -o name=value ... name`` prints (postconf(1)).

How smtpd decides about a RCPT (postconf(5) smtpd_relay_restrictions, SMTPD_ACCESS_README):
``smtpd_relay_restrictions`` is evaluated, then ``smtpd_recipient_restrictions``. In each list the
first restriction that decides wins: ``permit``-like ends *that list* (the next list still runs),
``reject``-like rejects the command; a list that runs off its end permits. A foreign recipient is
relayed when neither list rejects it. The client/helo/sender lists run too (smtpd_delay_reject), but a
permit there never skips the relay lists, so they only matter when they reject.

The analysis models the attacker Tor gives us: a client at 127.0.0.1 (name ``localhost``; on a PROXY
listener the address in Tor's header, see :data:`onion_gateway.audit.probe.TOR_PROXY_SOURCE`) that
chooses HELO, sender and recipient freely, cannot authenticate, and may present any TLS client
certificate it holds. Which list items and table entries match that client is :mod:`.tables`' job.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from onion_gateway import postfix
from onion_gateway.audit.discover import MasterService
from onion_gateway.audit.tables import (CLIENT_ADDRESS, Action, address_in_list,
                                        classify_answer, client_answer, loopback_is_interface, table_entries)
from onion_gateway.errors import TableUnreadable
from onion_gateway.postfix_syntax import parse_restrictions, split_list

log = logging.getLogger(__name__)


#: Parameters read for every audited smtpd (their effective values go into the report).
PARAMETERS = (
    "compatibility_level", "mynetworks", "mynetworks_style", "inet_interfaces", "proxy_interfaces",
    "smtpd_client_restrictions", "smtpd_helo_restrictions", "smtpd_sender_restrictions",
    "smtpd_relay_restrictions", "smtpd_recipient_restrictions",
    "smtpd_authorized_xclient_hosts", "smtpd_authorized_xforward_hosts", "permit_mx_backup_networks",
    "relay_domains", "mydestination", "virtual_mailbox_domains", "virtual_alias_domains",
    "allow_untrusted_routing", "resolve_dequoted_address", "soft_bounce", "smtpd_sasl_auth_enable",
    "myhostname", "mydomain", "myorigin", "queue_directory", "syslog_name", "smtpd_restriction_classes",
    "smtpd_tls_CAfile", "smtpd_tls_CApath", "smtpd_tls_ask_ccert", "relay_clientcerts", "smtpd_tls_security_level",
    "smtpd_upstream_proxy_protocol", "smtpd_data_restrictions", "smtpd_end_of_data_restrictions",
)
MAX_CLASS_DEPTH = 10

RELAY_LISTS = ("smtpd_relay_restrictions", "smtpd_recipient_restrictions")
EARLY_LISTS = ("smtpd_client_restrictions", "smtpd_helo_restrictions", "smtpd_sender_restrictions")
ACCESS_CHECKS = re.compile(r"^check_\w+_access$|^check_\w+_(mx|ns|a)_access$")
ALWAYS_REJECT = {"reject", "defer", "reject_all", "defer_all"}
REJECT_FOREIGN = ALWAYS_REJECT | {"reject_unauth_destination", "defer_unauth_destination"}


class Severity(enum.Enum):
    """How bad a finding is. CRITICAL findings make the audit fail (exit 2 unless a probe got through)."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


#: Sort key of a finding's severity: most severe first.
SEVERITY_ORDER = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}


class Check(enum.Enum):
    """Which static check produced a finding (stable identifiers for JSON consumers)."""

    MYNETWORKS_LOOPBACK = "mynetworks_loopback"
    INET_INTERFACES = "permit_inet_interfaces"
    XCLIENT_LOOPBACK = "xclient_loopback"
    XFORWARD_LOOPBACK = "xforward_loopback"
    BARE_PERMIT = "bare_permit"
    ACCESS_MAP_OK = "access_map_ok"
    ACCESS_MAP_OPAQUE = "access_map_opaque"
    POLICY_SERVICE = "policy_service"
    MX_BACKUP = "permit_mx_backup"
    RELAY_DOMAINS_ONION = "relay_domains_onion"
    UNTRUSTED_ROUTING = "allow_untrusted_routing"
    DEQUOTED = "resolve_dequoted_address"
    EMPTY_RELAY_RESTRICTIONS = "empty_relay_restrictions"
    COMPATIBILITY = "compatibility_level"
    SOFT_BOUNCE = "soft_bounce"
    ALL_INTERFACES = "all_interfaces"
    NO_REJECT = "no_unauth_destination"
    NO_SERVICE = "no_service"
    TLS_CLIENTCERT = "tls_client_certificate"
    SHARED_LISTENER = "shared_listener"
    PROXY_FORGEABLE = "proxy_header_forgeable"
    INSPECTION_PARITY = "inspection_parity"
    SASL_OFFERED = "sasl_auth_offered"
    CLIENT_ADDRESS_CHECK = "client_address_check"


@dataclass(frozen=True)
class Setting:
    """One effective parameter: its expanded value and where it came from.

    :param source: ``master.cf <service>/<type> -o``, ``main.cf`` or ``default``.
    """

    value: str
    source: str


@dataclass(frozen=True)
class Finding:
    """One static finding: severity, what, the effective value and where it was set."""

    severity: Severity
    check: Check
    title: str
    value: str
    source: str

    def to_dict(self) -> dict:
        """The finding as JSON-ready ``{severity, check, title, value, source}``."""
        return {"severity": self.severity.value, "check": self.check.value, "title": self.title,
                "value": self.value, "source": self.source}


@dataclass
class EffectivePolicy:
    """The settings of one smtpd service as it runs.

    :param service: ``service/type`` label in master.cf.
    :param settings: ``{parameter: Setting}`` for :data:`PARAMETERS`.
    :param config_dir: the Postfix configuration directory (for table lookups).
    :param client_address: the address Postfix will see Tor connect from (127.0.0.1 unless the
        HiddenServicePort target is a non-loopback address).
    """

    service: str
    settings: dict[str, Setting] = field(default_factory=dict)
    config_dir: Path | None = None
    client_address: str = CLIENT_ADDRESS

    def value(self, name: str) -> str:
        """The effective value of parameter *name*; :raises KeyError: if it was not read."""
        return self.settings[name].value

    def source(self, name: str) -> str:
        """Where *name*'s value comes from (master.cf ``-o``, main.cf, or the default)."""
        return self.settings[name].source

    def to_dict(self) -> dict:
        """``{parameter: {"value": ..., "source": ...}}``, JSON-ready."""
        return {name: {"value": s.value, "source": s.source} for name, s in self.settings.items()}


def effective_policy(config_dir: Path | None, service: MasterService,
                     client_address: str = CLIENT_ADDRESS) -> EffectivePolicy:
    """Compute the effective settings of *service* (``postconf -x -o k=v ... PARAMETERS``).

    :param config_dir: Postfix configuration directory, ``None`` for the default instance.
    :param service: the smtpd service (after following postscreen).
    :param client_address: the address Tor's connections come from, as Postfix sees it.
    :returns: :class:`EffectivePolicy` with the expanded value and source of each of :data:`PARAMETERS`.
    :raises PostfixError: if postconf fails.
    """
    overrides = [f"{k}={v}" for k, v in service.overrides.items()]
    values = postfix.get_parameters(config_dir, PARAMETERS, expand=True, overrides=overrides)
    # restriction classes (smtpd_restriction_classes) are user-defined parameters used as restrictions
    classes = [c for c in split_list(values["smtpd_restriction_classes"]) if re.match(r"^\w+$", c)]
    if classes:
        values.update(postfix.get_parameters(config_dir, classes, expand=True, overrides=overrides))
    explicit = postfix.explicit_parameters(config_dir)
    settings = {}
    for name in [*PARAMETERS, *classes]:
        if name in service.overrides:
            source = f"master.cf {service.label} -o {name}"
        elif name in explicit:
            source = "main.cf"
        else:
            source = "default"
        settings[name] = Setting(values[name].strip(), source)
    return EffectivePolicy(service.label, settings, config_dir, client_address)


class Step(enum.Enum):
    """What one restriction does to a foreign recipient from the Tor client."""

    PERMIT = "permit"              # permits now, whatever the envelope
    MAY_PERMIT = "may_permit"      # permits for an envelope the attacker can choose or arrange
    UNKNOWN = "unknown"            # an external decision we cannot read (policy service, tcp table)
    REJECT = "reject"              # rejects a foreign recipient
    NEXT = "next"                  # does not decide


@dataclass(frozen=True)
class StepResult:
    """What one restriction-list step does to a relay attempt: the step, the check it trips, and why.

    :param inline: a restriction list the step evaluates in place (an access table's answer), or ``""``.
    :param keys: for an attacker-keyed access table, the keys whose answer may permit (probes try them).
    """

    step: Step
    check: Check | None = None
    why: str = ""
    value: str = ""
    source_params: tuple[str, ...] = ()
    inline: str = ""
    keys: tuple[str, ...] = ()


def classify_restriction(policy: EffectivePolicy, list_name: str, name: str, arg: str | None) -> StepResult:
    """What restriction *name* (with table *arg*) in *list_name* does for the Tor client.

    :returns: a :class:`StepResult`; ``check`` names the finding to report when it permits.
    """
    if name in REJECT_FOREIGN:
        return StepResult(Step.REJECT)
    if name == "permit":
        return StepResult(Step.PERMIT, Check.BARE_PERMIT, "bare 'permit'", "permit", (list_name,))
    if name == "permit_mynetworks":
        mynetworks = policy.value("mynetworks")
        inside = address_in_list(policy.client_address, "mynetworks", mynetworks, policy.config_dir)
        if inside is False:
            return StepResult(Step.NEXT)
        step = Step.PERMIT if inside else Step.UNKNOWN
        return StepResult(step, Check.MYNETWORKS_LOOPBACK,
                          f"permit_mynetworks with {policy.client_address} in mynetworks (every Tor client "
                          f"arrives from {policy.client_address})", f"mynetworks = {mynetworks}",
                          (list_name, "mynetworks"))
    if name == "permit_inet_interfaces":
        interfaces = policy.value("inet_interfaces")
        if not loopback_is_interface(interfaces, policy.client_address):
            return StepResult(Step.NEXT)
        return StepResult(Step.PERMIT, Check.INET_INTERFACES,
                          f"permit_inet_interfaces while {policy.client_address} is a local interface",
                          f"inet_interfaces = {interfaces}", (list_name, "inet_interfaces"))
    if name == "permit_mx_backup":
        networks = policy.value("permit_mx_backup_networks")
        covered = address_in_list(policy.client_address, "permit_mx_backup_networks", networks,
                                  policy.config_dir) \
            if networks else True
        if covered is False:
            return StepResult(Step.NEXT)
        return StepResult(Step.MAY_PERMIT, Check.MX_BACKUP,
                          "permit_mx_backup: anyone who points a domain's MX at this host can relay "
                          "through it", f"permit_mx_backup_networks = {networks}",
                          (list_name, "permit_mx_backup_networks"))
    if name == "check_policy_service":
        return StepResult(Step.UNKNOWN, Check.POLICY_SERVICE,
                          "check_policy_service may answer OK before the relay check",
                          f"check_policy_service {arg}", (list_name,))
    if name in ("permit_tls_all_clientcerts", "permit_tls_clientcerts"):
        return tls_client_step(policy, list_name, name)
    if ACCESS_CHECKS.match(name) and arg:
        return _access_table(policy, list_name, name, arg)
    return StepResult(Step.NEXT)


CLIENT_TABLE_CHECKS = ("check_client_access", "check_client_a_access", "check_reverse_client_name_access")


def _access_table(policy: EffectivePolicy, list_name: str, name: str, table: str) -> StepResult:
    """An access(5) check: a table keyed by the Tor client is asked with ``postmap -q`` (its answer is the
    step, a restriction-list answer is walked in place); a table keyed by what the attacker sends (HELO,
    sender, recipient, their MX/NS/A) may permit if any entry permits."""
    where = f"{name} {table}"
    if name in CLIENT_TABLE_CHECKS:
        # the key is the Tor client itself, which nobody chooses: it permits everyone or no one
        try:
            answer = client_answer(table, policy.client_address, policy.config_dir)
        except TableUnreadable as exc:
            return StepResult(Step.UNKNOWN, Check.ACCESS_MAP_OPAQUE,
                              f"{name} table cannot be read; it may return OK before the relay check",
                              f"{where}: {exc}", (list_name,))
        if answer is None or answer.action is Action.NEXT:
            return StepResult(Step.NEXT)
        if answer.action is Action.REJECT:
            return StepResult(Step.REJECT)
        found = f"{where}: {_matching_entry(table, answer.key, policy.config_dir)} {answer.text} " \
                f"(looked up as {answer.key})"
        if answer.action is Action.RESTRICTIONS:
            return StepResult(Step.NEXT, Check.ACCESS_MAP_OK, f"{name} answers {answer.text!r} for the Tor client",
                              found, (list_name,), inline=answer.text)
        return StepResult(Step.PERMIT, Check.ACCESS_MAP_OK,
                          f"{name} answers {answer.text!r} for the Tor client ({answer.key})", found, (list_name,))
    entries = table_entries(table, policy.config_dir)
    if entries is None:
        return StepResult(Step.UNKNOWN, Check.ACCESS_MAP_OPAQUE,
                          f"{name} table cannot be listed; it may return OK before the relay check",
                          where, (list_name,))
    permits = [f"{k} {v}" for k, v in entries if _answer_may_permit(policy, list_name, v)]
    if not permits:
        return StepResult(Step.NEXT)
    if name == "check_ccert_access":      # needs a client certificate the server's CA signed
        return StepResult(Step.MAY_PERMIT, Check.TLS_CLIENTCERT,
                          f"{name} permits clients by their TLS certificate", f"{where}: " + "; ".join(permits[:5]),
                          (list_name,))
    # helo, sender, recipient, MX/NS/A: the attacker chooses the key
    return StepResult(Step.MAY_PERMIT, Check.ACCESS_MAP_OK,
                      f"{name} can answer OK before the relay check",
                      f"{where}: " + "; ".join(permits[:5]), (list_name,), keys=tuple(k for k, v in entries
                      if _answer_may_permit(policy, list_name, v)))


def _matching_entry(table: str, key: str, config_dir: Path | None) -> str:
    """The table line a found *key* matched, for the report: a cidr table's network, else the key."""
    if table.partition(":")[0].lower() != "cidr":
        return key
    for entry, _ in table_entries(table, config_dir) or []:
        try:
            if ipaddress.ip_address(key) in ipaddress.ip_network(entry.strip("[]").replace("]/", "/"), strict=False):
                return entry
        except ValueError:
            continue
    return key


def _answer_may_permit(policy: EffectivePolicy, list_name: str, text: str) -> bool:
    action = classify_answer(text)
    if action is Action.RESTRICTIONS:
        outcome, met = _walk(policy, list_name, text, depth=1)
        return outcome is Step.PERMIT or bool(met)
    return action is Action.PERMIT


def tls_client_step(policy: EffectivePolicy, list_name: str, name: str) -> StepResult:
    """``permit_tls_all_clientcerts`` / ``permit_tls_clientcerts`` (postconf(5)): a client that presents a
    certificate the server verifies (signed by ``smtpd_tls_CAfile``/``smtpd_tls_CApath``; for the second,
    also listed in ``relay_clientcerts``) relays. Nothing in Tor stops a client from presenting one."""
    sources = (list_name, "smtpd_tls_CAfile", "smtpd_tls_CApath", "smtpd_tls_ask_ccert")
    detail = (f"smtpd_tls_CAfile = {policy.value('smtpd_tls_CAfile')}; "
              f"smtpd_tls_ask_ccert = {policy.value('smtpd_tls_ask_ccert')}")
    if name == "permit_tls_clientcerts":
        certs = policy.value("relay_clientcerts")
        if not certs:
            return StepResult(Step.NEXT)
        return StepResult(Step.MAY_PERMIT, Check.TLS_CLIENTCERT,
                          "permit_tls_clientcerts: a client presenting a certificate listed in relay_clientcerts "
                          "relays", f"relay_clientcerts = {certs}; {detail}", (*sources, "relay_clientcerts"))
    return StepResult(Step.MAY_PERMIT, Check.TLS_CLIENTCERT,
                      "permit_tls_all_clientcerts: any client presenting a certificate signed by the CA in "
                      "smtpd_tls_CAfile relays", detail, sources)


def analyse(policy: EffectivePolicy, *, all_interfaces: bool = False, bound: str = "",
            forged: bool = False) -> list[Finding]:
    """All static findings for one smtpd's effective policy.

    On a PROXY listener the relay lists are also walked for a local process that forges the header and
    claims :data:`CLIENT_ADDRESS` (127.0.0.1): what that client could do and Tor's could not is a
    ``proxy_header_forgeable`` finding of the same severity (e.g. ``permit_inet_interfaces`` before the reject).

    :param policy: from :func:`effective_policy`.
    :param all_interfaces: the listener also listens beyond loopback (from discovery).
    :param bound: what it binds to, for the finding's value.
    :param forged: this is that second walk (no third one).
    :returns: findings, most severe first.
    """
    findings: list[Finding] = []
    outcomes = {}
    permits: dict[str, list[StepResult]] = {}
    for list_name in RELAY_LISTS:
        outcome, before = _walk(policy, list_name)
        outcomes[list_name] = outcome
        permits[list_name] = before
    relay_name, recipient_name = RELAY_LISTS
    blocker = next((n for n in EARLY_LISTS if _always_rejects(policy, n)), None)
    for list_name in RELAY_LISTS:
        other = recipient_name if list_name == relay_name else relay_name
        # the other list stops a foreign recipient for sure only if nothing before its reject may permit
        other_rejects = outcomes[other] is Step.REJECT and not permits[other]
        if blocker:
            other, other_rejects = blocker, True
        for step in permits[list_name]:
            sources = "; ".join(f"{p}: {policy.source(p)}" for p in step.source_params if p in policy.settings)
            if other_rejects:
                severity = Severity.WARNING
                title = f"{step.why} in {list_name}, masked for now by {other}"
            elif step.step is Step.UNKNOWN:
                severity = Severity.WARNING
                title = f"{step.why} ({list_name})"
            else:
                severity = Severity.CRITICAL
                title = f"{step.why} in {list_name}, before the unauthorized-destination reject"
            findings.append(Finding(severity, step.check, title,
                                    f"{list_name} = {policy.value(list_name)}; {step.value}", sources))
    if all(outcomes[n] is not Step.REJECT for n in RELAY_LISTS) and not any(permits.values()) and not blocker:
        findings.append(Finding(Severity.CRITICAL, Check.NO_REJECT,
                                "neither relay list rejects an unauthorized destination",
                                f"{relay_name} = {policy.value(relay_name)}; "
                                f"{recipient_name} = {policy.value(recipient_name)}",
                                f"{relay_name}: {policy.source(relay_name)}; "
                                f"{recipient_name}: {policy.source(recipient_name)}"))
    findings += _parameter_findings(policy)
    if not forged and uses_proxy_protocol(policy) and policy.client_address != CLIENT_ADDRESS:
        seen = {(f.check, f.value) for f in findings}
        for f in analyse(replace(policy, client_address=CLIENT_ADDRESS), forged=True):
            if f.severity is not Severity.INFO and (f.check, f.value) not in seen:
                findings.append(Finding(f.severity, Check.PROXY_FORGEABLE,
                                        f"a local process can send a PROXY header claiming {CLIENT_ADDRESS}, and "
                                        f"then: {f.title}", f.value, f.source))
    if all_interfaces:
        findings.append(Finding(Severity.WARNING, Check.ALL_INTERFACES,
                                "the onion listener also listens beyond loopback: clients reach it without Tor",
                                bound, "master.cf / inet_interfaces"))
    return sorted(findings, key=lambda f: SEVERITY_ORDER[f.severity])


def uses_proxy_protocol(policy: EffectivePolicy) -> bool:
    """True if the smtpd expects a PROXY v1 header first (``smtpd_upstream_proxy_protocol = haproxy``)."""
    setting = policy.settings.get("smtpd_upstream_proxy_protocol")
    return setting is not None and setting.value.lower() == "haproxy"


def sender_keys(policy: EffectivePolicy, test_domain: str) -> list[str]:
    """Sender addresses that a ``check_sender_access`` table in the relay path may permit (access(5)
    "EMAIL ADDRESS PATTERNS"): ``user@domain`` as is, ``domain`` -> ``audit@domain``, ``.domain`` ->
    ``audit@sub.domain``, ``user@`` -> ``user@<test_domain>``. Pattern keys (regexp, pcre) are skipped.

    :returns: addresses without brackets, in table order, at most 10.
    """
    keys: list[str] = []
    for list_name in (*RELAY_LISTS, *EARLY_LISTS):
        for name, arg in _all_restrictions(policy, policy.value(list_name) if list_name in policy.settings else ""):
            if name != "check_sender_access" or not arg:
                continue
            result = classify_restriction(policy, list_name, name, arg)
            for key in result.keys:
                if key.startswith(("/", "!")) or key == "*":
                    continue
                if key.endswith("@"):
                    address = f"{key}{test_domain}"
                elif "@" in key:
                    address = key
                else:
                    address = f"audit@sub{key}" if key.startswith(".") else f"audit@{key}"
                if address not in keys:
                    keys.append(address)
    return keys[:10]


def _all_restrictions(policy: EffectivePolicy, value: str, depth: int = 0) -> list[tuple[str, str | None]]:
    """A restriction list with restriction classes expanded in place."""
    classes = set(split_list(policy.value("smtpd_restriction_classes"))) \
        if "smtpd_restriction_classes" in policy.settings else set()
    out = []
    for name, arg in parse_restrictions(value):
        if name in classes and name in policy.settings and depth < MAX_CLASS_DEPTH:
            out += _all_restrictions(policy, policy.value(name), depth + 1)
        else:
            out.append((name, arg))
    return out


def _always_rejects(policy: EffectivePolicy, list_name: str) -> bool:
    """True if *list_name* (client/helo/sender) rejects every client before anything may permit
    (``smtpd_client_restrictions = reject``): then no recipient at all gets through."""
    if list_name not in policy.settings:
        return False
    for name, arg in parse_restrictions(policy.value(list_name)):
        if name in ALWAYS_REJECT:
            return True
        if name == "warn_if_reject" or classify_restriction(policy, list_name, name, arg).step is not Step.NEXT:
            return False
    return False


def _walk(policy: EffectivePolicy, list_name: str, value: str | None = None,
          depth: int = 0) -> tuple[Step, list[StepResult]]:
    """Walk one restriction list: its outcome for a foreign recipient and the permits met on the way.

    The outcome is REJECT if a rejecting restriction is reached (possibly after MAY_PERMIT/UNKNOWN
    steps, which the attacker may or may not satisfy), PERMIT if an unconditional permit comes first,
    NEXT if the list runs off its end. A restriction class named in the list is walked in place
    (smtpd_check.c evaluates it like an inline list).
    """
    met: list[StepResult] = []
    skip_next = False
    classes = set(split_list(policy.value("smtpd_restriction_classes"))) if "smtpd_restriction_classes" \
        in policy.settings else set()
    for name, arg in parse_restrictions(policy.value(list_name) if value is None else value):
        if skip_next:                      # warn_if_reject X: X only logs
            skip_next = False
            continue
        if name == "warn_if_reject":
            skip_next = True
            continue
        if name in classes and name in policy.settings and depth < MAX_CLASS_DEPTH:
            outcome, inner = _walk(policy, list_name, policy.value(name), depth + 1)
            met += inner
            if outcome is Step.NEXT:
                continue
            return outcome, met
        result = classify_restriction(policy, list_name, name, arg)
        if result.inline and depth < MAX_CLASS_DEPTH:     # an access table answered with restrictions
            outcome, inner = _walk(policy, list_name, result.inline, depth + 1)
            met += [replace(r, check=result.check, why=f"{result.why}: {r.why}", value=f"{result.value}; {r.value}")
                    for r in inner]
            if outcome is Step.NEXT:
                continue
            return outcome, met
        if result.step is Step.REJECT:
            return Step.REJECT, met
        if result.step is Step.PERMIT:
            return Step.PERMIT, met + [result]
        if result.step in (Step.MAY_PERMIT, Step.UNKNOWN):
            met.append(result)
    return Step.NEXT, met


#: The :data:`Check.SASL_OFFERED` title, static (effective smtpd_sasl_auth_enable) and live (AUTH in EHLO).
#: Many guides (the Dovecot wiki's "Postfix and Dovecot SASL" among them) enable SASL in main.cf, so
#: every smtpd that does not override it offers AUTH; onion clients are anonymous and each circuit is a
#: fresh client, so the listener becomes a password-guessing oracle for the mailbox accounts, and a
#: guessed login relays wherever permit_sasl_authenticated comes before the reject.
SASL_OFFERED_TITLE = ("the onion listener offers SMTP AUTH to anonymous onion clients: unlimited password guessing "
                      "over Tor (set -o smtpd_sasl_auth_enable=no on the listener)")


# --- client-address checks on a PROXY listener -----------------------------------------------------------

#: The restriction lists setup's listener inherits from main.cf (it sets its own relay and recipient lists).
INHERITED_LISTS = (*EARLY_LISTS, "smtpd_data_restrictions", "smtpd_end_of_data_restrictions")


class ClientCheck(enum.Enum):
    """What a restriction keyed on the client's address or name does to an onion client, which Tor's
    PROXY header presents as a per-circuit ``fc00:dead:beef:4dad::<circuit>`` address with no name."""

    REVERSE_DNS = "reverse_dns"    # reject_unknown_*client*: no reverse DNS -> 450 for every onion client
    DNS_LIST = "dns_list"          # DNSBL/DNSWL/RHSBL: a query per circuit address that can never be listed
    CLIENT_TABLE = "client_table"  # an access table keyed by client address/name: no onion client has its own


#: postconf(5) restrictions keyed on the client IP address or its (reverse) hostname, including the
#: Postfix < 2.3 name ``reject_unknown_client`` and the Postfix 1.x ``reject_maps_rbl``.
CLIENT_ADDRESS_CHECKS = {
    "reject_unknown_client_hostname": ClientCheck.REVERSE_DNS,
    "reject_unknown_reverse_client_hostname": ClientCheck.REVERSE_DNS,
    "reject_unknown_client": ClientCheck.REVERSE_DNS,
    "reject_rbl_client": ClientCheck.DNS_LIST,
    "reject_rhsbl_client": ClientCheck.DNS_LIST,
    "reject_rhsbl_reverse_client": ClientCheck.DNS_LIST,
    "permit_dnswl_client": ClientCheck.DNS_LIST,
    "permit_rhswl_client": ClientCheck.DNS_LIST,
    "reject_maps_rbl": ClientCheck.DNS_LIST,
    "check_client_access": ClientCheck.CLIENT_TABLE,
    "check_reverse_client_hostname_access": ClientCheck.CLIENT_TABLE,
    "check_client_a_access": ClientCheck.CLIENT_TABLE,
    "check_client_mx_access": ClientCheck.CLIENT_TABLE,
    "check_client_ns_access": ClientCheck.CLIENT_TABLE,
    "check_reverse_client_hostname_a_access": ClientCheck.CLIENT_TABLE,
    "check_reverse_client_hostname_mx_access": ClientCheck.CLIENT_TABLE,
    "check_reverse_client_hostname_ns_access": ClientCheck.CLIENT_TABLE,
}

#: Why each kind of client-address check cannot apply to onion clients (finding titles and setup's notes).
CLIENT_CHECK_REASONS = {
    ClientCheck.REVERSE_DNS: "every onion client is rejected: no reverse DNS for Tor circuit addresses "
                             "(fc00:dead:beef:4dad::/64), so this defers all onion mail with 450",
    ClientCheck.DNS_LIST: "DNSBL lookups of Tor circuit addresses: a pointless DNS query per onion client, "
                          "no circuit address is ever listed",
    ClientCheck.CLIENT_TABLE: "a table keyed by client address or name on Tor circuit addresses: every onion "
                              "client is a fresh fc00:dead:beef:4dad:: address named unknown",
}
#: The severity of each kind on an onion listener: a reverse-DNS check loses all onion mail.
CLIENT_CHECK_SEVERITY = {ClientCheck.REVERSE_DNS: Severity.WARNING, ClientCheck.DNS_LIST: Severity.WARNING,
                         ClientCheck.CLIENT_TABLE: Severity.INFO}


def restriction_text(name: str, arg: str | None) -> str:
    """One parsed restriction back as list text: ``name`` or ``name arg``."""
    return name if arg is None else f"{name} {arg}"


def without_client_checks(value: str) -> tuple[str, list[tuple[str, str | None]]]:
    """A restriction list minus its :data:`CLIENT_ADDRESS_CHECKS` (a ``warn_if_reject`` prefix goes with
    the restriction it qualifies; restriction classes are not followed).

    >>> without_client_checks("permit_mynetworks, warn_if_reject reject_rbl_client zen.example, reject_non_fqdn_sender")
    ('permit_mynetworks, reject_non_fqdn_sender', [('reject_rbl_client', 'zen.example')])

    :param value: the list as ``postconf -x`` prints it.
    :returns: ``(the remaining list, comma-separated; the removed (restriction, argument) pairs)``;
        the remaining list is *value* stripped, untouched, when nothing was removed.
    """
    items = parse_restrictions(value)
    kept: list[tuple[str, str | None]] = []
    removed: list[tuple[str, str | None]] = []
    for name, arg in items:
        if name in CLIENT_ADDRESS_CHECKS:
            removed.append((name, arg))
            if kept and kept[-1][0] == "warn_if_reject":
                kept.pop()
        else:
            kept.append((name, arg))
    if not removed:
        return value.strip(), []
    return ", ".join(restriction_text(n, a) for n, a in kept), removed


def client_check_findings(policy: EffectivePolicy) -> list[Finding]:
    """Client-address checks on a listener that reads Tor's PROXY header (:data:`CLIENT_ADDRESS_CHECKS`
    in :data:`INHERITED_LISTS` and the relay lists): one finding per restriction, warning for a reverse-DNS
    check (all onion mail deferred) and a DNS list, info for a client table. None on a listener without
    the PROXY protocol (its clients are 127.0.0.1, which has a name).

    :returns: :data:`Check.CLIENT_ADDRESS_CHECK` findings.
    """
    if not uses_proxy_protocol(policy):
        return []
    findings = []
    for list_name in (*INHERITED_LISTS, *RELAY_LISTS):
        if list_name not in policy.settings:
            continue
        for name, arg in parse_restrictions(policy.value(list_name)):
            kind = CLIENT_ADDRESS_CHECKS.get(name)
            if kind is not None:
                findings.append(Finding(CLIENT_CHECK_SEVERITY[kind], Check.CLIENT_ADDRESS_CHECK,
                                        CLIENT_CHECK_REASONS[kind], f"{list_name}: {restriction_text(name, arg)}",
                                        policy.source(list_name)))
    return findings


def _parameter_findings(policy: EffectivePolicy) -> list[Finding]:
    findings = []

    def add(severity, check, title, name):
        findings.append(Finding(severity, check, title, f"{name} = {policy.value(name)}", policy.source(name)))

    xclient = policy.value("smtpd_authorized_xclient_hosts")
    if xclient and address_in_list(policy.client_address, "xclient", xclient, policy.config_dir) is not False:
        add(Severity.CRITICAL, Check.XCLIENT_LOOPBACK,
            f"XCLIENT authorised for {policy.client_address}: any Tor client can claim another client "
            "address or login",
            "smtpd_authorized_xclient_hosts")
    xforward = policy.value("smtpd_authorized_xforward_hosts")
    if xforward and address_in_list(policy.client_address, "xforward", xforward, policy.config_dir) is not False:
        add(Severity.WARNING, Check.XFORWARD_LOOPBACK,
            f"XFORWARD authorised for {policy.client_address}: Tor clients can forge the logged client identity",
            "smtpd_authorized_xforward_hosts")
    relay_domains = split_list(policy.value("relay_domains"))
    if any(d.lower().strip(".") in ("onion", "*") for d in relay_domains):
        add(Severity.CRITICAL, Check.RELAY_DOMAINS_ONION,
            "relay_domains covers every onion address (or everything): the server relays to any onion service"
            " (a leading-dot form matches nothing only while parent_domain_matches_subdomains lists relay_domains)",
            "relay_domains")
    if policy.value("allow_untrusted_routing").lower() == "yes":
        add(Severity.WARNING, Check.UNTRUSTED_ROUTING,
            "allow_untrusted_routing = yes: sender-specified routing (user%domain@relay) is passed on",
            "allow_untrusted_routing")
    if policy.value("resolve_dequoted_address").lower() == "no":
        add(Severity.WARNING, Check.DEQUOTED,
            "resolve_dequoted_address = no: quoted local parts with @ or % can hide a second hop",
            "resolve_dequoted_address")
    if not policy.value("smtpd_relay_restrictions"):
        add(Severity.WARNING, Check.EMPTY_RELAY_RESTRICTIONS,
            "smtpd_relay_restrictions is empty: relay protection rests on smtpd_recipient_restrictions alone",
            "smtpd_relay_restrictions")
    if _level(policy.value("compatibility_level")) < (3, 6):
        add(Severity.INFO, Check.COMPATIBILITY,
            "compatibility_level below 3.6: backwards-compatible defaults are in effect", "compatibility_level")
    proxy = policy.settings.get("smtpd_upstream_proxy_protocol")
    if proxy is not None and proxy.value.lower() == "haproxy":
        if policy.value("mynetworks"):
            add(Severity.CRITICAL, Check.PROXY_FORGEABLE,
                "smtpd_upstream_proxy_protocol = haproxy with a non-empty mynetworks: any local process can send "
                "a PROXY header claiming an address in mynetworks", "mynetworks")
        else:
            add(Severity.INFO, Check.PROXY_FORGEABLE,
                "smtpd_upstream_proxy_protocol = haproxy: any local process can forge the PROXY header and pose "
                "as any address; mynetworks is empty, so no address is trusted", "smtpd_upstream_proxy_protocol")
    if policy.value("smtpd_sasl_auth_enable").lower() == "yes":
        add(Severity.WARNING, Check.SASL_OFFERED, SASL_OFFERED_TITLE, "smtpd_sasl_auth_enable")
    findings += client_check_findings(policy)
    if policy.value("soft_bounce").lower() == "yes":
        add(Severity.WARNING, Check.SOFT_BOUNCE,
            "soft_bounce = yes: every reject becomes a temporary 4xx reply", "soft_bounce")
    return findings


def _level(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text)
    return tuple(int(p) for p in parts) if parts else (0,)


# --- content-inspection parity with the port-25 smtpd ---------------------------------------------------

#: Content inspection an smtpd applies to the mail it receives (postconf(5), MILTER_README, FILTER_README):
#: an onion listener that lacks one the port-25 smtpd has lets onion mail bypass the spam filter.
INSPECTION_PARAMETERS = ("smtpd_milters", "content_filter", "smtpd_proxy_filter", "header_checks",
                         "mime_header_checks", "nested_header_checks", "body_checks")
#: receive_override_options items that switch inspection off (postconf(5)).
INSPECTION_OVERRIDES = ("no_milters", "no_header_body_checks")
#: The restriction lists whose ``check_policy_service`` entries count as inspection (policy daemons:
#: greylisting, rate limits, SPF); restriction classes are followed.
POLICY_LISTS = (*INHERITED_LISTS, *RELAY_LISTS)


def port25_smtpd(services: list[MasterService], pass_service_name=None) -> MasterService | None:
    """The smtpd that receives mail on port 25: the first ``inet`` service named ``smtp``, ``25`` or
    ``HOST:smtp``/``HOST:25`` whose command is smtpd, or, when postscreen(8) runs there, its ``pass``
    service (``smtpd_service_name``, default ``smtpd``).

    :param services: from :func:`onion_gateway.audit.discover.read_master`.
    :param pass_service_name: ``MasterService -> str``, postscreen's effective ``smtpd_service_name``
        (default: ``smtpd``).
    :returns: the service, or ``None`` if master.cf has no port-25 listener.
    """
    for service in services:
        if service.type != "inet" or service.name.rpartition(":")[2] not in ("smtp", "25"):
            continue
        if service.program == "smtpd":
            return service
        if service.program == "postscreen":
            name = pass_service_name(service) if pass_service_name else "smtpd"
            return next((s for s in services if s.type == "pass" and s.name == name), None)
    return None


def inspection_settings(config_dir: Path | None, service: MasterService) -> dict[str, str]:
    """The effective inspection settings of *service*: :data:`INSPECTION_PARAMETERS`,
    ``receive_override_options`` and every restriction list of :data:`POLICY_LISTS` (expanded).

    :raises PostfixError: if postconf fails.
    """
    overrides = [f"{k}={v}" for k, v in service.overrides.items()]
    names = [*INSPECTION_PARAMETERS, "receive_override_options", *POLICY_LISTS, "smtpd_restriction_classes"]
    values = postfix.get_parameters(config_dir, names, expand=True, overrides=overrides)
    classes = [c for c in split_list(values["smtpd_restriction_classes"]) if re.match(r"^\w+$", c)]
    if classes:
        values.update(postfix.get_parameters(config_dir, classes, expand=True, overrides=overrides))
    return {k: v.strip() for k, v in values.items()}


def _policy_services(values: dict[str, str], list_names: tuple[str, ...] | list[str], depth: int = 0) -> set[str]:
    found: set[str] = set()
    for list_name in list_names:
        for name, arg in parse_restrictions(values.get(list_name, "")):
            if name == "check_policy_service" and arg:
                found.add(arg)
            elif name in values and name not in POLICY_LISTS and depth < MAX_CLASS_DEPTH:   # a restriction class
                found |= _policy_services(values, [name], depth + 1)
    return found


def inspection_parity(port25: dict[str, str], listener: dict[str, str], port25_label: str,
                      listener_label: str) -> list[Finding]:
    """Findings for every inspection the port-25 smtpd applies and the onion listener skips.

    Onion mail must see the same spam and virus filters as the rest (the early onion-MX how-tos warn it
    "might even evade spam detection software"). Compared: each of :data:`INSPECTION_PARAMETERS` the
    port-25 smtpd sets (a different or empty value on the listener is reported), ``receive_override_options``
    items that switch inspection off on the listener only, and ``check_policy_service`` daemons in the
    port-25 smtpd's restriction lists that the listener's lists do not call.

    :param port25: :func:`inspection_settings` of the port-25 smtpd.
    :param listener: :func:`inspection_settings` of the onion listener's smtpd.
    :param port25_label: its ``service/type`` (for the finding's source).
    :param listener_label: the listener's ``service/type``.
    :returns: :data:`Check.INSPECTION_PARITY` warnings (empty when the listener inspects as much).
    """
    findings = []
    where = f"master.cf {listener_label} vs {port25_label}"
    for name in INSPECTION_PARAMETERS:
        theirs, ours = port25.get(name, ""), listener.get(name, "")
        if theirs and theirs != ours:
            findings.append(Finding(Severity.WARNING, Check.INSPECTION_PARITY,
                                    f"the onion listener skips {name} that the port-25 smtpd applies: onion mail "
                                    "bypasses that filter", f"{name}: port 25 = {theirs}; onion listener = "
                                    f"{ours or '(empty)'}", where))
    off = [o for o in INSPECTION_OVERRIDES if o in split_list(listener.get("receive_override_options", ""))
           and o not in split_list(port25.get("receive_override_options", ""))]
    if off:
        findings.append(Finding(Severity.WARNING, Check.INSPECTION_PARITY,
                                f"receive_override_options switches off {', '.join(off)} on the onion listener only",
                                f"receive_override_options = {listener.get('receive_override_options', '')}", where))
    missing = sorted(_policy_services(port25, POLICY_LISTS) - _policy_services(listener, POLICY_LISTS))
    if missing:
        findings.append(Finding(Severity.WARNING, Check.INSPECTION_PARITY,
                                "policy services the port-25 smtpd asks are not asked on the onion listener "
                                "(add them to setup.recipient_restrictions if they suit onion clients)",
                                "check_policy_service " + ", ".join(missing), where))
    return findings


def listener_inspection_findings(config_dir: Path | None, services: list[MasterService], listener: MasterService,
                                 pass_service_name=None) -> list[Finding]:
    """:func:`inspection_parity` of the onion listener's smtpd against the port-25 smtpd of the same Postfix.

    :param config_dir: the Postfix configuration directory.
    :param services: from :func:`onion_gateway.audit.discover.read_master`.
    :param listener: the smtpd behind the onion's target.
    :param pass_service_name: see :func:`port25_smtpd`.
    :returns: the parity warnings; none when there is no port-25 smtpd or it is the listener itself.
    :raises PostfixError: if postconf fails.
    """
    port25 = port25_smtpd(services, pass_service_name)
    if port25 is None or port25.label == listener.label:
        return []
    return inspection_parity(inspection_settings(config_dir, port25), inspection_settings(config_dir, listener),
                             port25.label, listener.label)
