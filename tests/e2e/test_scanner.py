"""SIPVicious (svmap, svwar, svcrack) against a real endpoint: what a scanner on the internet learns.

Only 127.0.0.1 is ever scanned (the endpoint's sockets), with a handful of extensions or
passwords and bounded time. The provider registrar is on 127.0.0.2 so that a scanner on
127.0.0.x is an *unknown* source to the endpoint (known providers are matched by address).

sipvicious 0.3.3 (Debian) honours `-b BINDINGIP` only in svmap: svwar and svcrack bind to
0.0.0.0, so their probes come from 127.0.0.1; `-x 127.0.0.1` makes their Via say so.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .endpoint import ProviderPin
from .procs import free_port
from .rawsip import UdpPeer, request

pytestmark = pytest.mark.e2e

TOOLS = ("svmap", "svwar", "svcrack")
PROVIDER_IP = "127.0.0.2"
SOFTWARE = ("kamailio", "trunkproxy", "ser (", "openser", "sip router")


@pytest.fixture
def sipvicious(tmp_path):
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (Debian package 'sipvicious')")
    home = tmp_path / "home"  # sipvicious keeps sessions under ~/.sipvicious
    home.mkdir()

    def run(tool: str, *args: str, timeout: float = 60, runs_forever: bool = False) -> str:
        """Run a scanner, output (stdout+stderr). `runs_forever`: stopped after `timeout` (killed
        by subprocess.run, which owns the PID) and that is not an error."""
        try:
            res = subprocess.run([tool, *args], capture_output=True, text=True, timeout=timeout,
                                 stdin=subprocess.DEVNULL, env=dict(os.environ, HOME=str(home)))
            rc, out = res.returncode, res.stdout + res.stderr
        except subprocess.TimeoutExpired as exc:
            if not runs_forever:
                raise
            rc = "killed after timeout"
            out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                          for x in (exc.stdout, exc.stderr))
        print(f"$ {tool} {' '.join(args)}  ({rc})\n{out}")
        assert "Traceback" not in out, out
        return out

    return run


@pytest.fixture
def scan_target(make_provider, make_endpoint):
    provider = make_provider(ip=PROVIDER_IP)
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])])
    return provider, endpoint, sorted(endpoint.kamailio_pids())


def _still_serving(provider, endpoint, pids_before, sipp) -> None:
    """Not crashed, not restarted, and a PBX still registers through it."""
    assert endpoint.proc.poll() is None, endpoint.log_tail()
    assert "exited with code" not in endpoint.log(), endpoint.log_tail()
    assert sorted(endpoint.kamailio_pids()) == pids_before, "Kamailio was restarted"
    sipp.run("pbx_register", rsa=endpoint.internal_hostport, vars={"user": "4930222", "password": "secret222"},
             local_ip="127.0.0.3").assert_ok(calls=1)
    binding = provider.contacts("4930222")[0]
    assert f"127.0.0.1:{endpoint.external_port}" in binding["contact"]


def _names_software(text: str) -> bool:
    low = text.lower()
    return any(s in low for s in SOFTWARE)


def test_svmap_of_external_side_gets_no_answer(scan_target, sipvicious, sipp):
    provider, endpoint, pids = scan_target
    scanner_port = free_port("127.0.0.7")
    out = sipvicious("svmap", "-b", "127.0.0.7", "-x", "127.0.0.7", "-P", str(scanner_port),
                     "-p", str(endpoint.external_port), "-t", "0.2", "-d", "-v", "127.0.0.1")
    assert "found nothing" in out and "SIP/2.0" not in out
    assert "127.0.0.1:" not in out  # no device row

    # an INVITE probe is answered (403), but nothing in the answer names the software
    out = sipvicious("svmap", "-b", "127.0.0.7", "-x", "127.0.0.7", "-P", str(scanner_port), "-m", "INVITE",
                     "-p", str(endpoint.external_port), "-t", "0.2", "-d", "127.0.0.1")
    assert not _names_software(out), out
    assert provider.received("INVITE") == []
    _still_serving(provider, endpoint, pids, sipp)


def test_svmap_of_internal_side_finds_an_anonymous_device(scan_target, sipvicious, sipp):
    """From an instance network the endpoint answers OPTIONS (PBX keepalives) - anonymously."""
    provider, endpoint, pids = scan_target
    out = sipvicious("svmap", "-b", "127.0.0.4", "-x", "127.0.0.4", "-P", str(free_port("127.0.0.4")),
                     "-p", str(endpoint.internal_port), "-t", "0.2", "-d", "127.0.0.1")
    assert "SIP/2.0 200 OK" in out
    row = next(line for line in out.splitlines() if f"127.0.0.1:{endpoint.internal_port}" in line and "|" in line)
    assert row.split("|")[2].strip() == "unknown", row  # no User-Agent / Server header
    assert not _names_software(out), out
    _still_serving(provider, endpoint, pids, sipp)


@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
def test_svwar_cannot_enumerate_extensions(scan_target, sipvicious, sipp, method):
    provider, endpoint, pids = scan_target
    # the provider's real users are 4930111, 4930222, 4930333: the range covers one of them
    out = sipvicious("svwar", "-x", "127.0.0.1", "-P", str(free_port()), "-p", str(endpoint.external_port),
                     "-e", "4930109-4930113", "-m", method, "-t", "0.2", "--maximumtime", "5", "-vv", "--force",
                     "127.0.0.1")
    # its made-up first extension gets 403 (svwar, unforced, takes that for "auth required"
    # and gives up); forced, it compares every extension's answer with that one
    assert "Bad user = SIP/2.0 403 Forbidden" in out
    # (svwar 0.3.3 then calls the first extension's identical 403 "an unknown response" and stops)
    assert "found nothing" in out
    assert "| Extension" not in out and "exists" not in out and "reqauth" not in out.lower()

    # what svwar would have seen for the rest: every extension, real or not, gets the same answer
    users = [str(u) for u in range(4930109, 4930114)] + ["4930222", "100", "4930999"]
    peer = UdpPeer("127.0.0.1")
    try:
        lines = []
        for user in users:
            peer.send(request(method, f"sip:{user}@127.0.0.1", peer), endpoint.external_hostport)
            replies = [m for m in peer.receive(2.0) if m.status and m.status >= 200]
            assert replies, f"no final answer to {method} for {user}"
            lines.append(replies[-1].start_line)
            for name in ("Server", "User-Agent", "WWW-Authenticate", "Proxy-Authenticate"):
                assert replies[-1].header(name) is None or not _names_software(replies[-1].header(name))
            assert replies[-1].header("WWW-Authenticate") is None  # nothing to crack
        assert lines == ["SIP/2.0 403 Forbidden"] * len(users)
    finally:
        peer.close()
    assert provider.received("REGISTER") == [] and provider.received("INVITE") == []  # nothing relayed
    _still_serving(provider, endpoint, pids, sipp)


def test_svcrack_gets_nothing_even_with_the_right_password(scan_target, sipvicious, sipp, tmp_path):
    provider, endpoint, pids = scan_target
    words = tmp_path / "passwords.txt"
    words.write_text("1234\n0000\nsecret111\npassword\n")  # the real password is in the list
    for args in (["-r", "1-5"], ["-d", str(words)]):
        # svcrack waits for a digest challenge that never comes: it re-sends the unauthenticated
        # REGISTER every -t seconds (each answered 403) until stopped, never trying a password
        out = sipvicious("svcrack", "-x", "127.0.0.1", "-P", str(free_port()), "-p", str(endpoint.external_port),
                         "-u", "4930111", "--domain", "tel.example.test", *args, "-t", "0.3",
                         "--maximumtime", "5", "-vv", "127.0.0.1", timeout=6, runs_forever=True)
        assert "binding to" in out  # it did run
        assert "The password for" not in out and "DEBUG:ASipOfRedWine:trying " not in out
        assert "Does not seem to require authentication" not in out
    # and a REGISTER with (guessed) credentials is no different: 403, no challenge
    peer = UdpPeer("127.0.0.1")
    try:
        auth = ('Authorization: Digest username="4930111", realm="tel.example.test", nonce="x", '
                'uri="sip:tel.example.test", response="00000000000000000000000000000000"')
        peer.send(request("REGISTER", "sip:tel.example.test", peer, extra=auth), endpoint.external_hostport)
        final = [m for m in peer.receive(2.0) if m.status and m.status >= 200]
        assert [m.start_line for m in final] == ["SIP/2.0 403 Forbidden"]
        assert final[0].header("WWW-Authenticate") is None
    finally:
        peer.close()
    # never challenged, never relayed: the provider did not see a single REGISTER
    assert provider.received("REGISTER") == []
    _still_serving(provider, endpoint, pids, sipp)
