"""Restriction-list analysis on hand-built effective policies (no postconf needed), and report outcomes."""

from __future__ import annotations

import json

import pytest

from onion_gateway.audit.policy import Check, EffectivePolicy, Setting, Severity, analyse
from onion_gateway.audit.tables import address_in_list, loopback_is_interface
from onion_gateway.audit.probe import ProbeResult, ProbeSpec, Reply, Verdict
from onion_gateway.audit.report import AuditReport, Outcome, overall_exit_code, to_json, to_text
from onion_gateway.postfix_syntax import parse_restrictions, split_list

# Postfix 3.7 defaults at compatibility_level 3.6, with the hardened listener's relay lists.
BASE = {
    "compatibility_level": "3.6", "mynetworks": "", "mynetworks_style": "host", "inet_interfaces": "127.0.0.1",
    "proxy_interfaces": "", "smtpd_client_restrictions": "", "smtpd_helo_restrictions": "",
    "smtpd_sender_restrictions": "", "smtpd_relay_restrictions": "reject_unauth_destination",
    "smtpd_recipient_restrictions": "reject_unauth_destination", "smtpd_authorized_xclient_hosts": "",
    "smtpd_authorized_xforward_hosts": "", "permit_mx_backup_networks": "", "relay_domains": "",
    "mydestination": "", "virtual_mailbox_domains": "lab.test", "virtual_alias_domains": "",
    "allow_untrusted_routing": "no", "resolve_dequoted_address": "yes", "soft_bounce": "no",
    "smtpd_sasl_auth_enable": "no", "myhostname": "mx.lab.test", "mydomain": "lab.test",
    "myorigin": "mx.lab.test", "queue_directory": "/var/spool/postfix", "syslog_name": "postfix/onion",
    "smtpd_restriction_classes": "",
}


def policy(**changes) -> EffectivePolicy:
    settings = {k: Setting(v, "default") for k, v in BASE.items()}
    for name, value in changes.items():
        settings[name] = Setting(value, "master.cf 127.0.0.1:2526/inet -o " + name)
    return EffectivePolicy("127.0.0.1:2526/inet", settings)


def checks(p: EffectivePolicy, severity: Severity = Severity.CRITICAL) -> set[Check]:
    return {f.check for f in analyse(p) if f.severity is severity}


def test_split_and_parse_keep_brace_groups_and_table_arguments():
    value = "permit_mynetworks,check_policy_service { inet:127.0.0.1:9, timeout=1s } reject_unauth_destination"
    assert split_list(value) == ["permit_mynetworks", "check_policy_service", "{ inet:127.0.0.1:9, timeout=1s }",
                                 "reject_unauth_destination"]
    assert parse_restrictions("check_sender_access hash:/x, Reject_Unauth_Destination") == [
        ("check_sender_access", "hash:/x"), ("reject_unauth_destination", None)]


def test_hardened_listener_has_no_critical_or_warning_finding():
    assert analyse(policy()) == []


def test_stock_relay_list_with_loopback_mynetworks():
    p = policy(mynetworks="127.0.0.0/8 [::1]/128", smtpd_relay_restrictions="permit_mynetworks, reject_unauth_destination",
               smtpd_recipient_restrictions="")
    [finding] = [f for f in analyse(p) if f.check is Check.MYNETWORKS_LOOPBACK]
    assert finding.severity is Severity.CRITICAL
    assert "mynetworks = 127.0.0.0/8 [::1]/128" in finding.value
    assert "mynetworks: master.cf 127.0.0.1:2526/inet -o mynetworks" in finding.source


def test_permit_masked_by_the_other_list_is_only_a_warning():
    p = policy(mynetworks="127.0.0.0/8", smtpd_relay_restrictions="permit_mynetworks, reject_unauth_destination")
    assert Check.MYNETWORKS_LOOPBACK in checks(p, Severity.WARNING)
    assert not checks(p)


def test_mynetworks_without_loopback_is_harmless():
    p = policy(mynetworks="192.0.2.0/24", smtpd_relay_restrictions="permit_mynetworks, reject_unauth_destination",
               smtpd_recipient_restrictions="")
    assert not checks(p)


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.0/8", True), ("127.0.0.1", True), ("[::1]/128 127.0.0.1/32", True), ("!127.0.0.1 127.0.0.0/8", False),
    ("192.0.2.0/24, 10.0.0.0/8", False), ("localhost", True), ("", False),
])
def test_address_in_list(value, expected):
    assert address_in_list("127.0.0.1", "mynetworks", value) is expected


def test_address_list_file(tmp_path):
    f = tmp_path / "nets"
    f.write_text("192.0.2.0/24\n127.0.0.1\n")
    assert address_in_list("127.0.0.1", "mynetworks", str(f)) is True


@pytest.mark.parametrize("interfaces, expected", [
    ("all", True), ("loopback-only", True), ("127.0.0.1, 192.0.2.1", True), ("192.0.2.1", False)])
def test_loopback_is_interface(interfaces, expected):
    assert loopback_is_interface(interfaces) is expected


def test_permit_inet_interfaces():
    p = policy(smtpd_relay_restrictions="permit_inet_interfaces reject_unauth_destination",
               smtpd_recipient_restrictions="")
    assert Check.INET_INTERFACES in checks(p)


def test_bare_permit_before_reject_while_other_list_never_rejects():
    p = policy(smtpd_relay_restrictions="", smtpd_recipient_restrictions="permit, reject_unauth_destination")
    assert Check.BARE_PERMIT in checks(p)
    assert Check.EMPTY_RELAY_RESTRICTIONS in checks(p, Severity.WARNING)


def test_access_table_that_answers_ok(tmp_path):
    table = tmp_path / "sender.regexp"
    table.write_text("/@lab\\.test$/ OK\n/@spam\\.example$/ REJECT\n")
    p = policy(smtpd_relay_restrictions=f"check_sender_access regexp:{table}, reject_unauth_destination",
               smtpd_recipient_restrictions="")
    [finding] = [f for f in analyse(p) if f.check is Check.ACCESS_MAP_OK]
    assert finding.severity is Severity.CRITICAL and "/@lab\\.test$/ OK" in finding.value


def test_access_table_without_ok_is_harmless(tmp_path):
    table = tmp_path / "sender.regexp"
    table.write_text("/@spam\\.example$/ REJECT\n")
    p = policy(smtpd_relay_restrictions=f"check_sender_access regexp:{table}, reject_unauth_destination",
               smtpd_recipient_restrictions="")
    assert analyse(p) == []


def test_static_ok_client_access_permits_everyone():
    p = policy(smtpd_relay_restrictions="check_client_access static:OK, reject_unauth_destination",
               smtpd_recipient_restrictions="")
    assert Check.ACCESS_MAP_OK in checks(p)


def test_policy_service_before_the_reject_is_a_warning():
    p = policy(smtpd_relay_restrictions="check_policy_service inet:127.0.0.1:9, reject_unauth_destination",
               smtpd_recipient_restrictions="")
    assert Check.POLICY_SERVICE in checks(p, Severity.WARNING)


def test_warn_if_reject_does_not_count_as_a_reject():
    p = policy(mynetworks="127.0.0.0/8", smtpd_relay_restrictions="",
               smtpd_recipient_restrictions="warn_if_reject reject_unauth_destination, permit_mynetworks, "
                                            "reject_unauth_destination")
    assert Check.MYNETWORKS_LOOPBACK in checks(p)


def test_permit_mx_backup_without_networks():
    p = policy(smtpd_relay_restrictions="permit_mx_backup, reject_unauth_destination",
               smtpd_recipient_restrictions="")
    assert Check.MX_BACKUP in checks(p)
    p = policy(smtpd_relay_restrictions="permit_mx_backup, reject_unauth_destination",
               smtpd_recipient_restrictions="", permit_mx_backup_networks="192.0.2.0/24")
    assert Check.MX_BACKUP not in checks(p)


@pytest.mark.parametrize("relay_domains", ["onion", ".onion", "lab.test, *"])
def test_relay_domains_covering_onions(relay_domains):
    assert Check.RELAY_DOMAINS_ONION in checks(policy(relay_domains=relay_domains))


def test_relay_domains_naming_one_partner_onion_is_fine():
    assert not checks(policy(relay_domains="partner.example, abc.onion"))


@pytest.mark.parametrize("changes, check, severity", [
    ({"smtpd_authorized_xclient_hosts": "127.0.0.0/8"}, Check.XCLIENT_LOOPBACK, Severity.CRITICAL),
    ({"smtpd_authorized_xforward_hosts": "127.0.0.1"}, Check.XFORWARD_LOOPBACK, Severity.WARNING),
    ({"allow_untrusted_routing": "yes"}, Check.UNTRUSTED_ROUTING, Severity.WARNING),
    ({"resolve_dequoted_address": "no"}, Check.DEQUOTED, Severity.WARNING),
    ({"soft_bounce": "yes"}, Check.SOFT_BOUNCE, Severity.WARNING),
    ({"smtpd_sasl_auth_enable": "yes"}, Check.SASL_OFFERED, Severity.WARNING),
    ({"compatibility_level": "2"}, Check.COMPATIBILITY, Severity.INFO),
])
def test_parameter_findings(changes, check, severity):
    assert check in checks(policy(**changes), severity)


def test_listener_on_all_interfaces_is_reported():
    [finding] = analyse(policy(), all_interfaces=True, bound="*:2526")
    assert (finding.check, finding.value) == (Check.ALL_INTERFACES, "*:2526")


# --- outcome and exit codes ---------------------------------------------------------------------------

def _probe(name: str, code: int, verdict: Verdict) -> ProbeResult:
    return ProbeResult(ProbeSpec(name, "<a@d.example>", ("<r@d.example>",)), verdict, "rcpt", Reply(code, "", ""))


CONTROL_OK = _probe("control", 250, Verdict.ACCEPTED)
CONTROL_BAD = _probe("control", 554, Verdict.DENIED)
DENIED = _probe("p", 554, Verdict.DENIED)


@pytest.mark.parametrize("control, probes, critical, outcome", [
    (CONTROL_OK, [DENIED], False, Outcome.SAFE),
    (CONTROL_OK, [DENIED, _probe("q", 250, Verdict.ACCEPTED)], False, Outcome.OPEN_RELAY),
    (CONTROL_BAD, [_probe("q", 250, Verdict.ACCEPTED)], True, Outcome.OPEN_RELAY),
    (CONTROL_OK, [DENIED], True, Outcome.RISKY),
    (CONTROL_BAD, [DENIED], False, Outcome.INCONCLUSIVE),           # rejects everything: never SAFE
    (None, [DENIED], False, Outcome.INCONCLUSIVE),                  # no control recipient known
    (CONTROL_OK, [DENIED, _probe("q", 450, Verdict.INCONCLUSIVE)], False, Outcome.INCONCLUSIVE),
    (CONTROL_OK, [DENIED, _probe("x", 0, Verdict.SKIPPED)], False, Outcome.SAFE),
])
def test_outcome(control, probes, critical, outcome):
    report = AuditReport("127.0.0.1:25", control=control, probes=probes,
                         findings=analyse(policy(soft_bounce="yes", smtpd_authorized_xclient_hosts="127.0.0.1"
                                                 if critical else "")))
    assert report.outcome is outcome
    assert report.exit_code == outcome.value


def test_unreachable_and_worst_of_several():
    unreachable = AuditReport("127.0.0.1:9", error="connection refused")
    safe = AuditReport("127.0.0.1:25", control=CONTROL_OK, probes=[DENIED])
    assert unreachable.exit_code == 69
    assert overall_exit_code([safe, unreachable]) == 69
    assert overall_exit_code([safe]) == 0
    assert overall_exit_code([]) == 3


def test_json_shape_and_text():
    report = AuditReport("127.0.0.1:25", listener={"service": "127.0.0.1:25/inet"}, client_address="127.0.0.1",
                         policy=policy(), control=CONTROL_OK, probes=[DENIED])
    document = json.loads(to_json([report]))
    assert document["exit_code"] == 0
    [r] = document["reports"]
    assert set(r) == {"target", "listener", "client_address", "outcome", "exit_code", "reasons",
                      "effective_policy", "findings", "control", "probes", "error", "probed"}
    assert r["effective_policy"]["mynetworks"] == {"value": "", "source": "default"}
    assert r["probes"][0]["code"] == 554 and r["probes"][0]["verdict"] == "denied"
    assert "SAFE (exit 0)" in to_text([report])


def test_static_only_is_never_safe():
    assert AuditReport("127.0.0.1:25", probed=False).outcome is Outcome.INCONCLUSIVE
    risky = AuditReport("127.0.0.1:25", probed=False,
                        findings=analyse(policy(smtpd_authorized_xclient_hosts="127.0.0.1")))
    assert risky.outcome is Outcome.RISKY


def test_non_loopback_client_is_judged_by_its_own_address():
    """A HiddenServicePort target on a public address: Postfix sees the host's own address, not 127.0.0.1."""
    p = policy(mynetworks="127.0.0.0/8 192.0.2.10/32",
               smtpd_relay_restrictions="permit_mynetworks, reject_unauth_destination", smtpd_recipient_restrictions="")
    p.client_address = "192.0.2.10"
    [finding] = [f for f in analyse(p) if f.check is Check.MYNETWORKS_LOOPBACK]
    assert "192.0.2.10" in finding.title and finding.severity is Severity.CRITICAL
    assert loopback_is_interface("loopback-only", "192.0.2.10") is False
    assert loopback_is_interface("127.0.0.1, 192.0.2.10", "192.0.2.10") is True


@pytest.mark.parametrize("key, matches", [("127.0.0.1", True), ("127", True), ("127.0.0", True),
                                          ("127.0.0.0/8", True), ("localhost", True), ("10", False),
                                          ("192.0.2.0/24", False)])
def test_client_access_key_matching_the_tor_client(tmp_path, key, matches):
    table = tmp_path / "clients"
    table.write_text(f"{key}\tOK\n")
    kind = "cidr" if "/" in key else "texthash"
    p = policy(smtpd_relay_restrictions=f"check_client_access {kind}:{table}, reject_unauth_destination",
               smtpd_recipient_restrictions="")
    # the Tor client's address/name permits everyone; an OK for other clients is out of the attacker's reach
    assert (Check.ACCESS_MAP_OK in checks(p)) is matches


def test_restriction_class_is_walked_in_place():
    p = policy(smtpd_restriction_classes="trusted", trusted="permit_mynetworks", mynetworks="127.0.0.0/8",
               smtpd_relay_restrictions="trusted, reject_unauth_destination", smtpd_recipient_restrictions="")
    assert Check.MYNETWORKS_LOOPBACK in checks(p)
    p = policy(smtpd_restriction_classes="strict", strict="reject_unauth_destination", mynetworks="127.0.0.0/8",
               smtpd_relay_restrictions="strict, permit_mynetworks", smtpd_recipient_restrictions="")
    assert not checks(p)


def test_may_permit_in_both_lists_is_not_masked(tmp_path):
    table = tmp_path / "sender.regexp"
    table.write_text("/@lab\\.test$/ OK\n")
    both = f"check_sender_access regexp:{table}, reject_unauth_destination"
    p = policy(smtpd_relay_restrictions=both, smtpd_recipient_restrictions=both)
    assert [f.severity for f in analyse(p) if f.check is Check.ACCESS_MAP_OK] == [Severity.CRITICAL] * 2


def test_unevaluable_mynetworks_table_is_a_warning():
    p = policy(mynetworks="hash:/nonexistent/mynetworks", smtpd_relay_restrictions="permit_mynetworks, reject_unauth_destination",
               smtpd_recipient_restrictions="")
    [finding] = [f for f in analyse(p) if f.check is Check.MYNETWORKS_LOOPBACK]
    assert finding.severity is Severity.WARNING


@pytest.mark.parametrize("changes, expected", [
    ({}, "postmaster@lab.test"),
    ({"virtual_mailbox_domains": "", "mydestination": "localhost, mx.lab.test"}, "postmaster@mx.lab.test"),
    ({"virtual_mailbox_domains": "", "relay_domains": ".onion, partner.example"}, "postmaster@partner.example"),
    ({"virtual_mailbox_domains": "abc.onion, lab.test"}, "postmaster@lab.test"),
    ({"virtual_mailbox_domains": "abc.onion"}, "postmaster@abc.onion"),
    ({"virtual_mailbox_domains": "", "relay_domains": "*"}, None),
])
def test_control_recipient_is_taken_from_the_served_domains(changes, expected):
    from onion_gateway.audit import _control_recipient

    assert _control_recipient(policy(**changes)) == expected


def test_client_restrictions_that_reject_everyone_mask_every_relay_permit():
    p = policy(mynetworks="127.0.0.0/8", smtpd_relay_restrictions="permit_mynetworks, reject_unauth_destination",
               smtpd_recipient_restrictions="", smtpd_client_restrictions="reject")
    [finding] = analyse(p)
    assert (finding.check, finding.severity) == (Check.MYNETWORKS_LOOPBACK, Severity.WARNING)
    assert "masked for now by smtpd_client_restrictions" in finding.title
    p = policy(mynetworks="127.0.0.0/8", smtpd_relay_restrictions="permit_mynetworks, reject_unauth_destination",
               smtpd_recipient_restrictions="", smtpd_client_restrictions="permit_mynetworks, reject")
    assert Check.MYNETWORKS_LOOPBACK in checks(p)


# --- client-address checks on a PROXY listener (every onion client is a Tor circuit address) ----------------

def client_findings(p: EffectivePolicy) -> list[tuple[str, str, str]]:
    return [(f.severity.value, f.value, f.title.split(":")[0]) for f in analyse(p) if f.check is Check.CLIENT_ADDRESS_CHECK]


def test_reverse_dns_and_dnsbl_checks_inherited_by_a_proxy_listener_are_warnings():
    p = policy(smtpd_upstream_proxy_protocol="haproxy",
               smtpd_client_restrictions="permit_mynetworks, reject_unknown_reverse_client_hostname, "
                                         "reject_rbl_client zen.spamhaus.org",
               smtpd_helo_restrictions="reject_invalid_helo_hostname, reject_unknown_client",
               smtpd_data_restrictions="reject_unauth_pipelining, check_client_access cidr:/etc/postfix/c.cidr")
    assert client_findings(p) == [
        ("warning", "smtpd_client_restrictions: reject_unknown_reverse_client_hostname",
         "every onion client is rejected"),
        ("warning", "smtpd_client_restrictions: reject_rbl_client zen.spamhaus.org",
         "DNSBL lookups of Tor circuit addresses"),
        ("warning", "smtpd_helo_restrictions: reject_unknown_client", "every onion client is rejected"),
        ("info", "smtpd_data_restrictions: check_client_access cidr:/etc/postfix/c.cidr",
         "a table keyed by client address or name on Tor circuit addresses"),
    ]
    [finding] = [f for f in analyse(p) if f.value.endswith("reject_unknown_client")]
    assert "450" in finding.title and finding.source == "master.cf 127.0.0.1:2526/inet -o smtpd_helo_restrictions"


def test_client_address_checks_without_the_proxy_protocol_are_not_reported():
    """Without Tor's PROXY header every onion client is 127.0.0.1, which has a name (localhost)."""
    p = policy(smtpd_client_restrictions="reject_unknown_client_hostname, reject_rbl_client zen.spamhaus.org")
    assert client_findings(p) == []


@pytest.mark.parametrize("value, kept, removed", [
    ("permit_mynetworks, reject_unknown_reverse_client_hostname",
     "permit_mynetworks", ["reject_unknown_reverse_client_hostname"]),
    ("reject_unknown_client_hostname", "", ["reject_unknown_client_hostname"]),
    # a warn_if_reject prefix goes with its restriction, never onto the next one
    ("warn_if_reject reject_unknown_client, reject_non_fqdn_helo_hostname",
     "reject_non_fqdn_helo_hostname", ["reject_unknown_client"]),
    ("permit_dnswl_client list.dnswl.org, reject_rhsbl_reverse_client dbl.example,"
     "check_policy_service { inet:127.0.0.1:9, timeout=1s }, check_reverse_client_hostname_access pcre:/x",
     "check_policy_service { inet:127.0.0.1:9, timeout=1s }",
     ["permit_dnswl_client", "reject_rhsbl_reverse_client", "check_reverse_client_hostname_access"]),
    ("reject_invalid_helo_hostname reject_non_fqdn_sender", "reject_invalid_helo_hostname reject_non_fqdn_sender", []),
])
def test_without_client_checks(value, kept, removed):
    from onion_gateway.audit.policy import without_client_checks

    remaining, gone = without_client_checks(value)
    assert remaining == kept
    assert [name for name, _ in gone] == removed


def test_a_refused_control_names_the_reverse_dns_check_as_the_likely_cause():
    p = policy(smtpd_upstream_proxy_protocol="haproxy",
               smtpd_client_restrictions="reject_unknown_reverse_client_hostname, reject_rbl_client zen.example")
    report = AuditReport("127.0.0.1:2526", control=CONTROL_BAD, probes=[DENIED], findings=analyse(p))
    [reason] = [r for r in report.reasons if r.startswith("control recipient refused")]
    assert reason.endswith("probes prove nothing -- every onion client is rejected: no reverse DNS for Tor circuit "
                           "addresses (fc00:dead:beef:4dad::/64), so this defers all onion mail with 450 "
                           "(smtpd_client_restrictions: reject_unknown_reverse_client_hostname)"), reason
    plain = AuditReport("127.0.0.1:2526", control=CONTROL_BAD, probes=[DENIED], findings=analyse(policy()))
    assert [r for r in plain.reasons if r.startswith("control")][0].endswith("probes prove nothing")
