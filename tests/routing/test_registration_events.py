import pytest

from trunkproxy.routing import decide
from trunkproxy.routing.registration_events import aor_of, granted_expires, requested_expires, registrar_of
from trunkproxy.routing.tokens import Flow

PBX = Flow("udp", "10.0.3.7", 5062)
OTHER = Flow("udp", "10.0.3.8", 5062)


def test_requested_expires_prefers_contact_param():
    assert requested_expires("<sip:a@h>;expires=120", "3600") == 120
    assert requested_expires("<sip:a@h>", "3600") == 3600
    assert requested_expires("*", "0") == 0
    assert requested_expires(None, None) is None


def test_granted_expires_picks_this_flows_binding(settings):
    mine = decide.rewrite_contacts(settings.secret, "<sip:a@192.0.2.99>", PBX, settings.external["udp"])
    theirs = decide.rewrite_contacts(settings.secret, "<sip:a@192.0.2.98>", OTHER, settings.external["udp"])
    reply_contact = f"{theirs};expires=900, {mine};expires=300"
    assert granted_expires(settings.secret, reply_contact, "3600", PBX) == 300
    assert granted_expires(settings.secret, reply_contact, "3600", OTHER) == 900
    assert granted_expires(settings.secret, None, "3600", PBX) == 3600


def test_aor_drops_params():
    assert aor_of("sip:4930111@tel.example.test:5060;transport=tcp") == "sip:4930111@tel.example.test"


@pytest.mark.parametrize("ruri, registrar", [
    ("sip:tel.example.test", "tel.example.test"),
    ("sip:Tel.Example.Test;transport=tcp", "tel.example.test"),
    ("sip:127.0.0.1:17080", "127.0.0.1:17080"),      # two ports of one host stay two registrars
    ("sip:127.0.0.1:17082", "127.0.0.1:17082"),
    ("sip:[2001:db8::1]:5070", "[2001:db8::1]:5070"),
    ("not a uri", None),
])
def test_the_registrar_keeps_the_port_the_pbx_wrote(ruri, registrar):
    assert registrar_of(ruri) == registrar
