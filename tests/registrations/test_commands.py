"""`trunkproxy status`: reads the state file under state_dir; table grouped by endpoint, or JSON."""
from __future__ import annotations

import json
import time

import pytest

from trunkproxy.cli import main
from trunkproxy.registrations import paths
from trunkproxy.registrations.events import RegisterReply, RegisterRequest, RegistrationKey
from trunkproxy.registrations.state import RegistrationBook
from trunkproxy.registrations.store import RegistrationStore

NOW = time.time()
TELEKOM = RegistrationKey("iflo", "sip:4930123@tel.example.test", "tel.example.test", "udp:127.0.0.1:5062")
OTHER = RegistrationKey("ifens5", "sip:4940555@other.example.test", "other.example.test", "udp:127.0.0.1:5064")
SHORT = TELEKOM._replace(flow="udp:127.0.0.1:5066")


@pytest.fixture
def config(tmp_path):
    # the CLI reads the real clock: the state must be written relative to now, not to import time
    global NOW
    NOW = time.time()
    state_dir = tmp_path / "state"
    path = tmp_path / "trunkproxy.toml"
    path.write_text(f'[proxy]\nstate_dir = "{state_dir}"\n\n[media]\nrelay = false\n\n'
                    '[[endpoints]]\ninterface = "lo"\nexternal_port = 5180\n\n'
                    '[[endpoints]]\ninterface = "ens5"\nexternal_port = 5181\n\n'
                    '[[endpoints]]\ninterface = "ens6"\nexternal_port = 5182\n')
    book = RegistrationBook()
    book.handle(RegisterRequest(TELEKOM, NOW, "a", 1, 600), NOW - 10, "telekom")
    book.handle(RegisterReply(TELEKOM, NOW, "a", 1, 200, "OK", 600), NOW - 10)
    book.handle(RegisterRequest(OTHER, NOW, "b", 1, 600), NOW - 10, "other")
    book.handle(RegisterReply(OTHER, NOW, "b", 1, 403, "Forbidden", None), NOW - 10)
    book.handle(RegisterRequest(SHORT, NOW, "c", 1, 5), NOW - 10, "telekom")
    book.handle(RegisterReply(SHORT, NOW, "c", 1, 200, "OK", 5), NOW - 10)  # expired 5 s ago, not yet ticked
    with RegistrationStore(paths.database_path(state_dir)) as store:
        store.save(book)
    return path


def test_table_grouped_by_endpoint(config, capsys):
    assert main(["-c", str(config), "status"]) == 0
    out = capsys.readouterr().out
    blocks = out.split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [
        "endpoint ifens5: 1 registration", "endpoint ifens6: 0 registrations", "endpoint iflo: 2 registrations"]
    header, *rows = blocks[2].splitlines()[1:]
    assert header.split()[:5] == ["TRUNK", "AOR", "REGISTRAR", "FLOW", "STATE"]
    assert "registered" in rows[0] and ("9m49s" in rows[0] or "9m50s" in rows[0]) and "200 OK" in rows[0] and ("10s ago" in rows[0] or "11s ago" in rows[0])
    assert "expired" in rows[1]  # shown as it is now, not as last written
    assert "failed" in blocks[0] and "403 Forbidden" in blocks[0] and "never" in blocks[0]


def test_status_reads_the_media_relay_and_says_when_it_does_not_answer(config, capsys):
    from socket import socket

    with socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing answers rtpengine's ng protocol here
    config.write_text(config.read_text().replace("relay = false", f"relay = true\ncontrol_port = {port}"))
    assert main(["-c", str(config), "status"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        "media relay: rtpengine does not answer (is `trunkproxy run` running?)")
    assert main(["-c", str(config), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["media"]["available"] is False


def test_json_has_the_api_shape(config, capsys):
    assert main(["-c", str(config), "status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    states = {(r["endpoint"], r["flow"]): r["state"] for r in data["registrations"]}
    assert states == {("iflo", TELEKOM.flow): "registered", ("iflo", SHORT.flow): "expired",
                      ("ifens5", OTHER.flow): "failed"}
    first = next(r for r in data["registrations"] if r["flow"] == TELEKOM.flow)
    assert first["trunk"] == "telekom" and first["expires"] == 600 and 585 < first["seconds_until_expiry"] <= 590


@pytest.mark.parametrize("args, flows", [
    (["--endpoint", "ifens5"], [OTHER.flow]),
    (["--trunk", "telekom"], [TELEKOM.flow, SHORT.flow]),
    (["--state", "failed"], [OTHER.flow]),
    (["--state", "expired", "--trunk", "telekom"], [SHORT.flow]),
    (["--trunk", "nope"], []),
])
def test_filters(config, capsys, args, flows):
    assert main(["-c", str(config), "status", "--json", *args]) == 0
    assert sorted(r["flow"] for r in json.loads(capsys.readouterr().out)["registrations"]) == sorted(flows)


def test_invalid_state_is_a_usage_error(config, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["-c", str(config), "status", "--state", "bogus"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_no_state_file_yet(tmp_path, capsys):
    path = tmp_path / "t.toml"
    path.write_text(f'[proxy]\nstate_dir = "{tmp_path / "nothing"}"\n\n[[endpoints]]\ninterface = "lo"\nexternal_port = 5180\n')
    assert main(["-c", str(path), "status"]) == 0
    captured = capsys.readouterr()
    assert "endpoint iflo: 0 registrations" in captured.out
    assert "no registration state" in captured.err
    assert main(["-c", str(path), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["registrations"] == []
