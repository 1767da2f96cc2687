"""Client tables answered by Postfix's own ``postmap -q``: pattern keys, REJECT answers, restriction-list
and restriction-class answers, and TLS client-certificate permits (no Postfix instance needed)."""

from __future__ import annotations

import pytest

from onion_gateway.audit.policy import Check, Severity, analyse
from onion_gateway.audit.tables import Action, classify_answer, client_keys
from tests.unit.test_audit_policy import policy

TLS = {"smtpd_tls_CAfile": "/etc/postfix/ca.pem", "smtpd_tls_CApath": "", "smtpd_tls_ask_ccert": "yes",
       "relay_clientcerts": ""}


def relay(value: str, **changes):
    return policy(smtpd_relay_restrictions=value, smtpd_recipient_restrictions="", **changes)


def critical(p) -> set[Check]:
    return {f.check for f in analyse(p) if f.severity is Severity.CRITICAL}


@pytest.mark.parametrize("text, action", [
    ("OK", Action.PERMIT), ("RELAY", Action.PERMIT), ("200", Action.PERMIT), ("REJECT no", Action.REJECT),
    ("554 go away", Action.REJECT), ("DEFER", Action.REJECT), ("DUNNO", Action.NEXT), ("WARN x", Action.NEXT),
    ("trusted", Action.RESTRICTIONS), ("permit_auth_destination, permit", Action.RESTRICTIONS),
])
def test_access_answers(text, action):
    assert classify_answer(text) is action


def test_client_keys_follow_smtpd_order():
    assert client_keys("hash:/x", "127.0.0.1") == ["localhost", "127.0.0.1", "127.0.0", "127.0", "127"]
    assert client_keys("regexp:/x", "127.0.0.1") == ["localhost", "127.0.0.1"]
    assert client_keys("cidr:/x", "fc00:dead:beef:4dad::1") == ["fc00:dead:beef:4dad::1"]
    assert client_keys("hash:/x", "fc00:dead:beef:4dad::1") == [
        "fc00:dead:beef:4dad::1", "fc00:dead:beef:4dad", "fc00:dead:beef", "fc00:dead", "fc00"]


@pytest.mark.parametrize("kind, line", [("regexp", "/^127\\./ OK"), ("pcre", "/^localhost$/ OK"),
                                        ("regexp", "/^127\\.0\\.0\\.1$/ permit_auth_destination, permit")])
def test_pattern_client_table_that_permits_the_tor_client_is_critical(tmp_path, kind, line):
    table = tmp_path / f"clients.{kind}"
    table.write_text(line + "\n")
    p = relay(f"check_client_access {kind}:{table}, reject_unauth_destination")
    [finding] = [f for f in analyse(p) if f.check is Check.ACCESS_MAP_OK]
    assert finding.severity is Severity.CRITICAL
    assert "looked up as " in finding.value, finding.value      # names the key that matched and the answer


def test_client_table_answering_a_restriction_class(tmp_path):
    table = tmp_path / "clients"
    table.write_text("127.0.0.1 trusted\n")
    p = relay(f"check_client_access texthash:{table}, reject_unauth_destination",
              smtpd_restriction_classes="trusted", trusted="permit")
    [finding] = analyse(p)
    assert (finding.check, finding.severity) == (Check.ACCESS_MAP_OK, Severity.CRITICAL)
    assert finding.title.startswith("check_client_access answers 'trusted' for the Tor client: bare 'permit'")


def test_client_table_reject_ahead_of_permit_mynetworks_is_safe(tmp_path):
    table = tmp_path / "clients.cidr"
    table.write_text("127.0.0.0/8 REJECT onion clients may not relay\n")
    p = relay(f"permit_auth_destination, check_client_access cidr:{table}, permit_mynetworks, "
              "reject_unauth_destination", mynetworks="127.0.0.0/8")
    assert analyse(p) == []


def test_client_table_for_other_clients_leaves_permit_mynetworks_critical(tmp_path):
    table = tmp_path / "clients.cidr"
    table.write_text("192.0.2.0/24 REJECT\n")
    p = relay(f"check_client_access cidr:{table}, permit_mynetworks, reject_unauth_destination",
              mynetworks="127.0.0.0/8")
    assert Check.MYNETWORKS_LOOPBACK in critical(p)


def test_unreadable_client_table_is_a_warning():
    p = relay("check_client_access hash:/nonexistent/clients, reject_unauth_destination")
    [finding] = analyse(p)
    assert (finding.check, finding.severity) == (Check.ACCESS_MAP_OPAQUE, Severity.WARNING)


def test_permit_tls_all_clientcerts_is_never_safe():
    p = relay("permit_tls_all_clientcerts, reject_unauth_destination", **TLS)
    [finding] = [f for f in analyse(p) if f.check is Check.TLS_CLIENTCERT]
    assert finding.severity is Severity.CRITICAL
    assert "smtpd_tls_CAfile = /etc/postfix/ca.pem" in finding.value


def test_permit_tls_clientcerts_needs_relay_clientcerts(tmp_path):
    assert analyse(relay("permit_tls_clientcerts, reject_unauth_destination", **TLS)) == []
    p = relay("permit_tls_clientcerts, reject_unauth_destination", **{**TLS, "relay_clientcerts": "hash:/x"})
    assert Check.TLS_CLIENTCERT in critical(p)

