"""End-to-end onion delivery health (issue 16): does ``status`` and /metrics notice when mail over Tor stops?

On the shared lab (tests/e2e/conftest.py), in file order:

1. mail flows: ``status`` on tx has its health checks ok; the health gauges show no deferred onion mail,
   Tor's circuits up and a recent delivery;
2. tx's tor stopped with mail queued: the deferred count rises and the oldest age grows on /metrics, the
   circuit gauge drops to 0, and ``status`` fails naming Tor (from the control port, not from Postfix's
   "Connection refused"); after the restart the queue drains and everything is green again;
3. rx's tor stopped (the partner's onion service down, ours up): ``status`` says our circuits are fine
   and names rx's onion as unreachable; after its restart the queue drains.

The gauges come from a second ``onion-gateway serve`` for tx that only serves /metrics (computing the
health gauges every second), so the lab's own daemons are left as they are. Each drill puts back what
it stopped, also when it fails.
"""

from __future__ import annotations

import re
import time
import tomllib
import urllib.request

import pytest

from tests.e2e.conftest import BOOTSTRAP_TIMEOUT_SECONDS, RX_DOMAIN, LabGateway, MailLab, _toml
from tests.support.daemon import ServeProcess
from tests.support.procs import free_port, wait_for

pytestmark = pytest.mark.e2e

DELIVERY_TIMEOUT_SECONDS = 90
DEFER_TIMEOUT_SECONDS = 90
METRICS_TIMEOUT_SECONDS = 30
STATUS_RECOVERY_TIMEOUT_SECONDS = 90
SOCKS_TIMEOUT_SECONDS = 20
PARTNER_REACHABLE_TIMEOUT_SECONDS = 150   # the restarted service builds intro circuits and publishes again     # tx's own onion service is republished after a restart of its tor
FLUSH_INTERVAL_SECONDS = 5
HEALTH_CHECKS = ("tor_circuits", "smtptor_queue", "smtptor_delivery")
CHECK_TOR = "check that tor runs and bootstraps"
CHECK_PARTNER = "check the partner's SRV record"


# --- helpers -------------------------------------------------------------------------------------------------


class Metrics:
    """tx's health gauges: an extra ``onion-gateway serve`` with tx's [serve] settings and metrics on."""

    def __init__(self, gw: LabGateway) -> None:
        serve = tomllib.loads(gw.config.read_text())["serve"]
        self.port = free_port()
        serve.update(metrics_address=f"127.0.0.1:{self.port}", health_metrics_interval_seconds=1,
                     health_tor_control=f"127.0.0.1:{gw.tor.control_port}")
        self.config = gw.root / "health-metrics.toml"
        self.config.write_text("[serve]\n" + _toml(serve))
        self.proc = ServeProcess(["--config", str(self.config)])

    def scrape(self) -> dict[str, float]:
        """``{sample name with labels: value}`` of the onion_gateway_* samples on /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("onion_gateway_")}

    def wait(self, predicate, what: str, diagnostics) -> dict[str, float]:
        """Scrape until *predicate(samples)* holds; returns those samples."""
        deadline = time.monotonic() + METRICS_TIMEOUT_SECONDS
        while True:
            samples = self.scrape()
            if predicate(samples):
                return samples
            if time.monotonic() > deadline:
                raise AssertionError(f"/metrics never showed {what}: {samples}\n{diagnostics()}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def metrics(lab: MailLab):
    gauges = Metrics(lab.tx_gw)
    gauges.proc.start()
    yield gauges
    gauges.proc.stop()


def health_status(gw: LabGateway, *extra: str) -> tuple[int, dict[str, list[str]], str]:
    """``onion-gateway status`` for *gw* without the relay audit (covered by test_tor_network.py).

    :returns: the exit code, ``{check name: [whole lines]}`` and the whole output.
    """
    done = gw.status("--no-audit", *extra)
    lines: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        lines.setdefault(line.split()[1], []).append(line)
    return done.returncode, lines, done.stdout + done.stderr


def verdict(lines: dict[str, list[str]], name: str) -> set[str]:
    return {line.split()[0] for line in lines.get(name, [])}


def deliver_flushing(lab: MailLab, token: str) -> None:
    """Wait for *token* in rx's mailbox, running ``postqueue -f`` every few seconds."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_SECONDS
    while not lab.mailbox_has(token):
        if time.monotonic() > deadline:
            raise AssertionError(f"message {token} not delivered after {DELIVERY_TIMEOUT_SECONDS} s\n"
                                 f"{lab.diagnostics()}")
        lab.flush_tx()
        step_end = time.monotonic() + FLUSH_INTERVAL_SECONDS
        while time.monotonic() < step_end and not lab.mailbox_has(token):
            time.sleep(0.2)


def deferred_over_smtptor(lab: MailLab, queue_id: str, recipient: str) -> str:
    """Wait for tx's smtptor to defer *queue_id*; return the deferral reason."""
    match = lab.wait_log(lab.tx, rf"postfix/smtptor/smtp\[\d+\]: {queue_id}: to=<{re.escape(recipient)}>, "
                                 rf".*status=deferred \(([^)]*)", DEFER_TIMEOUT_SECONDS,
                         f"smtptor deferring {recipient}")
    return match.group(1)


def assert_green(lab: MailLab, metrics: Metrics, since: float) -> None:
    """status on tx: every check ok (exit 0); /metrics: nothing deferred, circuits up, a delivery after *since*."""
    deadline = time.monotonic() + STATUS_RECOVERY_TIMEOUT_SECONDS
    while (result := health_status(lab.tx_gw))[0] != 0:
        assert time.monotonic() < deadline, f"status not green:\n{result[2]}\n{lab.diagnostics()}"
        time.sleep(1)
    code, lines, report = result
    assert all(verdict(lines, name) == {"ok"} for name in HEALTH_CHECKS), report
    assert "none deferred" in lines["smtptor_queue"][0], report
    metrics.wait(lambda s: s.get("onion_gateway_smtptor_deferred") == 0
                 and s.get("onion_gateway_tor_circuit_established") == 1
                 and s.get("onion_gateway_smtptor_last_delivery_timestamp_seconds", 0) >= since - 1
                 and s.get('onion_gateway_health_source_up{source="queue"}') == 1,
                 "a green gateway", lab.diagnostics)


def socks_timeout(lab: MailLab, seconds: int | None) -> None:
    """Set tx's tor's ``SocksTimeout`` (``None``: back to its default, 120 s) through its control port.

    With the partner's tor down, tx's tor sometimes waits out the whole SocksTimeout for a circuit to
    the dead service's introduction points (the private network has few relays, and path restrictions
    exclude some), and torsocks makes Postfix wait with it; a short timeout bounds the drill."""
    import stem.control

    with stem.control.Controller.from_port(address="127.0.0.1", port=lab.tor.client_control_port) as control:
        control.authenticate()
        if seconds is None:
            control.reset_conf("SocksTimeout")
        else:
            control.set_conf("SocksTimeout", str(seconds))


def forget_onion_state(lab: MailLab) -> None:
    """``SIGNAL NEWNYM`` to tx's tor: it forgets the old descriptor of rx's onion and the intro points it
    saw fail (control-spec §3.7; Tor purges its client onion-service state on NEWNYM), so the restarted
    service is reached once it has published again, not after Tor's failure caches expire (in one run
    that took longer than 90 s)."""
    import stem
    import stem.control

    with stem.control.Controller.from_port(address="127.0.0.1", port=lab.tor.client_control_port) as control:
        control.authenticate()
        control.signal(stem.Signal.NEWNYM)


# --- the drills ----------------------------------------------------------------------------------------------


def test_health_is_green_while_mail_flows(lab: MailLab, metrics: Metrics) -> None:
    """A message goes out over the onion: tx's status health checks are ok (exit 0) and the gauges show
    nothing deferred, Tor's circuits established and that delivery's time."""
    started = time.time()
    _, token = lab.send(f"health-green@{RX_DOMAIN}")
    deliver_flushing(lab, token)
    assert_green(lab, metrics, started)
    code, lines, report = health_status(lab.tx_gw)
    assert "circuit-established=1" in lines["tor_circuits"][0], report
    assert re.search(r"[1-9]\d* sent", lines["smtptor_delivery"][0]), report


def test_our_tor_down_is_named_by_status_and_the_metrics(lab: MailLab, metrics: Metrics) -> None:
    """tx's tor stopped with mail queued: the deferred count rises, the oldest age grows, the circuit
    gauge is 0, and status fails naming Tor: tor_circuits fails from the control port and the deferred
    mail's suggestion is to check tor, although Postfix's deferral text blames the connection. Restarted,
    the queue drains and all is green."""
    before = metrics.scrape().get("onion_gateway_smtptor_deferred", 0)
    lab.tor.stop_client()
    try:
        queue_id, token = lab.send(f"health-tor@{RX_DOMAIN}")
        deferred_over_smtptor(lab, queue_id, f"health-tor@{RX_DOMAIN}")
        first = metrics.wait(lambda s: s.get("onion_gateway_smtptor_deferred", 0) > before
                             and s.get("onion_gateway_tor_circuit_established") == 0,
                             "the deferred message and no circuits", lab.diagnostics)
        assert first['onion_gateway_health_source_up{source="tor"}'] == 0          # the control port is gone
        time.sleep(2.5)
        later = metrics.wait(lambda s: s["onion_gateway_smtptor_oldest_deferred_seconds"]
                             > first["onion_gateway_smtptor_oldest_deferred_seconds"], "the oldest age growing",
                             lab.diagnostics)
        assert later["onion_gateway_smtptor_deferred"] >= first["onion_gateway_smtptor_deferred"]
        code, lines, report = health_status(lab.tx_gw, "--deferred-warn", "0", "--deferred-fail", "1")
        assert code == 1, report
        assert verdict(lines, "tor_circuits") == {"fail"}, report
        assert "Tor's control port" in lines["tor_circuits"][0], report
        assert verdict(lines, "smtptor_queue") == {"fail"}, report
        assert lines["smtptor_queue"][0].split(" -- ")[-1].startswith(CHECK_TOR), report
        assert "partner_onion" not in lines, report             # cannot ask the HSDirs without our Tor
    finally:
        lab.tor.start_client()
    lab.tor.wait_bootstrapped(BOOTSTRAP_TIMEOUT_SECONDS, [lab.tor.client])
    lab.wait_onion_reachable()
    deliver_flushing(lab, token)
    wait_for(lambda: queue_id not in lab.tx.queue_ids(), 10, "the queue to drain", lab.diagnostics)
    assert_green(lab, metrics, 0)


def test_the_partners_onion_down_is_named_while_our_circuits_are_fine(lab: MailLab, metrics: Metrics) -> None:
    """rx's tor stopped (its onion service down, tx's tor up): the message is deferred; status on tx says
    our circuits are fine and fails partner_onion for rx's onion (unreachable) with the check-the-partner
    suggestion. Restarted, the message goes out and the queue drains."""
    rx_tor = lab.tor.onion_node
    socks_timeout(lab, SOCKS_TIMEOUT_SECONDS)
    lab.tor.stop_node(rx_tor)
    try:
        queue_id, token = lab.send(f"health-partner@{RX_DOMAIN}")
        deferred_over_smtptor(lab, queue_id, f"health-partner@{RX_DOMAIN}")
        code, lines, report = health_status(lab.tx_gw, "--deferred-warn", "0", "--fetch-timeout", "30")
        assert code == 1, report
        assert verdict(lines, "tor_circuits") == {"ok"}, report
        assert "circuit-established=1" in lines["tor_circuits"][0], report
        partner, = lines["partner_onion"]
        assert partner.split()[:4] == ["fail", "partner_onion", RX_DOMAIN, lab.onion], report
        assert "their onion service is unreachable" in partner, report
        assert partner.split(" -- ")[-1].startswith(f"{CHECK_PARTNER} (_onion-mx._tcp.{RX_DOMAIN})"), report
        assert lines["smtptor_queue"][0].split(" -- ")[-1].startswith(CHECK_PARTNER), report
        samples = metrics.wait(lambda s: s.get("onion_gateway_smtptor_deferred", 0) >= 1,
                               "the deferred message", lab.diagnostics)
        assert samples["onion_gateway_tor_circuit_established"] == 1
    finally:
        lab.tor.start_node(rx_tor)
    lab.tor.wait_bootstrapped(BOOTSTRAP_TIMEOUT_SECONDS, [rx_tor])
    try:
        forget_onion_state(lab)
        lab.wait_onion_reachable(timeout_seconds=PARTNER_REACHABLE_TIMEOUT_SECONDS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- h7 since its restart\n{rx_tor.log_since_start()[-6000:]}") from None
    deliver_flushing(lab, token)
    socks_timeout(lab, None)
    wait_for(lambda: queue_id not in lab.tx.queue_ids(), 10, "the queue to drain", lab.diagnostics)
    assert_green(lab, metrics, 0)
