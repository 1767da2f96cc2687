"""setup's pure pieces: settings, transport_maps prepending, master.cf parsing, SRV records, the policy check.

The policy check runs the real postconf against a scratch main.cf/master.cf (no daemon, milliseconds).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from onion_gateway.address import parse_listen_address
from onion_gateway.config import ServeSettings
from onion_gateway.errors import ConfigError, SetupError
from onion_gateway.setup.plan import (check_listener_policy, main_parameters, master_entries,
                                      prepend_transport_map, srv_records)
from onion_gateway.render import MainCf, MasterCf, render
from onion_gateway.setup.settings import SetupSettings, default_transport_map, setup_settings
from tests.support.onions import ONION_A


@pytest.mark.parametrize("existing, expected", [
    ("", "socketmap:inet:127.0.0.1:6014:onion"),
    ("hash:/etc/postfix/transport", "socketmap:inet:127.0.0.1:6014:onion, hash:/etc/postfix/transport"),
    ("hash:/a, regexp:/b", "socketmap:inet:127.0.0.1:6014:onion, hash:/a, regexp:/b"),
    ("hash:/a socketmap:inet:127.0.0.1:6014:onion", "socketmap:inet:127.0.0.1:6014:onion, hash:/a"),
    ("socketmap:inet:127.0.0.1:6014:onion, hash:/a", "socketmap:inet:127.0.0.1:6014:onion, hash:/a"),
])
def test_transport_maps_are_prepended_never_dropped(existing, expected):
    assert prepend_transport_map("socketmap:inet:127.0.0.1:6014:onion", existing) == expected


def test_a_previous_map_of_ours_is_replaced_and_the_users_kept():
    assert prepend_transport_map("tcp:127.0.0.1:7013", "tcp:127.0.0.1:6013, hash:/a",
                                 previous="tcp:127.0.0.1:6013") == "tcp:127.0.0.1:7013, hash:/a"
    assert prepend_transport_map("tcp:127.0.0.1:6013", "tcp:127.0.0.1:6013, hash:/a",
                                 previous="tcp:127.0.0.1:6013") == "tcp:127.0.0.1:6013, hash:/a"


def test_prepending_twice_changes_nothing():
    once = prepend_transport_map("tcp:127.0.0.1:6013", "hash:/a")
    assert prepend_transport_map("tcp:127.0.0.1:6013", once) == once


def test_master_entries_join_continuation_lines():
    text = render(MasterCf(transport="smtptor", command="smtp_tor", tls_level="none", listener="127.0.0.1:2525"))
    entries = dict(master_entries(text))
    assert list(entries) == ["smtptor/unix", "127.0.0.1:2525/inet"]
    assert entries["smtptor/unix"].startswith("smtptor unix - - n - - smtp_tor -o syslog_name=postfix/smtptor ")
    assert "-o mynetworks= " in entries["127.0.0.1:2525/inet"]


def test_master_entries_refuse_a_dangling_continuation():
    with pytest.raises(SetupError, match="continuation"):
        master_entries("  -o x=y\n")


def test_main_parameters_skip_the_header():
    assert main_parameters(render(MainCf(transport_maps="tcp:127.0.0.1:6013"))) == [
        "transport_maps = tcp:127.0.0.1:6013"]


def test_srv_records_one_per_domain():
    assert srv_records(["example.com", "example.net"], ONION_A) == [
        f"_onion-mx._tcp.example.com. 3600 IN SRV 10 5 25 {ONION_A}.",
        f"_onion-mx._tcp.example.net. 3600 IN SRV 10 5 25 {ONION_A}.",
    ]


def test_default_transport_map_prefers_socketmap():
    assert default_transport_map(ServeSettings()) == "socketmap:inet:127.0.0.1:6014:onion"
    only_tcp = ServeSettings(socketmap=(), tcp_table=(parse_listen_address("127.0.0.1:7013"),))
    assert default_transport_map(only_tcp) == "tcp:127.0.0.1:7013"


def test_settings_layer_flags_over_file(tmp_path):
    s = setup_settings({"listener": "127.0.0.1:2526", "domains": ["A.example."], "state_dir": "state",
                        "systemd_unit": ""},
                       {"domains": ["b.example", "c.example"], "listener": None}, base_dir=tmp_path)
    assert str(s.listener) == "127.0.0.1:2526"
    assert s.domains == ("b.example", "c.example")
    assert s.state_dir == tmp_path / "state"
    assert s.systemd_unit is None


@pytest.mark.parametrize("table, message", [
    ({"listener": "0.0.0.0:2525"}, "setup.listener: .*loopback"),
    ({"listener": "unix:/x"}, "setup.listener"),
    ({"domains": ["not a domain!"]}, "setup.domains"),
    ({"smtp_tls_security_level": "bogus"}, "setup.smtp_tls_security_level"),
    ({"reload": "yes"}, "setup.reload"),
    ({"onion_port": 0}, "setup.onion_port"),
    ({"nonsense": 1}, "setup.nonsense: unknown setting"),
    ({"torsocks": "$(evil)"}, "setup.torsocks"),
    ({"transport_map": "tcp:127.0.0.1:6013\nmynetworks = 0.0.0.0/0"}, "setup.transport_map"),
])
def test_bad_settings_are_named(table, message):
    with pytest.raises(ConfigError, match=message):
        setup_settings(table)


def test_defaults_are_debian_paths():
    s = SetupSettings()
    assert str(s.tor_control) == "unix:/run/tor/control"
    assert s.torrc == Path("/etc/tor/torrc")
    assert s.wrapper_path is None     # = $daemon_directory/smtp_tor


def test_default_state_dir_is_outside_the_daemons_state_directory():
    from onion_gateway.setup.state import DAEMON_STATE_DIR, check_not_in_daemon_state_dir

    assert DAEMON_STATE_DIR not in SetupSettings().state_dir.parents
    check_not_in_daemon_state_dir(SetupSettings().state_dir)          # no error


def test_records_left_at_the_old_default_are_named_with_the_move(tmp_path, monkeypatch):
    # the two defaults are system paths: the test relocates them under tmp_path
    from onion_gateway.setup import state

    daemon_dir, new_default = tmp_path / "lib" / "onion-gateway", tmp_path / "lib" / "onion-gateway-setup"
    monkeypatch.setattr(state, "DAEMON_STATE_DIR", daemon_dir)
    monkeypatch.setattr(state, "OLD_DEFAULT_STATE_DIR", daemon_dir / "setup")
    monkeypatch.setattr(state, "DEFAULT_STATE_DIR", new_default)
    (daemon_dir / "setup").mkdir(parents=True)
    (daemon_dir / "setup" / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match=f"mv {daemon_dir}/setup {new_default} && chown -R root:root"):
        state.read_setup_state(new_default)
    with pytest.raises(ConfigError, match="nothing was changed"):
        state.check_state_dir(new_default, create=True)
    assert not new_default.exists()
    new_default.mkdir(mode=0o700)                      # once moved, the new default is used
    (new_default / "manifest.json").write_text("{}")
    state.check_not_in_daemon_state_dir(new_default)


@pytest.fixture
def scratch_postfix(tmp_path):
    if shutil.which("postconf") is None:
        pytest.fail("postconf missing: run 'sh scripts/dev.sh test'")
    (tmp_path / "main.cf").write_text("compatibility_level = 3.6\nmynetworks = 127.0.0.0/8\n"
                                      "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n")
    (tmp_path / "master.cf").write_text("smtp unix - - n - - smtp\n")
    _age(tmp_path)
    return tmp_path


def _age(config_dir: Path) -> None:
    # postconf waits while main.cf/master.cf are younger than a second (Postfix's half-written-file guard)
    for name in ("main.cf", "master.cf"):
        path = config_dir / name
        os.utime(path, (path.stat().st_mtime - 10,) * 2)


def _add_listener(config_dir: Path, options: str) -> None:
    from onion_gateway import postfix

    postfix.postconf(config_dir, "-M", f"127.0.0.1:2525/inet=127.0.0.1:2525 inet n - n - - smtpd {options}")
    _age(config_dir)


def _add_rendered_listener(config_dir: Path, **template) -> None:
    from onion_gateway import postfix

    text = render(MasterCf(transport="smtptor", command="smtp_tor", tls_level="none", listener="127.0.0.1:2525",
                           **template))
    entry = dict(master_entries(text))["127.0.0.1:2525/inet"]
    postfix.postconf(config_dir, "-M", f"127.0.0.1:2525/inet={entry}")
    _age(config_dir)


def test_policy_check_accepts_the_rendered_listener_on_a_loopback_trusting_main_cf(scratch_postfix):
    _add_rendered_listener(scratch_postfix)
    assert check_listener_policy(scratch_postfix, "127.0.0.1:2525") == []


def test_rendered_listener_overrides_every_inherited_setting_the_audit_flags(scratch_postfix):
    """main.cf trusts loopback everywhere it can; the template's -o options must shadow all of it."""
    from onion_gateway import postfix

    for setting in ("smtpd_authorized_xclient_hosts = 127.0.0.1", "smtpd_authorized_xforward_hosts = 127.0.0.0/8",
                    "smtpd_recipient_restrictions = permit_mynetworks, permit_inet_interfaces, "
                    "reject_unauth_destination", "allow_untrusted_routing = yes"):
        postfix.postconf(scratch_postfix, "-e", setting)
    _add_rendered_listener(scratch_postfix)
    assert check_listener_policy(scratch_postfix, "127.0.0.1:2525") == []


def test_policy_check_sees_main_cf_trusting_loopback(scratch_postfix):
    _add_listener(scratch_postfix, "-o syslog_name=postfix/onion")
    with pytest.raises(SetupError, match=r"would be an open relay .*mynetworks_loopback: .*"
                                         r"mynetworks = 127\.0\.0\.0/8 \(set in .*mynetworks: main\.cf"):
        check_listener_policy(scratch_postfix, "127.0.0.1:2525")


def test_policy_check_sees_permit_inet_interfaces(scratch_postfix):
    """Not in mynetworks, no bare permit, ends in reject_unauth_destination, and still open."""
    _add_rendered_listener(scratch_postfix, relay_restrictions="permit_inet_interfaces,reject_unauth_destination")
    with pytest.raises(SetupError, match="permit_inet_interfaces.*nothing was changed"):
        check_listener_policy(scratch_postfix, "127.0.0.1:2525")


def test_policy_check_sees_a_client_access_table_that_trusts_loopback(scratch_postfix):
    """A [setup] relay_restrictions the old own check passed: the table answers OK for 127.0.0.1."""
    table = scratch_postfix / "clients.cidr"
    table.write_text("192.0.2.0/24 OK\n127.0.0.0/8 OK\n")
    settings = setup_settings({"relay_restrictions": f"check_client_access cidr:{table}, reject_unauth_destination"})
    _add_rendered_listener(scratch_postfix, relay_restrictions=settings.relay_restrictions)
    with pytest.raises(SetupError, match=r"access_map_ok: .*127\.0\.0\.0/8 OK"):
        check_listener_policy(scratch_postfix, "127.0.0.1:2525")


def test_policy_check_refuses_xclient_hosts(scratch_postfix):
    _add_listener(scratch_postfix, "-o mynetworks= -o smtpd_relay_restrictions=reject_unauth_destination "
                                   "-o smtpd_authorized_xclient_hosts=127.0.0.1")
    with pytest.raises(SetupError, match=r"xclient_loopback: smtpd_authorized_xclient_hosts = 127\.0\.0\.1 "
                                         r"\(set in master\.cf 127\.0\.0\.1:2525/inet"):
        check_listener_policy(scratch_postfix, "127.0.0.1:2525")


def test_policy_check_refuses_relay_domains_covering_onion_inherited_from_main_cf(scratch_postfix):
    from onion_gateway import postfix

    postfix.postconf(scratch_postfix, "-e", "relay_domains = onion")
    _add_rendered_listener(scratch_postfix)
    with pytest.raises(SetupError, match=r"relay_domains_onion: relay_domains = onion \(set in main\.cf\)"):
        check_listener_policy(scratch_postfix, "127.0.0.1:2525")


def test_policy_check_returns_a_masked_permit_as_a_warning(scratch_postfix):
    _add_rendered_listener(scratch_postfix, recipient_restrictions="permit_inet_interfaces")
    notes = check_listener_policy(scratch_postfix, "127.0.0.1:2525")
    assert len(notes) == 1 and "permit_inet_interfaces" in notes[0] and "masked" in notes[0]


def test_policy_check_refuses_a_plan_without_the_listener(scratch_postfix):
    with pytest.raises(SetupError, match="no smtpd listening on 127.0.0.1:2525"):
        check_listener_policy(scratch_postfix, "127.0.0.1:2525")


def test_example_config_documents_every_setup_key_with_valid_values():
    from dataclasses import fields

    from onion_gateway.config import load_config_file

    path = Path(__file__).resolve().parents[2] / "examples" / "onion-gateway.toml"
    text = path.read_text()
    document = load_config_file(path)
    settings = setup_settings(document["setup"], None, path.parent)
    assert settings.listener == SetupSettings().listener
    assert "static_routes" not in document["setup"] and "setup" not in document["serve"]["static_routes"]
    for f in fields(SetupSettings):
        assert f"\n{f.name} = " in text or f"\n# {f.name} = " in text, f"setup.{f.name} is not documented"


def test_item10_an_ipv6_daemon_table_is_named_once_and_recognised_by_status():
    from dataclasses import replace

    from onion_gateway.setup.settings import parse_daemon_table
    from onion_gateway.status import uses_daemon

    serve = replace(ServeSettings(), socketmap=(parse_listen_address("[::1]:6014"),), tcp_table=())
    table = default_transport_map(serve)
    assert table == "socketmap:inet:[::1]:6014:onion"
    assert uses_daemon(f"regexp:/etc/postfix/own.regexp, {table}", serve) == table
    assert parse_daemon_table(table) == ("socketmap", parse_listen_address("[::1]:6014"), "onion")


def test_item7_master_entries_keep_brace_groups_whole():
    from onion_gateway.postfix_syntax import split_fields

    text = "127.0.0.1:2525 inet n - n - - smtpd\n  -o { smtpd_tls_ciphers = high } -o a=b,c\n"
    assert master_entries(text) == [("127.0.0.1:2525/inet",
                                     "127.0.0.1:2525 inet n - n - - smtpd -o { smtpd_tls_ciphers = high } -o a=b,c")]
    assert split_fields("-o { x = y z } -o a=b,c") == ["-o", "{ x = y z }", "-o", "a=b,c"]


def test_item7_prepend_keeps_a_nested_inline_table_whole():
    nested = "inline:{ b.example=error:gone, { a.example = smtp:[192.0.2.1] } }"
    ours = ["regexp:/etc/postfix/own.regexp", "socketmap:inet:127.0.0.1:6014:onion"]
    assert prepend_transport_map(ours, nested) == f"{ours[0]}, {ours[1]}, {nested}"
    assert prepend_transport_map(ours, f"{ours[0]}, {ours[1]}, {nested}") == f"{ours[0]}, {ours[1]}, {nested}"


def _packaged(tmp_path, monkeypatch, *, vendor_unit=True, etc_unit=False):
    from onion_gateway.setup import plan
    vendor = tmp_path / "lib-systemd-system"
    vendor.mkdir()
    if vendor_unit:
        (vendor / "onion-gateway.service").write_text("[Service]\n")
    etc = tmp_path / "etc-systemd-system" / "onion-gateway.service"
    etc.parent.mkdir()
    if etc_unit:
        etc.write_text("[Service]\n")
    monkeypatch.setattr(plan, "PACKAGED_UNIT_DIRS", (vendor,))
    monkeypatch.setattr(plan, "DEFAULT_UNIT", etc)
    return plan, vendor / "onion-gateway.service", etc


def test_setup_uses_the_packaged_unit_instead_of_writing_one(tmp_path, monkeypatch):
    plan, vendor_unit, etc = _packaged(tmp_path, monkeypatch)
    assert plan.packaged_unit(setup_settings({"systemd_unit": str(etc)})) == vendor_unit


@pytest.mark.parametrize("case", ["own unit in /etc", "other unit path", "other serve config", "no package"])
def test_setup_writes_its_own_unit_when_the_packaged_one_does_not_fit(tmp_path, monkeypatch, case):
    plan, _, etc = _packaged(tmp_path, monkeypatch, vendor_unit=case != "no package",
                             etc_unit=case == "own unit in /etc")
    table = {"systemd_unit": str(tmp_path / "elsewhere.service") if case == "other unit path" else str(etc)}
    if case == "other serve config":
        table["serve_config"] = str(tmp_path / "mine.toml")
    assert plan.packaged_unit(setup_settings(table)) is None


@pytest.mark.parametrize("backup", ["../../etc/shadow", "/etc/shadow", "backups/../../x", "elsewhere/0000-main.cf"])
def test_a_version_0_1_manifest_naming_a_copy_outside_its_backups_is_refused(tmp_path, backup):
    from onion_gateway.errors import SetupError
    from onion_gateway.setup.legacy import legacy_changes

    manifest = {"files": [{"path": str(tmp_path / "torrc"), "backup": backup}], "onion": None}
    with pytest.raises(SetupError, match="names a backup outside"):
        legacy_changes(manifest, tmp_path)


def test_a_version_0_1_copy_that_is_missing_is_refused(tmp_path):
    from onion_gateway.errors import SetupError
    from onion_gateway.setup.legacy import legacy_changes

    manifest = {"files": [{"path": str(tmp_path / "torrc"), "backup": "backups/0000-torrc"}], "onion": None}
    with pytest.raises(SetupError, match="is missing; nothing was changed"):
        legacy_changes(manifest, tmp_path)


def test_version_0_1_appended_lines_are_only_setups_include_and_header():
    from onion_gateway.render import MANAGED_BY
    from onion_gateway.setup.legacy import _appended

    before = b"DataDirectory /var/lib/tor\n"
    now = before + f"# {MANAGED_BY}\n%include /etc/tor/onion-gateway.torrc\n%include /etc/tor/mine\n".encode()
    assert _appended(before, now, {"/etc/tor/onion-gateway.torrc"}) == \
        f"# {MANAGED_BY}\n%include /etc/tor/onion-gateway.torrc\n"
    assert _appended(before, b"whole new file\n", {"/etc/tor/onion-gateway.torrc"}) is None


def test_a_version_0_1_manifest_that_does_not_name_setups_services_is_refused(tmp_path):
    from onion_gateway.errors import SetupError
    from onion_gateway.setup.legacy import legacy_changes

    manifest = {"files": [{"path": str(tmp_path / "master.cf"), "backup": "backups/0000-master.cf"}], "onion": None}
    with pytest.raises(SetupError, match="does not say which master.cf services"):
        legacy_changes(manifest, tmp_path)


def test_the_proxy_listener_leaves_out_main_cf_client_address_checks_and_names_each(scratch_postfix):
    """Every onion client is a Tor circuit address without reverse DNS: main.cf's reject_unknown_* would
    defer all onion mail. The rendered listener repeats the inherited lists without those checks (HELO and
    sender checks stay); the policy check of a listener that inherits them warns."""
    from onion_gateway import postfix
    from onion_gateway.setup.onionpath import listener_client_checks

    postfix.postconf(scratch_postfix, "-e",
                     "smtpd_client_restrictions = permit_mynetworks, reject_unknown_reverse_client_hostname, "
                     "reject_rbl_client zen.spamhaus.org",
                     "smtpd_helo_restrictions = permit_mynetworks, warn_if_reject reject_unknown_client_hostname, "
                     "reject_non_fqdn_helo_hostname",
                     "smtpd_sender_restrictions = reject_non_fqdn_sender")
    _age(scratch_postfix)
    overrides, notes = listener_client_checks(scratch_postfix)
    assert overrides == (("smtpd_client_restrictions", "permit_mynetworks"),
                         ("smtpd_helo_restrictions", "permit_mynetworks, reject_non_fqdn_helo_hostname"))
    assert [n.split(":")[0] for n in notes] == [
        "the onion listener does not inherit 'reject_unknown_reverse_client_hostname' from main.cf's "
        "smtpd_client_restrictions",
        "the onion listener does not inherit 'reject_rbl_client zen.spamhaus.org' from main.cf's "
        "smtpd_client_restrictions",
        "the onion listener does not inherit 'reject_unknown_client_hostname' from main.cf's smtpd_helo_restrictions"]
    assert "no reverse DNS" in notes[0] and "DNSBL" in notes[1]

    _add_rendered_listener(scratch_postfix, proxy_protocol=True)                 # inherits main.cf's lists
    warned = check_listener_policy(scratch_postfix, "127.0.0.1:2525")
    assert [w for w in warned if "client_address_check" in w] == [
        "relay audit of the listener 127.0.0.1:2525: every onion client is rejected: no reverse DNS for Tor circuit "
        "addresses (fc00:dead:beef:4dad::/64), so this defers all onion mail with 450 [client_address_check: "
        "smtpd_client_restrictions: reject_unknown_reverse_client_hostname (set in main.cf)]",
        "relay audit of the listener 127.0.0.1:2525: DNSBL lookups of Tor circuit addresses: a pointless DNS query "
        "per onion client, no circuit address is ever listed [client_address_check: smtpd_client_restrictions: "
        "reject_rbl_client zen.spamhaus.org (set in main.cf)]",
        "relay audit of the listener 127.0.0.1:2525: every onion client is rejected: no reverse DNS for Tor circuit "
        "addresses (fc00:dead:beef:4dad::/64), so this defers all onion mail with 450 [client_address_check: "
        "smtpd_helo_restrictions: reject_unknown_client_hostname (set in main.cf)]"]

    _add_rendered_listener(scratch_postfix, proxy_protocol=True, client_checks=overrides)
    assert check_listener_policy(scratch_postfix, "127.0.0.1:2525") == []
    written = postfix.postconf(scratch_postfix, "-P", "127.0.0.1:2525/inet/smtpd_helo_restrictions").strip()
    assert written == "127.0.0.1:2525/inet/smtpd_helo_restrictions = permit_mynetworks, reject_non_fqdn_helo_hostname"


def test_rollback_knows_a_braced_option_in_the_form_postconf_stores_it():
    """setup renders ``-o { name = a, b }``; postconf -M keeps ``-o {name=a, b}``: the same entry for rollback,
    which would otherwise keep the listener as "edited since setup"."""
    from onion_gateway.setup.journal import _norm_entry

    rendered = "127.0.0.1:2525 inet n - n - - smtpd -o { smtpd_helo_restrictions = permit_mynetworks,  reject } -o a=b"
    stored = "127.0.0.1:2525 inet n   -       n       -       -       smtpd -o {smtpd_helo_restrictions=permit_mynetworks, reject} -o a=b"
    assert _norm_entry(rendered) == _norm_entry(stored)
    assert _norm_entry(rendered) != _norm_entry(stored.replace("reject}", "reject_all}"))


@pytest.mark.parametrize("port25, main_cf, expected", [
    # FILTER_README's advanced content filter: the receiving smtpd skips the address mappings
    ("-o content_filter=scan:[127.0.0.1]:10025 -o receive_override_options=no_address_mappings", "",
     (("content_filter", "scan:[127.0.0.1]:10025"), ("receive_override_options", "no_address_mappings"))),
    # the filter in main.cf (inherited by the listener too), the override on the port-25 entry
    ("-o receive_override_options=no_address_mappings", "content_filter = smtp-amavis:[127.0.0.1]:10024",
     (("receive_override_options", "no_address_mappings"),)),
    # no filter: the override is the port-25 smtpd's own business
    ("-o smtpd_milters=inet:127.0.0.1:8891 -o receive_override_options=no_address_mappings", "",
     (("smtpd_milters", "inet:127.0.0.1:8891"),)),
])
def test_receive_override_options_go_with_the_content_filter(scratch_postfix, port25, main_cf, expected):
    from onion_gateway import postfix
    from onion_gateway.setup.onionpath import listener_inspection

    if main_cf:
        postfix.postconf(scratch_postfix, "-e", main_cf)
    postfix.postconf(scratch_postfix, "-M", f"smtp/inet=smtp inet n - n - - smtpd {port25}")
    _age(scratch_postfix)
    assert listener_inspection(scratch_postfix) == (expected, "smtp/inet")
