"""The generated Kamailio config is accepted by the real Kamailio (`kamailio -c`)."""
import json
import re
import shutil
import subprocess

import pytest

from trunkproxy.config.model import CaptureSettings, Config, Endpoint, Provider, ProxySettings
from trunkproxy.kamailio.render import InterfaceError, interface_address, kamailio_cfg, resolve_endpoint, settings_json
from trunkproxy.routing.settings import settings_from_json


def _config(tmp_path, **endpoint):
    return Config(
        proxy=ProxySettings(state_dir=str(tmp_path)),
        endpoints=[Endpoint(interface="lo", internal_port=5390, external_port=5391, **endpoint)],
        providers={"tel.example.test": Provider(addresses=["192.0.2.10:5060"], transport="tcp"),
                   "srtp.example.test": Provider(srtp=True)},
    )


def _kamailio_check(config: Config):
    """The generated config and settings written, then `kamailio -c` on them: its result."""
    resolved = resolve_endpoint(config, config.endpoints[0])
    resolved.run_dir.mkdir(parents=True)
    resolved.config_path.write_text(kamailio_cfg(config, resolved, ["host-iflo.cs-proxy.service.pascom"]))
    resolved.settings_path.write_text(settings_json(config, resolved, b"s" * 32, None))
    result = subprocess.run([shutil.which("kamailio"), "-c", "-f", str(resolved.config_path)], capture_output=True,
                            text=True, env={"TRUNKPROXY_ENDPOINT_SETTINGS": str(resolved.settings_path),
                                            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, timeout=30)
    return resolved, result


@pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio not installed (scripts/install-system-deps)")
@pytest.mark.parametrize("extra", [{}, {"advertise": "203.0.113.1:5070"}, {"transports": ["udp"]},
                                   {"media_relay": True}, {"media_relay": False}, {"pbx_srtp": False}])
def test_kamailio_accepts_generated_config(tmp_path, extra):
    resolved, result = _kamailio_check(_config(tmp_path, **extra))
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("#!define WITH_MEDIA" in resolved.config_path.read_text()) is resolved.relays_media


@pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio not installed (scripts/install-system-deps)")
def test_kamailio_accepts_the_config_with_hep_capture(tmp_path):
    config = _config(tmp_path).model_copy(update={"capture": CaptureSettings(hep="127.0.0.1:9060")})
    resolved, result = _kamailio_check(config)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'modparam("siptrace", "duplicate_uri", "sip:127.0.0.1:9060")' in resolved.config_path.read_text()


def test_settings_round_trip_with_live_overrides(tmp_path):
    config = _config(tmp_path, advertise="203.0.113.1:5070")
    resolved = resolve_endpoint(config, config.endpoints[0])
    text = settings_json(config, resolved, b"s" * 32, "/run/ev.sock", {"sip.new.test": {"transport": "tcp"}})
    settings = settings_from_json(text)
    assert settings.external["udp"].advertised_hostport() == "203.0.113.1:5070"
    assert settings.external["udp"].spec() == "udp:127.0.0.1:5391"
    assert settings.providers["tel.example.test"].addresses == (("192.0.2.10", 5060),)
    assert settings.providers["sip.new.test"].transport == "tcp"
    assert settings.pinned_ips == frozenset({"192.0.2.10"})
    assert json.loads(text)["events_socket"] == "/run/ev.sock"


def test_missing_interface_is_named():
    with pytest.raises(InterfaceError, match="'ens99' does not exist"):
        interface_address("ens99")


def test_a_provider_stays_known_as_long_as_its_memoised_reply(tmp_path):
    # a replayed 2xx/401 does not mark its source known again: the mark must outlive the memo
    config = _config(tmp_path)
    resolved = resolve_endpoint(config, config.endpoints[0])
    text = kamailio_cfg(config, resolved, [])
    expiry = {name: int(ttl) for name, ttl in re.findall(r'"(tp_\w+)=>size=\d+;autoexpire=(\d+);"', text)}
    assert expiry["tp_known"] >= expiry["tp_rep"] > 0


def test_check_config_finds_what_run_would_refuse(tmp_path, capsys):
    from trunkproxy.cli import main

    path = tmp_path / "t.toml"
    path.write_text(f'[proxy]\nstate_dir = "{tmp_path}"\n[[endpoints]]\ninterface = "ens99"\n'
                    'internal_address = "192.0.2.77"\n')
    assert main(["-c", str(path), "check-config"]) == 2
    err = capsys.readouterr().err
    assert "endpoint ifens99: interface: network interface 'ens99' does not exist" in err
    assert "internal_address = '192.0.2.77' is not an address of this host" in err
    path.write_text(f'[proxy]\nstate_dir = "{tmp_path}"\n[[endpoints]]\ninterface = "lo"\nexternal_port = 5081\n')
    assert main(["-c", str(path), "check-config"]) == 0
    assert "configuration OK: endpoints iflo" in capsys.readouterr().out
