"""The apply job without Consul: exact log line, atomic output, bad input writes nothing, live interface change."""
from __future__ import annotations

import logging
import stat

import pytest

from trunkproxy.cli import main
from trunkproxy.hosting.apply import run_apply
from trunkproxy.hosting.pjsip import OUTPUT_NAME

from .conftest import PROXY_NAME, TELEKOM_JSON, free_port, host_config

LINE = f"Will route trunk [telekom] via proxy [{PROXY_NAME}]"


def apply_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "trunkproxy.apply"]


async def test_seed_file_gives_the_exact_log_line_and_a_private_file(tmp_path, store, caplog):
    (tmp_path / "sipproxy.json").write_text(TELEKOM_JSON)
    caplog.set_level(logging.INFO, logger="trunkproxy.apply")
    result = await run_apply(host_config(tmp_path), kv_rules=None, store=store, output_dir=tmp_path / "out",
                             sipproxy_json=tmp_path / "sipproxy.json", check_dns=False)
    assert result.ok and result.errors == []
    assert LINE in apply_lines(caplog)
    assert "Will route trunk [sipgate] directly to registrar [sipgate.de] (no proxy)" in apply_lines(caplog)
    out = tmp_path / "out" / OUTPUT_NAME
    assert result.written == [out]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it holds the auth secrets
    assert f"outbound_proxy=sip:{PROXY_NAME}\\;lr\\;transport=tcp" in out.read_text()
    assert "s3cr3t-telekom" not in "\n".join(apply_lines(caplog))


async def test_missing_file_means_no_rules(tmp_path, store):
    result = await run_apply(host_config(tmp_path), kv_rules=None, store=store, output_dir=tmp_path / "out",
                             sipproxy_json=tmp_path / "absent.json", check_dns=False)
    assert result.ok
    assert all("directly" in line for line in result.lines)


BAD_FILES = {
    "invalid_json": ('{"tel.t-online.de": {"proxy": "p.example",}}', ":1: not valid JSON"),
    "not_object": ('["tel.t-online.de"]', ":1: top level is a list"),
    "unknown_key": ('{\n"tel.t-online.de": {"proxy": "p.example",\n "transport": "tcp"}}', ":3: key 'transport'"),
    "options_not_string": ('{"tel.t-online.de": {"proxy": "p.example", "options": 1}}', "is a number, not a string"),
    "option_not_key_value": ('{"tel.t-online.de": {"proxy": "p.example", "options": "\\ntcp\\n"}}', "is not key=value"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
async def test_bad_file_writes_nothing_and_keeps_the_previous_output(tmp_path, store, caplog, name):
    config, out = host_config(tmp_path), tmp_path / "out"
    rules = tmp_path / "sipproxy.json"
    rules.write_text(TELEKOM_JSON)
    assert (await run_apply(config, kv_rules=None, store=store, output_dir=out, sipproxy_json=rules, check_dns=False)).ok
    before = (out / OUTPUT_NAME).read_text()
    text, fragment = BAD_FILES[name]
    rules.write_text(text)
    store.edit("sipgate", interface="ens6")  # a change that would alter the output
    caplog.set_level(logging.INFO, logger="trunkproxy.apply")
    result = await run_apply(config, kv_rules=None, store=store, output_dir=out, sipproxy_json=rules, check_dns=False)
    assert not result.ok and result.written == []
    assert any(str(rules) in e and fragment in e for e in result.errors), result.errors
    assert (out / OUTPUT_NAME).read_text() == before
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_NAME]
    assert not any(m.startswith("Will route") for m in apply_lines(caplog))
    assert "apply failed: nothing written" in apply_lines(caplog)[-1]


async def test_interface_change_takes_effect_on_apply(tmp_path, store):
    config, out = host_config(tmp_path), tmp_path / "out"
    first = await run_apply(config, kv_rules=None, store=store, output_dir=out, sipproxy_json=None, check_dns=False)
    assert first.lines[1] == "Will route trunk [telekom] directly to registrar [tel.t-online.de] (no proxy)"
    store.edit("telekom", interface="ens6")
    second = await run_apply(config, kv_rules=None, store=store, output_dir=out, sipproxy_json=None, check_dns=False)
    assert second.lines[1] == "Will route trunk [telekom] via proxy [csphost01-ifens6.cs-proxy.service.pascom]"
    assert second.changed and "outbound_proxy=sip:csphost01-ifens6.cs-proxy.service.pascom\\;lr" in (out / OUTPUT_NAME).read_text()
    third = await run_apply(config, kv_rules=None, store=store, output_dir=out, sipproxy_json=None, check_dns=False)
    assert third.ok and not third.changed and third.written == []


async def test_unknown_interface_fails(tmp_path, store):
    store.edit("telekom", interface="ens9")
    result = await run_apply(host_config(tmp_path), kv_rules=None, store=store, output_dir=tmp_path / "out", sipproxy_json=None,
                             check_dns=False)
    assert not result.ok and "interface 'ens9'" in result.errors[0]
    assert not (tmp_path / "out").exists()


async def test_unresolvable_proxy_fails_naming_file_and_line(tmp_path, store):
    """A DNS server that does not answer (nothing listens on the port) counts as 'does not resolve'."""
    (tmp_path / "sipproxy.json").write_text(TELEKOM_JSON)
    result = await run_apply(host_config(tmp_path), kv_rules=None, store=store, output_dir=tmp_path / "out",
                             sipproxy_json=tmp_path / "sipproxy.json", dns_server=f"127.0.0.1:{free_port()}",
                             dns_timeout=0.5)
    assert not result.ok
    assert f"{tmp_path / 'sipproxy.json'}:2: proxy '{PROXY_NAME}'" in result.errors[0]
    assert "--dns-server" in result.errors[0]
    assert not (tmp_path / "out").exists()


def write_toml(tmp_path) -> str:
    path = tmp_path / "trunkproxy.toml"
    path.write_text(f'[proxy]\nhostname = "csphost01"\nstate_dir = "{tmp_path / "state"}"\n'
                    '[[endpoints]]\ninterface = "ens5"\nexternal_address = "198.51.100.1"\n')
    return str(path)


def test_cli_trunk_commands_and_apply(tmp_path, capsys, monkeypatch, caplog):
    config = write_toml(tmp_path)
    (tmp_path / "sipproxy.json").write_text(TELEKOM_JSON)
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("pw-from-stdin\n"))
    assert main(["-c", config, "trunk", "add", "telekom", "--registrar", "tel.t-online.de", "--username", "u1",
                 "--secret-stdin"]) == 0
    assert main(["-c", config, "trunk", "add", "telekom", "--registrar", "x.example"]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["-c", config, "trunk", "list", "--json"]) == 0
    listing = capsys.readouterr().out
    assert '"secret": "***"' in listing and "pw-from-stdin" not in listing
    assert (tmp_path / "state" / "trunks.sqlite").exists()  # default store: STATE_DIR/trunks.sqlite

    args = ["-c", config, "apply", "--output", str(tmp_path / "out"), "--sipproxy-json",
            str(tmp_path / "sipproxy.json"), "--no-dns-check"]
    caplog.set_level(logging.INFO, logger="trunkproxy.apply")
    assert main(args + ["--dry-run"]) == 0
    diff = capsys.readouterr().out
    assert f"+outbound_proxy=sip:{PROXY_NAME}\\;lr\\;transport=tcp" in diff
    assert "+password=***" in diff and "pw-from-stdin" not in diff
    assert not (tmp_path / "out").exists()
    assert main(args) == 0
    assert LINE in apply_lines(caplog)
    assert "password=pw-from-stdin" in (tmp_path / "out" / OUTPUT_NAME).read_text()
    assert main(args + ["--dry-run"]) == 0
    assert "no changes" in capsys.readouterr().out

    (tmp_path / "sipproxy.json").write_text("{")
    assert main(args) == 1
    assert main(["-c", config, "trunk", "edit", "telekom", "--interface", "ens5"]) == 0
    assert main(["-c", config, "trunk", "remove", "telekom"]) == 0
    assert main(["-c", config, "trunk", "list"]) == 0
    assert "no trunks" in capsys.readouterr().out


async def test_missing_trunk_store_is_an_error_not_an_empty_configuration(tmp_path):
    from trunkproxy.hosting.trunks import TrunkStore

    result = await run_apply(host_config(tmp_path), kv_rules=None, store=TrunkStore(tmp_path / "typo.sqlite"),
                             output_dir=tmp_path / "out", sipproxy_json=None, check_dns=False)
    assert not result.ok and "does not exist" in result.errors[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "typo.sqlite").exists()


async def test_a_standalone_host_without_consul_gives_the_pbx_the_endpoints_internal_address(tmp_path, store):
    """Issue 15: without Consul the proxy's DNS name resolves nowhere; the apply job works out of
    the box with the endpoint's internal side, and its (on) DNS check passes for an address."""
    config = host_config(tmp_path, standalone=True)
    store.edit("telekom", interface="ens5")
    result = await run_apply(config, store=store, output_dir=tmp_path / "out", sipproxy_json=None)
    assert result.ok, result.errors
    assert result.lines[1] == "Will route trunk [telekom] via proxy [127.0.0.1:5060]"
    assert "outbound_proxy=sip:127.0.0.1:5060\\;lr" in (tmp_path / "out" / OUTPUT_NAME).read_text()


def test_standalone_walk_through_from_the_command_line(tmp_path, capsys):
    """README's standalone walk-through: no Consul, one PBX on the host, one trunk, apply. The
    PBX's transport does not take the endpoint's port (5060 on loopback)."""
    from trunkproxy.cli import main

    config = tmp_path / "trunkproxy.toml"
    config.write_text(f'[proxy]\nstate_dir = "{tmp_path / "state"}"\n\n'
                      '[[endpoints]]\ninterface = "lo"\nexternal_port = 5080\n')
    assert main(["-c", str(config), "trunk", "add", "telekom", "--registrar", "tel.t-online.de",
                 "--username", "0301234567", "--secret", "s3cr3t", "--interface", "lo"]) == 0
    assert main(["-c", str(config), "apply", "--output", str(tmp_path / "asterisk"), "--no-sipproxy-json"]) == 0
    written = (tmp_path / "asterisk" / OUTPUT_NAME).read_text()
    assert "outbound_proxy=sip:127.0.0.1:5060\\;lr" in written
    assert "bind=0.0.0.0:5062" in written and "bind=0.0.0.0:5060" not in written
