import pytest

from trunkproxy.config.load import ConfigError, load_config


def test_embedded_default_when_no_file(monkeypatch, tmp_path):
    monkeypatch.setattr("trunkproxy.config.load.DEFAULT_PATH", tmp_path / "absent.toml")
    config = load_config(None)
    assert [e.endpoint_name for e in config.endpoints] == ["iflo"]
    assert config.endpoints[0].internal_port == 5060 and config.endpoints[0].external_port == 5080


def test_full_file(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("""
[proxy]
hostname = "csphost01"
instance_networks = ["10.0.3.0/24"]
[[endpoints]]
interface = "ens5"
internal_address = "10.0.3.1"
[providers."tel.t-online.de"]
transport = "tcp"
addresses = ["192.0.2.10:5060", "192.0.2.11"]
""")
    config = load_config(path)
    assert config.endpoints[0].endpoint_name == "ifens5"
    assert config.providers["tel.t-online.de"].transport == "tcp"


@pytest.mark.parametrize("body, expected", [
    ("[proxy]\nworkerz = 3\n", "key `proxy.workerz`: unknown key"),
    ("[[endpoints]]\ninterface = 'lo'\nexternal_port = 70000\n", "key `endpoints.0.external_port`"),
    ("[proxy]\ninstance_networks = ['10.0.0.0/33']\n", "is not an IP network"),
    ("[providers.'x.test']\naddresses = ['x.test:5060']\n", "pinned addresses must be IP[:PORT]"),
    ("[proxy\n", "not valid TOML"),
    ("[proxy]\nallow_destinations = ['10.0.0.0/33']\n", "key `proxy.allow_destinations`"),
    ("[[endpoints]]\ninterface = 'lo'\nallow_destinations = ['sip example']\n",
     "'sip example' is neither an IP network ('203.0.113.0/24', '192.0.2.10') nor a host name"),
])
def test_errors_name_file_and_key(tmp_path, body, expected):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_example_config_is_a_valid_configuration(tmp_path, capsys):
    from trunkproxy.cli import main

    assert main(["example-config"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "trunkproxy.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.endpoints[0].interface == "ens5" and config.media.relay == "auto"
    assert config.proxy.core_dumps is False


def test_version_is_printed(capsys):
    from trunkproxy.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("trunkproxy 0.")


def test_log_lines_leave_the_timestamp_to_the_journal_under_systemd():
    from trunkproxy.cli import log_format

    assert log_format({"JOURNAL_STREAM": "8:1234"}) == "%(levelname)s %(name)s: %(message)s"
    assert log_format({}).startswith("%(asctime)s ")


def test_config_is_accepted_after_the_command_too(tmp_path, capsys):
    """README: `./run.sh --config FILE` runs `trunkproxy run --config FILE`."""
    from trunkproxy.cli import build_parser, main

    path = tmp_path / "trunkproxy.toml"
    path.write_text('[[endpoints]]\ninterface = "lo"\nname = "after"\nexternal_port = 5080\n')
    assert build_parser().parse_args(["run", "--config", str(path)]).config == path
    assert build_parser().parse_args(["-c", str(path), "run"]).config == path
    assert main(["check-config", "--config", str(path)]) == 0
    assert "endpoints after" in capsys.readouterr().out
