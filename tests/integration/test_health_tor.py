"""Tor's sending-side health against a real tor with ``DisableNetwork 1`` (no circuits, ever)."""

from __future__ import annotations

import time

import pytest
import stem.control

from onion_gateway.config import parse_listen_address
from onion_gateway.health.tor_health import FetchOutcome, fetch_descriptor, fetch_descriptors, sending_state
from onion_gateway.health.verdicts import Suggestion, check_partner_onion, check_tor_sending
from onion_gateway.status import Verdict
from onion_gateway.tor import TorControl
from tests.support.onions import ONION_A, bad_checksum
from tests.support.procs import wait_for
from tests.support.tor import running_tor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tor():
    with running_tor("og-health-tor-") as proc:
        yield proc


@pytest.fixture
def controller(tor):
    with stem.control.Controller.from_port(address="127.0.0.1", port=tor.control_port) as c:
        c.authenticate()
        yield c


@pytest.fixture(scope="module")
def real_onion(tor):
    """A v3 address Tor accepts (a real ed25519 key), whose service is gone: nobody publishes it."""
    with stem.control.Controller.from_port(address="127.0.0.1", port=tor.control_port) as c:
        c.authenticate()
        reply = c.msg("ADD_ONION NEW:ED25519-V3 Flags=DiscardPK Port=25,127.0.0.1:9")
        service_id = next(line.split("=", 1)[1] for _, _, line in reply.content() if line.startswith("ServiceID="))
        assert c.msg(f"DEL_ONION {service_id}").is_ok()
    return service_id + ".onion"


def test_no_network_tor_is_not_bootstrapped_and_has_no_circuits(controller):
    state = sending_state(controller)
    assert state.bootstrap_progress < 100
    assert state.circuit_established is False
    assert state.can_send is False
    assert state.network_liveness == "down"


def test_sending_state_through_the_gateways_own_tor_control(tor):
    with TorControl(parse_listen_address(tor.control)) as control:
        state = sending_state(control)
    assert (state.circuit_established, state.can_send) == (False, False)


def test_no_circuits_is_a_tor_failure_with_restart_tor(controller, tor):
    check = check_tor_sending(sending_state(controller), tor.control)
    assert check.verdict is Verdict.FAIL
    assert check.suggestion == Suggestion.RESTART_TOR.value


def test_hsfetch_without_network_ends_within_the_bounded_wait(controller, real_onion):
    started = time.monotonic()
    fetch = fetch_descriptor(controller, real_onion, timeout_seconds=2.0)
    elapsed = time.monotonic() - started
    assert fetch.outcome is FetchOutcome.NO_ANSWER and not fetch.fetched
    assert 2.0 <= elapsed < 4.0
    assert fetch.onion == real_onion


def test_several_fetches_share_one_bounded_wait(controller, real_onion):
    started = time.monotonic()
    results = fetch_descriptors(controller, [real_onion, real_onion.upper(), ONION_A], timeout_seconds=2.0)
    assert time.monotonic() - started < 4.0
    assert set(results) == {real_onion, ONION_A}
    assert results[real_onion].outcome is FetchOutcome.NO_ANSWER


def test_tor_refuses_an_address_that_is_no_key(controller):
    # ONION_A has a valid checksum but its "key" is not an ed25519 point: Tor says 512 Invalid argument
    started = time.monotonic()
    fetch = fetch_descriptor(controller, ONION_A, timeout_seconds=5.0)
    assert fetch.outcome is FetchOutcome.REFUSED and "Invalid argument" in fetch.detail
    assert time.monotonic() - started < 2.0


def test_bad_checksum_is_refused_without_asking_tor(controller):
    fetch = fetch_descriptor(controller, bad_checksum(ONION_A), timeout_seconds=5.0)
    assert fetch.outcome is FetchOutcome.REFUSED and "bad_checksum" in fetch.detail


def test_listener_is_removed_after_the_fetch(controller, real_onion):
    fetch_descriptor(controller, real_onion, timeout_seconds=0.5)
    assert controller.msg("GETINFO events/names").is_ok()          # the connection is still usable
    assert not controller._event_listeners.get(stem.control.EventType.HS_DESC)


def test_partner_verdict_says_cannot_tell_when_our_tor_cannot_send(controller, real_onion):
    state = sending_state(controller)
    fetch = fetch_descriptor(controller, real_onion, timeout_seconds=0.5)
    check = check_partner_onion("partner.test", fetch, state)
    assert check.verdict is Verdict.WARN
    assert "cannot tell" in check.detail and check.suggestion == Suggestion.RESTART_TOR.value


@pytest.mark.parametrize("form", ["tuple", "text", "unix", "password"])
def test_status_opens_every_control_address_form(form):
    """open_control (what status and the metrics use) on a TCP port given as (host, port) or text, on a
    ControlSocket (cookie) and on a port with a password; each yields a connection tor_health can ask."""
    from onion_gateway.health.report import open_control

    with running_tor("og-health-ctl-", password="s3cret" if form == "password" else None,
                     unix_control=form == "unix") as proc:
        address = {"tuple": ("127.0.0.1", proc.control_port), "text": proc.control, "password": proc.control,
                   "unix": f"unix:{proc.control_socket}"}[form]
        if form == "unix":
            wait_for(proc.control_socket.exists, 10, "the control socket")
        with open_control(address, "s3cret" if form == "password" else None, 5.0) as control:
            state = sending_state(control)
        assert (state.circuit_established, state.can_send) == (False, False)


def test_status_names_a_control_port_that_refuses_the_password():
    from onion_gateway.errors import TorError
    from onion_gateway.health.report import open_control

    with running_tor("og-health-ctl-", password="s3cret") as proc:
        with pytest.raises(TorError, match="refused authentication"):
            with open_control(proc.control, "wrong", 5.0):
                pass
