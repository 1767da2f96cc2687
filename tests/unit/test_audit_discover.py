"""torrc parsing (HiddenServicePort forms, %include of files, directories and globs) and listener matching."""

from __future__ import annotations

import pytest

from onion_gateway.address import ListenAddress
from onion_gateway.audit.discover import MasterService, find_listener, onion_ports, parse_torrc
from onion_gateway.errors import ConfigError


@pytest.mark.parametrize("line, target", [
    ("HiddenServicePort 25", "127.0.0.1:25"),                      # default target 127.0.0.1:VIRTPORT
    ("HiddenServicePort 25 2526", "127.0.0.1:2526"),               # bare port
    ("HiddenServicePort 25 127.0.0.2:2526", "127.0.0.2:2526"),
    ("HiddenServicePort 25 127.0.0.3", "127.0.0.3:25"),            # bare address takes VIRTPORT
    ("HiddenServicePort 25 [::1]:2526", "[::1]:2526"),
    ("HiddenServicePort 25 unix:/run/postfix/onion", "unix:/run/postfix/onion"),
    ('HiddenServicePort 25 unix:"/run/with space/s"', "unix:/run/with space/s"),
    ("hiddenserviceport   25\t127.0.0.1:2526   # comment", "127.0.0.1:2526"),
    ("HiddenServicePort\t25 127.0.0.1:2527", "127.0.0.1:2527"),
])
def test_hidden_service_port_targets(tmp_path, line, target):
    torrc = tmp_path / "torrc"
    torrc.write_text(f"HiddenServiceDir {tmp_path}/hs\n{line}\n")
    [port] = parse_torrc(torrc)
    assert str(port.target) == target
    assert port.virtual_port == 25
    assert port.source == f"{torrc}:2"


def test_include_file_directory_and_glob_in_order(tmp_path):
    (tmp_path / "hs").mkdir()
    (tmp_path / "hs" / "hostname").write_text("abc.onion\n")
    d = tmp_path / "torrc.d"
    d.mkdir()
    (d / "20-b.conf").write_text("HiddenServicePort 26 127.0.0.1:2602\n")
    (d / "10-a.conf").write_text(f"HiddenServiceDir {tmp_path}/hs\nHiddenServicePort 25 127.0.0.1:2601\n")
    (d / ".hidden").write_text("HiddenServicePort 99 127.0.0.1:9999\n")     # dot-files are skipped
    g = tmp_path / "glob"
    g.mkdir()
    (g / "x.conf").write_text("HiddenServicePort 27 127.0.0.1:2603\n")
    (g / "x.txt").write_text("HiddenServicePort 98 127.0.0.1:9998\n")
    (tmp_path / "single").write_text("%include glob/*.conf\n")           # relative to the including file
    (tmp_path / "torrc").write_text(f"%include {d}\n%include {tmp_path}/single\nHiddenServicePort 28\n")
    ports = parse_torrc(tmp_path / "torrc")
    assert [(p.virtual_port, str(p.target)) for p in ports] == [
        (25, "127.0.0.1:2601"), (26, "127.0.0.1:2602"), (27, "127.0.0.1:2603"), (28, "127.0.0.1:28")]
    assert ports[0].onion == "abc.onion"                    # read from HiddenServiceDir/hostname
    assert ports[1].service_dir == f"{tmp_path}/hs"          # the directory carries across files
    assert ports[2].source == f"{g / 'x.conf'}:1"


def test_continuation_lines(tmp_path):
    (tmp_path / "torrc").write_text("HiddenServicePort 25 \\\n  127.0.0.1:2526\n")
    [port] = parse_torrc(tmp_path / "torrc")
    assert str(port.target) == "127.0.0.1:2526"


def test_include_loop_is_an_error_not_a_hang(tmp_path):
    (tmp_path / "torrc").write_text(f"%include {tmp_path}/torrc\n")
    with pytest.raises(ConfigError, match="nested deeper"):
        parse_torrc(tmp_path / "torrc")


def test_missing_torrc_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read torrc"):
        parse_torrc(tmp_path / "nope")


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:x", "unix:", ":25"])
def test_bad_listener_text(text):
    with pytest.raises(ConfigError):
        ListenAddress.parse(text)


SERVICES = [
    MasterService("smtp", "inet", "n", "smtpd"),
    MasterService("127.0.0.1:2526", "inet", "n", "smtpd -o syslog_name=postfix/onion"),
    MasterService("*:2527", "inet", "n", "smtpd"),
    MasterService("2528", "inet", "n", "postscreen"),
    MasterService("smtpd", "pass", "-", "smtpd"),
    MasterService("onion", "unix", "-", "smtpd"),
    MasterService("2529", "inet", "n", "qmqpd"),
]


def _find(endpoint: str, interfaces: str = "127.0.0.1"):
    return find_listener(SERVICES, ListenAddress.parse(endpoint), inet_interfaces=interfaces,
                         queue_directory="/var/spool/postfix")


def test_service_with_explicit_host():
    match = _find("127.0.0.1:2526")
    assert match.service.name == "127.0.0.1:2526" and match.smtpd is match.service
    assert not match.all_interfaces


def test_service_on_all_addresses_is_flagged():
    assert _find("127.0.0.1:2527").all_interfaces


def test_hostless_service_uses_inet_interfaces():
    assert _find("127.0.0.1:25").service.name == "smtp"           # port name from /etc/services
    assert not _find("127.0.0.1:25", "loopback-only").all_interfaces
    assert _find("127.0.0.1:25", "all").all_interfaces
    assert _find("127.0.0.1:25", "192.0.2.10") is None             # not bound to loopback at all


def test_postscreen_is_followed_to_the_pass_service():
    match = _find("127.0.0.1:2528")
    assert (match.service.program, match.smtpd.label) == ("postscreen", "smtpd/pass")


def test_unix_socket_service():
    match = _find("unix:/var/spool/postfix/private/onion")
    assert match.service.label == "onion/unix"
    assert _find("unix:/var/spool/postfix/public/onion") is None


def test_non_smtpd_services_are_not_listeners():
    assert _find("127.0.0.1:2529") is None
    assert _find("127.0.0.1:9") is None


# --- setup's state directory (manifest.json "listener", written by installer.apply_plan) ---------------

def _manifest(state_dir, listener_record) -> None:
    import json

    state_dir.mkdir(exist_ok=True)
    (state_dir / "manifest.json").write_text(json.dumps({"files": [], "onion": None, "managed": {},
                                                         "listener": listener_record}))


def test_setup_state_gives_the_listener_its_onion_and_postfix_directory(tmp_path):
    from onion_gateway.audit.discover import read_setup_state

    hs_dir = tmp_path / "hs"
    hs_dir.mkdir()
    (hs_dir / "hostname").write_text("abc.onion\n")
    _manifest(tmp_path / "state", {"listener": "127.0.0.1:2526", "onion_port": 25,
                                   "hidden_service_dir": str(hs_dir), "postfix_config_dir": "/srv/pf"})
    record = read_setup_state(tmp_path / "state")
    assert str(record.listener) == "127.0.0.1:2526"
    assert str(record.postfix_config_dir) == "/srv/pf"
    port = record.as_onion_port()
    assert (port.virtual_port, port.onion, port.service_dir) == (25, "abc.onion", str(hs_dir))
    assert port.source == f"{tmp_path / 'state' / 'manifest.json'} (setup record)"


def test_setup_state_for_the_default_postfix_instance(tmp_path):
    from onion_gateway.audit.discover import read_setup_state

    _manifest(tmp_path, {"listener": "127.0.0.1:2525", "onion_port": 25, "hidden_service_dir": "/nonexistent",
                         "postfix_config_dir": None})
    record = read_setup_state(tmp_path)
    assert record.postfix_config_dir is None
    assert record.as_onion_port().onion is None        # hostname unreadable: no onion name, no error


@pytest.mark.parametrize("content, message", [
    (None, "does not exist: setup has not run"),
    ("{not json", "cannot read"),
    ('{"files": [], "onion": null, "managed": {}}', "records no listener"),
    ('{"listener": {"listener": "127.0.0.1:99999"}}', "port out of range"),
])
def test_setup_state_without_a_usable_record_is_a_config_error(tmp_path, content, message):
    from onion_gateway.audit.discover import read_setup_state

    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_setup_state(tmp_path)


def test_cli_state_dir_without_a_record_is_a_usage_error(tmp_path):
    from click.testing import CliRunner

    from onion_gateway.cli import main

    result = CliRunner().invoke(main, ["audit-open-relay", "--state-dir", str(tmp_path)])
    assert result.exit_code == 64
    assert "setup has not run with this state directory" in result.output


def test_cli_takes_one_discovery_source(tmp_path):
    from click.testing import CliRunner

    from onion_gateway.cli import main

    result = CliRunner().invoke(main, ["audit-open-relay", "--state-dir", str(tmp_path), "--listener", "127.0.0.1:25"])
    assert result.exit_code == 64
    assert "give one of --listener, --torrc, --state-dir, --config" in result.output


def test_config_file_before_setup_ran_names_the_table_listener(tmp_path):
    from onion_gateway.audit import setup_record

    config = tmp_path / "og.toml"
    config.write_text('[setup]\nlistener = "127.0.0.1:2600"\nstate_dir = "state"\npostfix_config_dir = "pf"\n'
                      'hidden_service_dir = "hs"\n')
    record = setup_record(config)
    assert (str(record.listener), record.onion_port) == ("127.0.0.1:2600", 25)
    assert record.postfix_config_dir == tmp_path / "pf" and record.hidden_service_dir == str(tmp_path / "hs")
    assert record.source == f"{config} [setup]"


def test_config_file_after_setup_ran_uses_the_record(tmp_path):
    from onion_gateway.audit import setup_record

    _manifest(tmp_path / "state", {"listener": "127.0.0.1:2601", "onion_port": 25,
                                   "hidden_service_dir": str(tmp_path / "hs"), "postfix_config_dir": None})
    config = tmp_path / "og.toml"
    config.write_text('[setup]\nlistener = "127.0.0.1:2600"\nstate_dir = "state"\n')
    assert str(setup_record(config).listener) == "127.0.0.1:2601"


def _tor_torrc(tmp_path, hs_mode: int):
    hs = tmp_path / "hs"
    hs.mkdir(mode=hs_mode)
    hs.chmod(hs_mode)
    (hs / "hostname").write_text("abc.onion\n")
    (tmp_path / "torrc.d").mkdir()
    (tmp_path / "torrc.d" / "50.conf").write_text(
        f"HiddenServiceDir {hs}\nHiddenServicePort 25 127.0.0.1:2526\nHiddenServicePort 26 unix:\"/run/a b/s\"\n")
    (tmp_path / "torrc").write_text(f"DisableNetwork 1\n%include {tmp_path}/torrc.d\n")
    return tmp_path / "torrc"


def test_onion_ports_are_read_by_tor_itself(tmp_path):
    from tests.conftest import require

    require("tor")
    ports = onion_ports(_tor_torrc(tmp_path, 0o700))
    assert [(p.virtual_port, str(p.target), p.discovered_by) for p in ports] == [
        (25, "127.0.0.1:2526", "tor --dump-config"), (26, "unix:/run/a b/s", "tor --dump-config")]
    assert ports[0].onion == "abc.onion"
    assert ports[0].source == f"{tmp_path}/torrc.d/50.conf:2"          # the file and line, from the parser


def test_onion_ports_fall_back_to_the_parser_when_tor_refuses(tmp_path):
    from tests.conftest import require

    require("tor")
    ports = onion_ports(_tor_torrc(tmp_path, 0o755))       # tor: "Permissions on directory ... too permissive"
    assert [p.discovered_by for p in ports] == ["torrc parser"] * 2
    assert str(ports[1].target) == "unix:/run/a b/s"


@pytest.mark.parametrize("name, target, found", [
    ("0.0.0.0:2530", "127.0.0.1:2530", True), ("[::]:2530", "[::1]:2530", True),
    ("[::]:2530", "127.0.0.1:2530", False),                 # Postfix's IPv6 sockets are IPV6_V6ONLY
])
def test_service_on_the_wildcard_address_receives_loopback_connections(name, target, found):
    services = [MasterService(name, "inet", "n", "smtpd")]
    match = find_listener(services, ListenAddress.parse(target), inet_interfaces="127.0.0.1",
                          queue_directory="/var/spool/postfix")
    assert (match is not None and match.all_interfaces) is found


def test_two_services_on_one_address_are_both_found():
    from onion_gateway.audit.discover import find_listeners

    services = [MasterService("127.0.0.1:2531", "inet", "n", "smtpd"), MasterService("2531", "inet", "n", "smtpd")]
    matches = find_listeners(services, ListenAddress.parse("127.0.0.1:2531"), inet_interfaces="127.0.0.1",
                             queue_directory="/var/spool/postfix")
    assert [m.service.name for m in matches] == ["127.0.0.1:2531", "2531"]
