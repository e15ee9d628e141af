"""chan_sip style forced options -> PJSIP settings (the table documented in docs/hosting.md)."""
from __future__ import annotations

import pytest

from trunkproxy.hosting.options import REJECTED, TRANSLATIONS, OptionError, translate, validate_option


def test_transport_is_not_an_endpoint_key_but_the_forced_transport():
    forced = translate([("transport", "tcp")])
    assert forced.transport == "tcp"
    assert forced.sections == {}


def test_transport_list_uses_the_first_like_chan_sip():
    assert translate([("transport", "tcp,udp")]).transport == "tcp"


@pytest.mark.parametrize("option,expected", [
    (("nat", "yes"), {"endpoint": (("force_rport", "yes"), ("rewrite_contact", "yes"), ("rtp_symmetric", "yes"))}),
    (("nat", "force_rport"), {"endpoint": (("force_rport", "yes"), ("rewrite_contact", "yes"), ("rtp_symmetric", "no"))}),
    (("dtmfmode", "rfc2833"), {"endpoint": (("dtmf_mode", "rfc4733"),)}),
    (("fromdomain", "tel.t-online.de"), {"endpoint": (("from_domain", "tel.t-online.de"),)}),
    (("qualify", "yes"), {"aor": (("qualify_frequency", "60"),)}),
    (("qualify", "2000"), {"aor": (("qualify_frequency", "60"), ("qualify_timeout", "2"))}),
    (("registertimeout", "30"), {"registration": (("retry_interval", "30"),)}),
    (("registerattempts", "0"), {"registration": (("max_retries", "10000"),)}),
    (("session-timers", "refuse"), {"endpoint": (("timers", "no"),)}),
    (("insecure", "port,invite"), {}),
    (("registration.expiration", "300"), {"registration": (("expiration", "300"),)}),
    (("rtp_keepalive", "15"), {"endpoint": (("rtp_keepalive", "15"),)}),  # no translation: verbatim
])
def test_translation_table(option, expected):
    assert translate([option]).sections == expected


def test_port_overrides_registrar_port():
    assert translate([("port", "5070")]).registrar_port == 5070


def test_codec_lines_keep_their_order():
    forced = translate([("disallow", "all"), ("allow", "alaw"), ("allow", "g722")])
    assert forced.sections["endpoint"] == (("disallow", "all"), ("allow", "alaw"), ("allow", "g722"))


@pytest.mark.parametrize("name,value", [("host", "x"), ("outboundproxy", "x"), ("secret", "x"), ("username", "x"),
                                         ("type", "peer"), ("aor.type", "aor"), ("bogus.key", "1"), ("port", "0"),
                                         ("nat", "sometimes"), ("dtmfmode", "smoke"), ("qualifyfreq", "soon")])
def test_invalid_options_say_what_to_write(name, value):
    with pytest.raises(OptionError) as info:
        validate_option(name, value)
    assert info.value.fix


def test_tables_do_not_overlap():
    assert not set(TRANSLATIONS) & set(REJECTED)
