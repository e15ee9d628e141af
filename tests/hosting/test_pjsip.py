"""PJSIP rendering (pure) and the atomic writer."""
from __future__ import annotations

import os
import re

import pytest

from trunkproxy.hosting.pjsip import PjsipSettings, masked_diff, render_pjsip, write_atomically
from trunkproxy.hosting.resolve import EndpointMap, resolve_routes
from trunkproxy.hosting.sipproxy_json import parse_sipproxy_json
from trunkproxy.hosting.trunks import Trunk

from .conftest import PROXY_NAME, TELEKOM_JSON, host_config


def sections(text: str) -> dict[tuple[str, str], dict[str, list[str]]]:
    """Parse the rendered file back: (name, type) -> key -> values (Asterisk's reading, ';' starts a comment)."""
    result: dict[tuple[str, str], dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    name = ""
    for raw in text.splitlines():
        line = re.split(r"(?<!\\);", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            name, current = line[1:-1], {}
            continue
        key, _, value = line.partition("=")
        if key == "type":
            result[(name, value)] = current
        else:
            current.setdefault(key, []).append(value.replace("\\;", ";"))
    return result


def render(tmp_path, trunks, rules_json=None, settings=PjsipSettings()):
    rules = parse_sipproxy_json(rules_json, "f") if rules_json else None
    routes, errors = resolve_routes(trunks, rules, None, EndpointMap.from_config(host_config(tmp_path)))
    assert errors == []
    return render_pjsip(routes, settings)


def test_telekom_via_proxy_with_forced_tcp(tmp_path):
    text = render(tmp_path, [Trunk(name="telekom", registrar="tel.t-online.de", username="0301234", secret="pw")],
                  TELEKOM_JSON)
    assert f"outbound_proxy=sip:{PROXY_NAME}\\;lr\\;transport=tcp" in text.splitlines()
    parsed = sections(text)
    assert set(parsed) == {("trunkproxy-tcp", "transport"), ("telekom", "endpoint"), ("telekom", "aor"),
                           ("telekom", "auth"), ("telekom", "registration"), ("telekom", "identify")}
    assert parsed[("trunkproxy-tcp", "transport")]["protocol"] == ["tcp"]
    endpoint, registration = parsed[("telekom", "endpoint")], parsed[("telekom", "registration")]
    assert endpoint["transport"] == registration["transport"] == ["trunkproxy-tcp"]
    for section in (endpoint, registration, parsed[("telekom", "aor")]):
        assert section["outbound_proxy"] == [f"sip:{PROXY_NAME};lr;transport=tcp"]
    assert registration["server_uri"] == ["sip:tel.t-online.de;transport=tcp"]
    assert registration["client_uri"] == ["sip:0301234@tel.t-online.de"]
    assert parsed[("telekom", "auth")]["password"] == ["pw"]


def test_forced_options_override_the_trunks_own_settings(tmp_path):
    rules = ('{"tel.t-online.de": {"proxy": "p.example", "options": '
             '"\\ntransport=tcp\\ndisallow=all\\nallow=g722\\ncontext=forced-ctx\\nregistration.expiration=120\\n"}}')
    trunk = Trunk(name="telekom", registrar="tel.t-online.de", username="u", secret="pw", transport="udp")
    parsed = sections(render(tmp_path, [trunk], rules))
    endpoint = parsed[("telekom", "endpoint")]
    assert endpoint["allow"] == ["g722"] and endpoint["disallow"] == ["all"]
    assert endpoint["context"] == ["forced-ctx"] and endpoint["transport"] == ["trunkproxy-tcp"]
    assert parsed[("telekom", "registration")]["expiration"] == ["120"]


def test_direct_trunk_and_ip_trunk_without_registration(tmp_path):
    parsed = sections(render(tmp_path, [Trunk(name="ip", registrar="198.51.100.7:5070")]))
    assert ("ip", "registration") not in parsed and ("ip", "auth") not in parsed
    assert "outbound_proxy" not in parsed[("ip", "endpoint")]
    assert parsed[("ip", "aor")]["contact"] == ["sip:198.51.100.7:5070"]
    assert parsed[("ip", "identify")]["match"] == ["198.51.100.7"]


def test_semicolons_in_values_are_escaped(tmp_path):
    text = render(tmp_path, [Trunk(name="t", registrar="r.example", username="u", secret="a;b\\;c")])
    assert "password=a\\;b\\\\;c" in text.splitlines()
    assert sections(text)[("t", "auth")]["password"] == ["a;b\\;c"]  # what Asterisk reads: the secret as stored
    for line in text.splitlines():
        if not line.startswith(";"):
            assert re.search(r"(?<!\\);", line) is None, line


def test_rendering_is_deterministic(tmp_path):
    trunks = [Trunk(name="telekom", registrar="tel.t-online.de", username="u", secret="pw")]
    assert render(tmp_path, trunks, TELEKOM_JSON) == render(tmp_path, trunks, TELEKOM_JSON)


def test_diff_masks_passwords():
    old = "[t]\ntype=auth\npassword=old-secret\n"
    new = "[t]\ntype=auth\npassword=new-secret\n"
    diff = masked_diff(old, new, "out.conf")
    assert "old-secret" not in diff and "new-secret" not in diff
    assert "secrets changed (not shown)" in diff


def test_write_atomically_is_all_or_nothing(tmp_path):
    write_atomically(tmp_path, {"a.conf": "old\n"})
    with pytest.raises(TypeError):
        write_atomically(tmp_path, {"a.conf": "new\n", "b.conf": None})  # second file fails while writing
    assert (tmp_path / "a.conf").read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["a.conf"]  # no temporary files left
    [path] = write_atomically(tmp_path, {"a.conf": "new\n"})
    assert path.read_text() == "new\n" and oct(path.stat().st_mode & 0o777) == "0o600"
