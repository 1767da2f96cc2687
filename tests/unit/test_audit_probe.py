"""Reply classification and the probe catalogue (no server needed)."""

from __future__ import annotations

import pytest

from onion_gateway.audit.probe import (ProbeContext, Reply, Verdict, catalogue, classify_mail, classify_rcpt,
                                       other_onion, xclient_spec)
from onion_gateway.onion import OnionCheck, check_onion


@pytest.mark.parametrize("code, text, verdict", [
    (250, b"2.1.5 Ok", Verdict.ACCEPTED),
    (251, b"2.1.5 User not local; will forward", Verdict.ACCEPTED),
    (554, b"5.7.1 <r@example.com>: Relay access denied", Verdict.DENIED),
    (454, b"4.7.1 <r@example.com>: Relay access denied", Verdict.DENIED),          # soft_bounce / defer_unauth
    (550, b"Relay access denied", Verdict.DENIED),                                  # no enhanced code
    (554, b"5.7.1 <localhost[127.0.0.1]>: Client host rejected: Access denied", Verdict.DENIED),
    (530, b"5.7.0 Authentication required", Verdict.AUTH_REQUIRED),
    (450, b"4.1.2 <r@example.com>: Recipient address rejected: Domain not found", Verdict.INCONCLUSIVE),
    (550, b"5.1.2 <r@example.com>: Recipient address rejected: Domain not found", Verdict.INCONCLUSIVE),
    (556, b"5.1.10 <r@example.com>: Recipient address rejected: Domain example.com does not accept mail",
     Verdict.INCONCLUSIVE),
    (550, b"5.1.1 <r@example.com>: Recipient address rejected: User unknown", Verdict.INCONCLUSIVE),
    (450, b"4.4.0 <r@example.com>: Recipient address rejected: unable to look up", Verdict.INCONCLUSIVE),
    (421, b"4.4.2 mx.example Error: timeout exceeded", Verdict.INCONCLUSIVE),
    (-1, b"", Verdict.INCONCLUSIVE),
])
def test_rcpt_reply_classification(code, text, verdict):
    assert classify_rcpt(Reply.from_smtplib(code, text)) is verdict


def test_enhanced_code_is_split_from_the_text_of_a_multiline_reply():
    reply = Reply.from_smtplib(554, b"5.7.1 first line\n5.7.1 second line")
    assert (reply.code, reply.enhanced) == (554, "5.7.1")
    assert reply.text == "first line 5.7.1 second line"
    assert str(reply) == "554 5.7.1 first line 5.7.1 second line"


def test_reply_without_enhanced_code():
    reply = Reply.from_smtplib(250, b"Ok")
    assert (reply.enhanced, reply.text) == ("", "Ok")


@pytest.mark.parametrize("code, verdict", [
    (250, None),                       # go on to RCPT
    (553, Verdict.SENDER_REFUSED),
    (554, Verdict.SENDER_REFUSED),
    (530, Verdict.AUTH_REQUIRED),
    (451, Verdict.INCONCLUSIVE),
])
def test_mail_reply_classification(code, verdict):
    assert classify_mail(Reply(code, "", "")) is verdict


def test_only_refusals_count_as_safe():
    assert {v for v in Verdict if v.safe} == {Verdict.DENIED, Verdict.AUTH_REQUIRED, Verdict.SENDER_REFUSED}


ONION = other_onion()


def test_catalogue_covers_the_issue_list():
    ctx = ProbeContext(test_domain="d.example", control_recipient="postmaster@lab.test", own_domain="lab.test",
                       hostname="mx.lab.test", own_onion=ONION)
    specs = {s.name: s for s in catalogue(ctx)}
    rcpt = {name: s.rcpt_to[-1] for name, s in specs.items()}
    senders = {name: s.mail_from for name, s in specs.items()}
    assert senders["null_sender"] == "<>"
    assert senders["own_onion_sender"] == f"<audit@{ONION}>"
    assert senders["unqualified_sender"] == "<audit>"
    assert senders["bang_path_sender"] == "<d.example!audit>"
    assert rcpt["percent_hack_literal"] == "<relay-test%d.example@[127.0.0.1]>"
    assert rcpt["percent_hack_hostname"] == "<relay-test%d.example@mx.lab.test>"
    assert rcpt["percent_hack_own_onion"] == f"<relay-test%d.example@{ONION}>"
    assert rcpt["quoted_literal"] == '<"relay-test@d.example"@[127.0.0.1]>'
    assert rcpt["source_route"] == "<@[127.0.0.1]:relay-test@d.example>"
    assert rcpt["bang_path_literal"] == "<d.example!relay-test@[127.0.0.1]>"
    assert rcpt["unbracketed"] == "relay-test@d.example"
    assert rcpt["foreign_literal"] == "<relay-test@[192.0.2.1]>"
    assert rcpt["trailing_dot"] == "<relay-test@d.example.>"
    assert specs["local_then_foreign"].rcpt_to == ("<postmaster@lab.test>", "<relay-test@d.example>")
    assert len(specs) == 25


def test_catalogue_leaves_out_what_it_cannot_know():
    ctx = ProbeContext(test_domain="d.example", control_recipient=None, own_domain=None, hostname="mx")
    names = {s.name for s in catalogue(ctx)}
    assert not names & {"own_onion_sender", "percent_hack_own_onion", "own_domain_sender", "local_then_foreign"}


def test_no_probe_command_carries_a_line_break():
    ctx = ProbeContext(test_domain="d.example", control_recipient="a@b.example", own_domain="b.example",
                       hostname="mx", own_onion=ONION)
    for spec in catalogue(ctx):
        assert not any(c in part for part in (spec.mail_from, *spec.rcpt_to) for c in "\r\n")


def test_other_onion_is_a_valid_v3_address():
    assert check_onion(ONION) is OnionCheck.VALID


def test_xclient_claims_a_login_only_with_sasl():
    ctx = ProbeContext(test_domain="d.example", control_recipient=None, own_domain=None, hostname="mx",
                       xclient_addr="192.0.2.1")
    assert xclient_spec(ctx).xclient == "ADDR=192.0.2.1 NAME=[UNAVAILABLE]"
    ctx = ProbeContext(test_domain="d.example", control_recipient=None, own_domain=None, hostname="mx",
                       xclient_login=True)
    assert xclient_spec(ctx).xclient.endswith(" LOGIN=audit")


@pytest.mark.parametrize("verb", ["DATA", "data", "BDAT"])
def test_session_refuses_to_send_message_content(verb):
    from onion_gateway.address import ListenAddress
    from onion_gateway.audit.probe import Session

    with pytest.raises(ValueError, match="never sends message content"):
        Session(ListenAddress(host="127.0.0.1", port=25), "localhost", 1.0).command(verb)


def test_proxy_header_is_what_tor_sends():
    from onion_gateway.audit.probe import ProxyHeader

    assert ProxyHeader().encode() == b"PROXY TCP6 fc00:dead:beef:4dad::1 ::1 12345 25\r\n"
    # a forged IPv4 source gets an IPv4 destination: Postfix refuses mixed families
    assert ProxyHeader(source="127.0.0.1").encode() == b"PROXY TCP4 127.0.0.1 127.0.0.1 12345 25\r\n"


def test_sender_table_keys_become_probes_and_the_forged_proxy_probe_needs_a_header():
    from onion_gateway.audit.probe import ProxyHeader, proxy_specs

    ctx = ProbeContext("example.com", None, None, "mx.lab.test", sender_keys=("audit@partner.example",))
    spec = next(s for s in catalogue(ctx) if s.name == "table_sender_1")
    assert (spec.mail_from, spec.rcpt_to) == ("<audit@partner.example>", ("<relay-test@example.com>",))
    assert proxy_specs(ctx) == []
    assert proxy_specs(ProbeContext("example.com", None, None, "h", proxy=ProxyHeader())) == []   # nothing trusted
    [forged] = proxy_specs(ProbeContext("example.com", None, None, "h", proxy=ProxyHeader(),
                                        proxy_forge_addr="127.0.0.1"))
    assert forged.proxy_source == "127.0.0.1"


@pytest.mark.parametrize("key, address", [
    ("partner.example", "audit@partner.example"), (".partner.example", "audit@sub.partner.example"),
    ("boss@partner.example", "boss@partner.example"), ("postmaster@", "postmaster@example.com"),
])
def test_sender_keys_from_an_access_table(tmp_path, key, address):
    from onion_gateway.audit.policy import sender_keys
    from tests.unit.test_audit_policy import policy

    table = tmp_path / "senders"
    table.write_text(f"{key} OK\nspam.example REJECT\n")
    p = policy(smtpd_relay_restrictions=f"check_sender_access texthash:{table}, reject_unauth_destination")
    assert sender_keys(p, "example.com") == [address]
