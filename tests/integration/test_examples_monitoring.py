"""The shipped Grafana dashboard and Prometheus alert rules name only metrics a real daemon exposes.

A dashboard or an alert that queries a name /metrics does not have shows an empty panel or never fires:
both files are parsed, every ``onion_gateway_*`` selector is taken out of their expressions, and each
name and label key must appear on the /metrics page of a real ``onion-gateway serve`` after lookups.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import require
from tests.support.cachedns import auth_dnsmasq
from tests.support.daemon import ServeProcess
from tests.support.dnsserver import SrvEntry
from tests.support.mapclient import TcpTableClient
from tests.support.onions import ONION_A
from tests.support.postfix import new_instance
from tests.support.procs import free_port, public_tempdir
from tests.support.tor import TorProcess

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SELECTOR = re.compile(r"\b(onion_gateway_[a-z0-9_]+)(?:\{([^}]*)\})?")
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")


def dashboard_expressions() -> list[str]:
    """Every ``expr`` of every panel target and the templating queries of the dashboard."""
    document = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in document["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in document["templating"]["list"] if isinstance(v.get("query"), str)]
    return exprs


def alert_expressions() -> list[str]:
    """Every ``expr`` of every rule in the alert rules file."""
    document = yaml.safe_load((EXAMPLES / "prometheus-alerts.yml").read_text())
    return [rule["expr"] for group in document["groups"] for rule in group["rules"]]


def selectors(exprs: list[str]) -> list[tuple[str, set[str]]]:
    """``[(metric name, {label keys})]`` for each onion_gateway_* selector in PromQL *exprs*."""
    found = []
    for expr in exprs:
        for name, matchers in SELECTOR.findall(expr):
            keys = {m.split("=")[0].rstrip("!~").strip() for m in matchers.split(",") if "=" in m}
            found.append((name, keys))
    return found


HEALTH_GAUGES = ("onion_gateway_smtptor_deferred", "onion_gateway_smtptor_oldest_deferred_seconds",
                 "onion_gateway_smtptor_last_delivery_timestamp_seconds", "onion_gateway_tor_circuit_established")
SMTPTOR = "smtptor unix - - n - - smtp\n  -o syslog_name=postfix/smtptor\n"


@pytest.fixture(scope="module")
def exposed():
    """``{sample name: {label keys}}`` from /metrics of a real daemon after one routed lookup.

    The daemon has what the health gauges read (docs/health.md, "Metrics"): a running private Postfix
    with an ``smtptor`` service (its queue and maillog_file) and a Tor control port (a tor with
    ``DisableNetwork 1``). Without them those gauges are absent, and the test would say so.
    """
    require("dnsmasq", "postfix", "postqueue", "tor")
    workdir = public_tempdir("og-examples-")
    dns = auth_dnsmasq(workdir / "dns", [SrvEntry("a.example.test", ONION_A)], ttl_seconds=300).start()
    pf = new_instance("og-examples-pf-", master_extra=SMTPTOR)
    tor = TorProcess(workdir / "tor").write().start()
    metrics_port = free_port()
    config = workdir / "og.toml"
    config.write_text(f'[serve]\npostfix_config_dir = "{pf.config_dir}"\nhealth_metrics_interval_seconds = 1\n'
                      f'health_tor_control = "{tor.control}"\n')
    proc = None
    try:
        pf.start()
        proc = ServeProcess(["--config", str(config), "--dns-server", dns.address,
                             "--metrics-address", f"127.0.0.1:{metrics_port}"]).start()
        client = TcpTableClient(proc.tcp_port)
        assert client.get("x@a.example.test") == f"200 smtptor:[{ONION_A}]:25"
        client.close()
        deadline = time.monotonic() + 30     # the first health computation runs in a worker thread
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
                text = response.read().decode()
            if all(f"\n{name} " in text for name in HEALTH_GAUGES) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        if proc is not None:
            proc.stop()
        tor.stop()
        pf.stop()
        dns.stop()
        shutil.rmtree(pf.root, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    names: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
            for suffix in SUFFIXES:
                names.setdefault(family + suffix, set())
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            labels = re.findall(r'(\w+)="', rest.partition("}")[0]) if rest else []
            names.setdefault(name.split()[0], set()).update(labels)
    return names


@pytest.mark.parametrize("source", [dashboard_expressions, alert_expressions], ids=["dashboard", "alerts"])
def test_every_metric_and_label_used_exists_on_metrics(exposed, source):
    used = selectors(source())
    assert used, f"{source.__name__} found no onion_gateway_* selector"
    for name, keys in used:
        assert name in exposed, f"{name} is not on /metrics"
        families = {n for n in exposed if name.startswith(n)} | {name}
        known = set().union(*(exposed[n] for n in families))
        assert keys <= known | {"instance", "job", "le"}, f"{name}: labels {keys - known} not on /metrics"


@pytest.mark.parametrize("needed", ["onion_gateway_lookups_total", "onion_gateway_cache_hits_total",
                                    "onion_gateway_dns_queries_total", "onion_gateway_dns_query_seconds_bucket",
                                    "onion_gateway_pin_changes_total", *HEALTH_GAUGES])
def test_dashboard_covers_what_a_postmaster_watches(needed):
    assert needed in {name for name, _ in selectors(dashboard_expressions())}


@pytest.mark.parametrize("needed", [*HEALTH_GAUGES, "onion_gateway_health_source_up"])
def test_every_health_gauge_has_an_alert_rule(needed):
    assert needed in {name for name, _ in selectors(alert_expressions())}
