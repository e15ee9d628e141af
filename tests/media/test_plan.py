import pytest
from pydantic import ValidationError

from trunkproxy.config.model import Config, Endpoint, MediaSettings
from trunkproxy.media.plan import MediaInterface, endpoint_interfaces, offer_flags, relays_media, rtpengine_argv


@pytest.mark.parametrize("host, own, installed, relayed", [
    ("auto", None, True, True),
    ("auto", None, False, False),
    (True, None, False, True),       # asked for: the supervisor refuses to start without rtpengine
    (False, None, True, False),
    ("auto", False, True, False),    # the endpoint's own setting wins
    (False, True, True, True),
])
def test_an_endpoint_relays_by_its_own_setting_else_the_hosts(host, own, installed, relayed):
    media = MediaSettings(relay=host)
    assert relays_media(media, Endpoint(interface="lo", media_relay=own), installed) is relayed


def test_offers_name_the_side_they_came_from_first_and_label_it():
    assert offer_flags("ifens5", from_pbx=True).startswith(
        "direction=ifens5-int direction=ifens5-ext label=ifens5-int ")
    assert offer_flags("ifens5", from_pbx=False).startswith(
        "direction=ifens5-ext direction=ifens5-int label=ifens5-ext ")
    for flags in (offer_flags("x", True), offer_flags("x", False)):
        assert "replace-origin" in flags and "replace-session-connection" in flags and "ICE=remove" in flags


def test_the_external_side_advertises_the_nat_address():
    inner, outer = endpoint_interfaces("ifens5", "10.0.3.1", "192.168.1.5", "203.0.113.7")
    assert inner.option() == "--interface=ifens5-int/10.0.3.1"
    assert outer.option() == "--interface=ifens5-ext/192.168.1.5!203.0.113.7"


def test_rtpengine_runs_in_the_foreground_on_loopback_control_without_a_config_file():
    media = MediaSettings(port_min=40000, port_max=40100, control_port=22999, timeout_s=30)
    argv = rtpengine_argv("rtpengine", media, [MediaInterface("a-int", "127.0.0.1")], -1, verbose=False)
    assert argv[:4] == ["rtpengine", "--config-file=none", "--foreground", "--log-stderr"]
    for option in ("--listen-ng=127.0.0.1:22999", "--port-min=40000", "--port-max=40100", "--table=-1",
                   "--timeout=30", "--delete-delay=0", "--interface=a-int/127.0.0.1", "--log-level=4",
                   "--log-level-control=3"):
        assert option in argv


def test_a_port_range_too_small_for_one_call_is_refused_with_the_fix():
    with pytest.raises(ValidationError, match="port_max must be at least port_min"):
        MediaSettings(port_min=30000, port_max=30001)


def test_a_sip_port_inside_the_media_ports_is_refused_naming_both():
    with pytest.raises(ValidationError, match=r"endpoint iflo: external_port = 25060 lies in the media relay's ports"):
        Config.model_validate({"endpoints": [{"interface": "lo", "external_port": 25060}]})
    # no relay on that endpoint: no conflict
    Config.model_validate({"endpoints": [{"interface": "lo", "external_port": 25060, "media_relay": False}]})


def test_relay_accepts_true_false_and_auto_only():
    assert Config.model_validate({"media": {"relay": True}}).media.relay is True
    assert Config.model_validate({"media": {"relay": "auto"}}).media.relay == "auto"
    with pytest.raises(ValidationError):
        Config.model_validate({"media": {"relay": "sometimes"}})
