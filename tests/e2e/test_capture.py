"""Issue 15: SIP capture for incident work. With `[capture] hep` set, every message an endpoint
receives and sends is mirrored as HEP v3; the receiver here is sngrep's HEP listener (Debian's
sngrep, `-L udp:IP:PORT`), its capture read back with tshark."""
from __future__ import annotations

import shutil
import signal
import subprocess
import time

import pytest

from .dialog import SipUa, sdp
from .endpoint import ProviderPin
from .procs import free_port

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not (shutil.which("sngrep") and shutil.which("tshark")),
                                 reason="sngrep and tshark are installed by scripts/install-system-deps --test")]


@pytest.fixture
def hep_receiver(tmp_path):
    port = free_port()
    pcap = tmp_path / "hep.pcap"
    proc = subprocess.Popen(["sngrep", "-N", "-q", "-F", "-L", f"udp:127.0.0.1:{port}", "-O", str(pcap)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read().decode()

    def captured() -> list[tuple[str, str, str]]:
        """(method or status, source, destination) of every SIP message sngrep received."""
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        out = subprocess.run(["tshark", "-r", str(pcap), "-Y", "sip", "-T", "fields", "-e", "sip.Method",
                              "-e", "sip.Status-Code", "-e", "ip.src", "-e", "udp.srcport", "-e", "ip.dst",
                              "-e", "udp.dstport"], capture_output=True, text=True, timeout=30)
        rows = []
        for line in out.stdout.splitlines():
            method, status, src, sport, dst, dport = (line.split("\t") + [""] * 6)[:6]
            rows.append((method or status, f"{src}:{sport}", f"{dst}:{dport}"))
        return rows

    yield port, captured
    if proc.poll() is None:
        proc.kill()


def test_every_message_of_a_call_is_mirrored_in_both_directions(make_endpoint, hep_receiver):
    hep_port, captured = hep_receiver
    provider = SipUa("127.0.0.1", "provider")
    endpoint = make_endpoint(providers=[ProviderPin("tel.example.test", [provider.hostport])],
                             extra_toml=f'[capture]\nhep = "127.0.0.1:{hep_port}"\ncapture_id = 77\n')
    pbx = SipUa("127.0.0.1", "pbx", outbound=endpoint.internal_hostport)
    try:
        dialog = pbx.invite("sip:0301234567@tel.example.test", sdp("127.0.0.1", 40000))
        invite = provider.expect_request("INVITE")
        far = provider.accept(invite)
        provider.reply(invite, 200, "OK", dialog=far, body=sdp("127.0.0.1", 40002))
        pbx.confirm(dialog, pbx.expect_status("INVITE", 200))
        pbx.ack(dialog)
        provider.expect_request("ACK")
        pbx.request(dialog, "BYE")
        provider.reply(provider.expect_request("BYE"), 200, "OK")
        pbx.expect_status("BYE", 200)
    finally:
        pbx.close()
        provider.close()
    time.sleep(0.5)
    rows = captured()
    internal, external = endpoint.internal_hostport, endpoint.external_hostport
    # each request as received from the PBX and as sent to the provider; each reply both ways
    for method in ("INVITE", "ACK", "BYE"):
        assert (method, pbx.hostport, internal) in rows, rows
        assert (method, external, provider.hostport) in rows, rows
    assert ("200", provider.hostport, external) in rows and ("200", internal, pbx.hostport) in rows, rows
    assert ("100", internal, pbx.hostport) in rows  # the endpoint's own replies too
