"""setup and audit-open-relay together: the listener setup produces passes the audit (issue 4 "Done when").

One private Postfix instance whose main.cf trusts loopback in every way an smtpd can inherit
(mynetworks 127.0.0.0/8 with ``permit_mynetworks`` first in both relay lists, XCLIENT and XFORWARD for
127.0.0.1, ``allow_untrusted_routing = yes``): its stock smtpd is the deliberately open instance, and
the hardened listener setup adds to the same configuration must still be safe. tor runs with
``DisableNetwork 1``; the probes talk to loopback only and never send DATA.
"""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from onion_gateway.cli import main
from tests.conftest import require
from tests.support.gateway import OWN_DOMAIN, age_config, new_gateway
from tests.support.procs import port_accepts, tail, wait_for

pytestmark = pytest.mark.integration

# A domain the session's DNS answers for sure (NXDOMAIN in its local zone): with setup's transport map
# in front, trivial-rewrite asks onion-gateway serve about every recipient domain, and a domain whose SRV
# lookup fails gets "451 4.3.0 Temporary lookup failure", which leaves the probes inconclusive.
TEST_DOMAIN = "nosuch.example.test"
# main.cf settings every smtpd inherits unless its master.cf entry overrides them
LOOPBACK_TRUST = ["smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination",
                  "smtpd_authorized_xclient_hosts = 127.0.0.1", "smtpd_authorized_xforward_hosts = 127.0.0.1",
                  "allow_untrusted_routing = yes",
                  "myhostname = rx.example.test",   # in the session DNS's zone too (percent-hack probes)
                  "in_flow_delay = 0s"]        # accepted probes on the open smtpd must not be slowed down


@pytest.fixture(scope="module")
def gateway(serve):
    require("postfix", "postconf", "postmap", "tor", "torsocks")
    gw = new_gateway(serve.socketmap)
    try:
        for setting in LOOPBACK_TRUST:
            gw.pf.postconf("-e", setting)
        age_config(gw.pf.config_dir)
        result = gw.setup("--yes")
        gw.address = gw.address_line(result.output)
        gw.pf.start()
        for port in (gw.listener_port, gw.pf.smtp_port):
            wait_for(lambda: port_accepts(port), 15, f"smtpd on {port}", lambda: tail(gw.pf.maillog))
        yield gw
    finally:
        gw.close()


def audit(*args: str):
    result = CliRunner().invoke(main, ["audit-open-relay", "--test-domain", TEST_DOMAIN, "--timeout", "10",
                                       "--json", *args], catch_exceptions=False)
    return result.exit_code, result.output


def _only_report(output: str) -> dict:
    reports = json.loads(output)["reports"]
    assert len(reports) == 1, reports
    return reports[0]


def assert_never_data(gw) -> None:
    disconnects = [line for line in gw.pf.log_text().splitlines() if "disconnect from" in line]
    assert disconnects and not [line for line in disconnects if re.search(r"\b(data|bdat)=", line)]
    assert gw.pf.queue_ids() == []


def test_listener_discovered_from_the_torrc_setup_wrote_is_safe(gateway):
    code, out = audit("--torrc", str(gateway.tor.torrc), "--postfix-config-dir", str(gateway.pf.config_dir))
    report = _only_report(out)
    assert code == 0, out
    assert report["target"] == gateway.listener
    assert "onion-gateway.torrc" in report["listener"]["source"]      # found through setup's %include
    assert report["listener"]["onion"] == gateway.address
    assert not [f for f in report["findings"] if f["severity"] == "critical"]
    assert_never_data(gateway)


def test_listener_given_directly_is_safe(gateway):
    code, out = audit("--listener", gateway.listener, "--postfix-config-dir", str(gateway.pf.config_dir))
    assert code == 0, out
    policy = _only_report(out)["effective_policy"]
    # every loopback trust of main.cf is shadowed by the listener's own -o options
    for name in ("mynetworks", "smtpd_recipient_restrictions", "smtpd_authorized_xclient_hosts",
                 "smtpd_authorized_xforward_hosts", "allow_untrusted_routing"):
        assert policy[name]["source"] == f"master.cf {gateway.listener}/inet -o {name}", (name, policy[name])


def test_listener_found_from_setup_state_without_torrc_or_config_dir(gateway):
    code, out = audit("--state-dir", str(gateway.state_dir))
    report = _only_report(out)
    assert code == 0, out
    assert report["target"] == gateway.listener
    assert "manifest.json" in report["listener"]["source"]
    assert report["listener"]["onion"] == gateway.address


def test_listener_found_from_the_setup_table_of_a_config_file(gateway):
    config = gateway.etc / "audit.toml"
    config.write_text(f'[setup]\nstate_dir = "{gateway.state_dir}"\n')
    code, out = audit("--config", str(config))
    assert code == 0, out
    assert _only_report(out)["target"] == gateway.listener


def test_the_stock_smtpd_of_the_same_instance_is_an_open_relay(gateway):
    code, out = audit("--listener", f"127.0.0.1:{gateway.pf.smtp_port}",
                      "--postfix-config-dir", str(gateway.pf.config_dir))
    assert code == 1, out
    report = _only_report(out)
    critical = {f["check"] for f in report["findings"] if f["severity"] == "critical"}
    assert {"mynetworks_loopback", "xclient_loopback"} <= critical
    assert_never_data(gateway)


def test_control_recipient_is_the_own_domain(gateway):
    code, out = audit("--listener", gateway.listener, "--postfix-config-dir", str(gateway.pf.config_dir))
    assert code == 0
    assert _only_report(out)["control"]["rcpt_to"] == [f"<postmaster@{OWN_DOMAIN}>"], out
