"""``setup --rollback`` and the running Tor: what setup put into it goes, other onion services stay.

Against a private Postfix instance and a real tor (DisableNetwork 1) on loopback (tests/support/gateway.py).
Tor's own view is read back over its control port (GETCONF HiddenServiceOptions, GETCONF MetricsPort).
"""

from __future__ import annotations

import os
import signal

import pytest

from onion_gateway.address import parse_listen_address
from onion_gateway.tor import TorControl, hidden_service_options
from tests.support.gateway import age_config, changed_paths, same_content
from tests.support.procs import free_port, tail, wait_for

pytestmark = pytest.mark.integration


def _services(gw) -> dict[str, list[str]]:
    """``{HiddenServiceDir: [its other lines as "Keyword value"]}`` from the running Tor."""
    services: dict[str, list[str]] = {}
    current = None
    for key, value in hidden_service_options(parse_listen_address(gw.tor.control)):
        if key == "HiddenServiceDir":
            current = value
            services[current] = []
        elif current is not None:
            services[current].append(f"{key} {value}")
    return services


def _metrics_ports(gw) -> list[str]:
    with TorControl(parse_listen_address(gw.tor.control)) as tor:
        return tor.conf_values("MetricsPort")


def test_rollback_takes_setups_onion_and_metrics_port_out_of_tor_and_keeps_the_torrcs_own_onion(gateway, tmp_path):
    other = gateway.tor.data_dir / "postmasters-own"
    with gateway.tor.torrc.open("a") as fh:
        fh.write(f"HiddenServiceDir {other}\nHiddenServicePort 80 127.0.0.1:8080\n")
    gateway.tor.restart()
    before = gateway.snapshot()
    metrics = f"127.0.0.1:{free_port()}"
    config = tmp_path / "og.toml"
    config.write_text(f'[setup]\ntor_metrics_port = "{metrics}"\n')
    gateway.setup("--config", str(config), "--yes")
    gateway.tor.restart()                    # Tor now has everything in the piece, read from its torrc
    assert "HiddenServiceExportCircuitID haproxy" in _services(gateway)[str(gateway.hs_dir)]
    assert _metrics_ports(gateway) == [metrics]     # (DisableNetwork 1: tor opens no listener but the control port)

    out = gateway.setup("--config", str(config), "--rollback", "--yes").output

    assert f"tor no longer serves {gateway.hs_dir}" in out and f"tor no longer has MetricsPort {metrics}" in out
    services = _services(gateway)
    assert str(gateway.hs_dir) not in services, services
    assert services[str(other)] == ["HiddenServicePort 80 127.0.0.1:8080"], services
    assert _metrics_ports(gateway) == []
    assert same_content(gateway.snapshot(), before)


def test_rollback_with_tor_unreachable_undoes_every_file_and_says_tor_must_be_reloaded(gateway):
    before = gateway.snapshot()
    gateway.setup("--yes")
    dead = f"127.0.0.1:{free_port()}"

    result = gateway.setup("--rollback", "--yes", "--tor-control", dead, expect=69)

    assert same_content(gateway.snapshot(), before)
    assert not gateway.state_dir.exists()
    assert f"Tor's control port {dead} could not be reached" in result.output
    assert "reload Tor (systemctl reload tor, or kill -HUP tor's pid)" in result.output
    assert str(gateway.hs_dir) in _services(gateway)          # as said: the running Tor still has it ...
    gateway.tor.proc.send_signal(signal.SIGHUP)                 # ... until it re-reads its reverted torrc
    wait_for(lambda: str(gateway.hs_dir) not in _services(gateway), 10, "tor dropping the onion after SIGHUP",
             lambda: tail(gateway.tor.log))


def test_rollback_drops_an_onion_that_setup_found_already_served_by_its_earlier_run(gateway):
    """A run that finds Tor serving its onion unchanged records no Tor change (a rollback that could not
    reach Tor left it there); rollback still takes it out, because the torrc no longer declares it."""
    gateway.setup("--yes")
    gateway.setup("--rollback", "--yes", "--tor-control", f"127.0.0.1:{free_port()}", expect=69)
    out = gateway.setup("--yes").output
    assert "onion service: Tor already serves" in out

    out = gateway.setup("--rollback", "--yes").output

    assert f"tor no longer serves {gateway.hs_dir}" in out
    assert str(gateway.hs_dir) not in _services(gateway)


def test_rollback_gives_a_service_tor_had_before_setup_its_own_options_back(gateway):
    with TorControl(parse_listen_address(gateway.tor.control)) as tor:
        tor.set_hidden_service(gateway.hs_dir, 25, "127.0.0.1", gateway.listener_port,
                               options=[("HiddenServiceMaxStreams", "5")])
    gateway.setup("--yes")
    assert "HiddenServiceExportCircuitID haproxy" in _services(gateway)[str(gateway.hs_dir)]

    gateway.setup("--rollback", "--yes")

    assert _services(gateway)[str(gateway.hs_dir)] == [f"HiddenServicePort 25 127.0.0.1:{gateway.listener_port}",
                                                       "HiddenServiceMaxStreams 5"]


# --- manifests of onion-gateway 0.1 (whole-file copies in STATE_DIR/backups) -------------------------------

def _as_version_0_1(gw, before: dict) -> None:
    """Rewrite the state setup just left as 0.1's setup kept it: a copy of each changed file's bytes from
    before (``backups/NNNN-NAME``, null for a file it created), main.cf/master.cf last, the onion step."""
    import json
    import shutil

    manifest = json.loads((gw.state_dir / "manifest.json").read_text())
    now = gw.snapshot()
    state = str(gw.state_dir) + "/"
    changed = [p for p in changed_paths(before, now) if not p.startswith(state)]
    changed.sort(key=lambda p: p.endswith(("main.cf", "master.cf")))
    shutil.rmtree(gw.state_dir / "blobs")
    (gw.state_dir / "backups").mkdir(mode=0o700)
    files = []
    for index, path in enumerate(changed):
        if path not in before:
            files.append({"path": path, "backup": None})
            continue
        name = f"backups/{index:04d}-{path.rsplit('/', 1)[1]}"
        (gw.state_dir / name).write_bytes(before[path][0])
        st = os.stat(path)
        files.append({"path": path, "backup": name, "mode": before[path][1], "uid": st.st_uid, "gid": st.st_gid})
    managed = {k: manifest["managed"][k] for k in ("services", "transport_map", "own_table")}
    old = {"files": files, "onion": {"hidden_service_dir": str(gw.hs_dir), "dir_existed": False, "ports_before": None},
           "managed": managed, "listener": manifest["listener"]}
    (gw.state_dir / "manifest.json").write_text(json.dumps(old))


def test_a_manifest_of_version_0_1_is_rolled_back_keeping_later_edits(gateway):
    before = gateway.snapshot()
    gateway.setup("--yes")
    _as_version_0_1(gateway, before)
    gateway.pf.postconf("-e", "message_size_limit = 12345678")                 # later edits of the postmaster
    age_config(gateway.pf.config_dir)
    with gateway.tor.torrc.open("a") as fh:
        fh.write("# added after setup\n")
    edited = gateway.snapshot()

    preview = gateway.setup("--rollback", "--dry-run").output
    assert "read the manifest of onion-gateway 0.1" in preview and "would remove transport_maps from main.cf" in preview
    assert f"would remove {gateway.wrapper}" in preview
    assert gateway.snapshot() == edited                                          # the dry run changed nothing

    out = gateway.setup("--rollback", "--yes").output

    assert f"tor no longer serves {gateway.hs_dir}" in out
    main_cf, torrc = str(gateway.pf.config_dir / "main.cf"), str(gateway.tor.torrc)
    after = gateway.snapshot()
    assert changed_paths(before, after) == sorted([main_cf, torrc])           # every other byte as before setup
    assert after[main_cf][0] == before[main_cf][0] + b"message_size_limit = 12345678\n"
    assert after[torrc][0] == before[torrc][0] + b"# added after setup\n"
    assert not gateway.state_dir.exists()
    assert str(gateway.hs_dir) not in _services(gateway)


def test_a_version_0_1_file_that_setup_replaced_comes_back_and_the_current_one_is_kept_aside(gateway):
    gateway.wrapper.write_text("#!/bin/sh\n# the postmaster's own wrapper\n")
    before = gateway.snapshot()
    gateway.setup("--yes")
    _as_version_0_1(gateway, before)
    written = gateway.wrapper.read_bytes()

    gateway.setup("--rollback", "--yes")

    assert gateway.wrapper.read_text() == "#!/bin/sh\n# the postmaster's own wrapper\n"
    assert (gateway.wrapper.parent / "smtp_tor.onion-gateway-kept").read_bytes() == written


def test_the_journal_of_a_killed_version_0_1_run_is_refused_in_one_line_changing_nothing(gateway):
    gateway.state_dir.mkdir(mode=0o700)
    (gateway.state_dir / "journal" / "backups").mkdir(parents=True)
    (gateway.state_dir / "journal" / "journal.json").write_text('{"context": {}, "files": [], "onion": null}')
    before = gateway.snapshot()

    result = gateway.setup("--rollback", "--yes", expect=1)

    assert result.output.count("\n") == 1 and "journal of an onion-gateway 0.1 setup run that was killed" in result.output
    assert f"then remove {gateway.state_dir / 'journal'}; nothing was changed" in result.output
    assert gateway.snapshot() == before
