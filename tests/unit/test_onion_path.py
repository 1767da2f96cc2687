"""The onion path's pure logic: limits that fit together, the torrc options, inspection parity."""

from __future__ import annotations

import pytest

from onion_gateway.audit.discover import MasterService
from onion_gateway.audit.policy import Check, Severity, inspection_parity, port25_smtpd
from onion_gateway.errors import ConfigError
from onion_gateway.setup.onionpath import SERVICE_OPTION_NAMES, service_options
from onion_gateway.setup.settings import SENDER_CONCURRENCY, SetupSettings, setup_settings


def test_defaults_fit_together() -> None:
    """The defaults: sender concurrency 20 <= per-circuit count limit 30 < Tor's stream cap 64."""
    s = setup_settings({})
    assert (SENDER_CONCURRENCY, s.listener_connection_count_limit, s.onion_max_streams) == (20, 30, 64)
    assert s.export_circuit_id and s.onion_pow_defenses and s.onion_intro_dos_defense and not s.torsocks_isolation


@pytest.mark.parametrize("table, key", [
    ({"listener_connection_count_limit": 10}, "setup.listener_connection_count_limit"),
    ({"onion_max_streams": 30}, "setup.onion_max_streams"),           # = count limit: Tor kills first
    ({"onion_max_streams": 2, "listener_connection_count_limit": 0}, "setup.onion_max_streams"),
    ({"export_circuit_id": False, "onion_max_streams": 20}, "setup.onion_max_streams"),  # <= concurrency
    ({"listener_connection_rate_limit": -1}, "setup.listener_connection_rate_limit"),
    ({"tor_metrics_port": "0.0.0.0:9035"}, "setup.tor_metrics_port"),
])
def test_limits_that_refuse_a_legitimate_sender_are_refused(table: dict, key: str) -> None:
    """A stream cap at or under the count limit (Tor closes the circuit before Postfix answers 421), a
    concurrency over the count limit, and a metrics port off loopback are errors naming the key."""
    with pytest.raises(ConfigError, match=key):
        setup_settings(table)


def test_unlimited_stream_cap_and_metrics_port_are_accepted() -> None:
    s = setup_settings({"onion_max_streams": 0, "tor_metrics_port": "127.0.0.1:9035",
                        "export_circuit_id": False})
    assert s.onion_max_streams == 0 and str(s.tor_metrics_port) == "127.0.0.1:9035"


def test_service_options_in_order_and_only_what_tor_supports() -> None:
    """Every option by default, in torrc order; an option the installed tor lacks is left out with a note."""
    options, notes = service_options(SetupSettings(), set(SERVICE_OPTION_NAMES))
    assert options == (("HiddenServiceExportCircuitID", "haproxy"), ("HiddenServiceMaxStreams", "64"),
                       ("HiddenServiceMaxStreamsCloseCircuit", "1"), ("HiddenServiceEnableIntroDoSDefense", "1"),
                       ("HiddenServicePoWDefensesEnabled", "1"))
    assert notes == []
    options, notes = service_options(SetupSettings(), set(SERVICE_OPTION_NAMES) - {"HiddenServicePoWDefensesEnabled"})
    assert "HiddenServicePoWDefensesEnabled" not in dict(options)
    assert len(notes) == 1 and "HiddenServicePoWDefensesEnabled" in notes[0]


def test_service_options_switched_off() -> None:
    settings = setup_settings({"export_circuit_id": False, "onion_max_streams_close_circuit": False,
                               "onion_pow_defenses": False, "onion_intro_dos_defense": False})
    options, _ = service_options(settings, set(SERVICE_OPTION_NAMES))
    assert options == (("HiddenServiceMaxStreams", "64"),)


def _service(name: str, type_: str, command: str) -> MasterService:
    return MasterService(name, type_, "n", command)


@pytest.mark.parametrize("services, expected", [
    ([_service("smtp", "inet", "smtpd"), _service("2525", "inet", "smtpd")], "smtp/inet"),
    ([_service("127.0.0.1:25", "inet", "smtpd")], "127.0.0.1:25/inet"),
    ([_service("smtp", "inet", "postscreen"), _service("smtpd", "pass", "smtpd")], "smtpd/pass"),
    ([_service("submission", "inet", "smtpd")], None),
])
def test_port25_smtpd(services: list[MasterService], expected: str | None) -> None:
    found = port25_smtpd(services)
    assert (found.label if found else None) == expected


def test_parity_reports_each_skipped_inspection() -> None:
    """A milter, a content filter, header checks switched off and a policy service the port-25 smtpd has
    and the onion listener lacks: one warning each; equal settings give none."""
    port25 = {"smtpd_milters": "inet:127.0.0.1:8891", "content_filter": "amavis:[127.0.0.1]:10024",
              "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination, "
                                              "check_policy_service unix:private/policy",
              "receive_override_options": ""}
    listener = {"smtpd_milters": "", "content_filter": "amavis:[127.0.0.1]:10024",
                "smtpd_recipient_restrictions": "", "receive_override_options": "no_header_body_checks"}
    findings = inspection_parity(port25, listener, "smtp/inet", "127.0.0.1:2525/inet")
    assert all(f.check is Check.INSPECTION_PARITY and f.severity is Severity.WARNING for f in findings)
    values = [f.value for f in findings]
    assert values[0].startswith("smtpd_milters: port 25 = inet:127.0.0.1:8891; onion listener = (empty)")
    assert any("no_header_body_checks" in f.title for f in findings)
    assert any(v == "check_policy_service unix:private/policy" for v in values)
    assert len(findings) == 3
    assert inspection_parity(port25, dict(port25), "smtp/inet", "x/inet") == []


def test_parity_follows_restriction_classes() -> None:
    port25 = {"smtpd_recipient_restrictions": "reject_unauth_destination, greylist",
              "greylist": "check_policy_service inet:127.0.0.1:10023"}
    listener = {"smtpd_recipient_restrictions": "reject_unauth_destination, greylist",
                "greylist": "check_policy_service inet:127.0.0.1:10023"}
    assert inspection_parity(port25, listener, "a/inet", "b/inet") == []
    assert len(inspection_parity(port25, {"smtpd_recipient_restrictions": ""}, "a/inet", "b/inet")) == 1
