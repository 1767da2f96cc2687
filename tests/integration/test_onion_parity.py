"""No spam-filter bypass over the onion (issue 14, item 4), on a private Postfix configuration.

The port-25 smtpd (``127.0.0.1:smtp``) runs a milter and a content filter from its own master.cf entry;
an onion listener that lacks them is reported by ``audit-open-relay`` (``inspection_parity``), and
once setup's :func:`~onion_gateway.setup.onionpath.listener_inspection` copies them onto the listener
the finding is gone. Static analysis only: the instance is never started, nothing listens.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from onion_gateway.cli import main
from onion_gateway.setup.onionpath import listener_inspection
from tests.conftest import require
from tests.support.postfix import new_instance
from tests.support.procs import free_port

pytestmark = pytest.mark.integration

MILTER = "inet:127.0.0.1:8891"
FILTER = "smtp:[127.0.0.1]:10025"


@pytest.fixture()
def instance():
    require("postfix", "postconf")
    listener_port = free_port()
    master = (f"127.0.0.1:smtp inet n - n - - smtpd\n  -o smtpd_milters={MILTER}\n  -o content_filter={FILTER}\n"
              f"127.0.0.1:{listener_port} inet n - n - - smtpd\n  -o syslog_name=postfix/onion\n  -o mynetworks=\n"
              "  -o smtpd_relay_restrictions=reject_unauth_destination\n  -o smtpd_recipient_restrictions=\n"
              "  -o smtpd_upstream_proxy_protocol=haproxy\n  -o inet_protocols=all\n")
    pf = new_instance("og-parity-", hostname="rx.lab.test", domains=["rx.test"], master_extra=master)
    pf.listener = f"127.0.0.1:{listener_port}"
    yield pf
    shutil.rmtree(pf.root, ignore_errors=True)


def parity_findings(pf) -> list[dict]:
    result = CliRunner().invoke(main, ["audit-open-relay", "--listener", pf.listener, "--static-only", "--json",
                                       "--postfix-config-dir", str(pf.config_dir)])
    assert result.exit_code not in (1, 2), result.output          # never open or risky
    report = json.loads(result.output)["reports"][0]
    return [f for f in report["findings"] if f["check"] == "inspection_parity"]


def test_a_listener_without_the_port25_milter_is_reported(instance) -> None:
    """Both skipped filters are warnings naming the parameter, the port-25 value and the listener's."""
    findings = parity_findings(instance)
    values = sorted(f["value"] for f in findings)
    assert values == [f"content_filter: port 25 = {FILTER}; onion listener = (empty)",
                      f"smtpd_milters: port 25 = {MILTER}; onion listener = (empty)"], findings
    assert all(f["severity"] == "warning" and "bypasses" in f["title"] for f in findings)
    assert all(f["source"] == f"master.cf {instance.listener}/inet vs 127.0.0.1:smtp/inet" for f in findings)


def test_inspection_copied_by_setup_clears_the_finding(instance) -> None:
    """setup's listener_inspection finds what the port-25 entry sets; on the listener, parity holds."""
    pairs, source = listener_inspection(instance.config_dir)
    assert pairs == (("smtpd_milters", MILTER), ("content_filter", FILTER)) and source == "127.0.0.1:smtp/inet"
    for name, value in pairs:
        instance.postconf("-P", f"{instance.listener}/inet/{name}={value}")
    assert parity_findings(instance) == []
