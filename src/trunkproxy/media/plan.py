"""What the host's rtpengine is told: one logical interface per side of each relaying endpoint,
its command line, and the ng flags Kamailio passes with an offer from either side. Pure:
the supervisor reads the host (is rtpengine installed, is its kernel module loaded)."""
from __future__ import annotations

from dataclasses import dataclass

from trunkproxy.config.model import Endpoint, MediaSettings

CONTROL_HOST = "127.0.0.1"
"""rtpengine's ng control socket listens here only: a stranger must not open media sessions."""

ANCHOR_FLAGS = "replace-origin replace-session-connection ICE=remove"
"""Every offer: `c=` and `o=` name the endpoint's side (session and media level, rtpengine
rewrites both), and ICE candidates naming the far side's addresses are removed; RTCP (and
`a=rtcp`) follows the rewritten port."""


@dataclass(frozen=True)
class MediaInterface:
    """One of rtpengine's logical interfaces: `name/address[!advertised]`."""

    name: str
    address: str
    advertised: str | None = None

    def option(self) -> str:
        advertised = f"!{self.advertised}" if self.advertised else ""
        return f"--interface={self.name}/{self.address}{advertised}"


def side_names(endpoint_name: str) -> tuple[str, str]:
    """The endpoint's internal and external interface names."""
    return f"{endpoint_name}-int", f"{endpoint_name}-ext"


def relays_media(media: MediaSettings, endpoint: Endpoint, rtpengine_installed: bool) -> bool:
    """Does this endpoint anchor its calls' media? Its own setting, else the host's; "auto"
    relays wherever rtpengine is installed."""
    wanted = endpoint.relay_setting(media)
    return rtpengine_installed if wanted == "auto" else bool(wanted)


def endpoint_interfaces(endpoint_name: str, internal: str, external: str,
                        advertised: str | None) -> tuple[MediaInterface, MediaInterface]:
    """The PBX side on the internal address, the provider side on the external one (SDP
    names the advertised address where a NAT sits in front of the host)."""
    inner, outer = side_names(endpoint_name)
    return MediaInterface(inner, internal), MediaInterface(outer, external, advertised)


SRTP_TO_PROVIDER = "transport-protocol=RTP/SAVP"
"""Added to a PBX's first offer to a provider with `srtp = true`: rtpengine keeps each leg's
protocol for the dialog's later offers by itself."""


def offer_flags(endpoint_name: str, from_pbx: bool, pbx_srtp: bool = True) -> str:
    """rtpengine_manage()'s flags for an SDP coming from the PBX (internal -> external) or
    from the provider: the first `direction` is where it came from, the second where it goes.
    Answers are matched to their offer by rtpengine and ignore the directions. `pbx_srtp`
    False: a provider's offer reaches the PBX as plain RTP (rtpengine decrypts)."""
    inner, outer = side_names(endpoint_name)
    source, target = (inner, outer) if from_pbx else (outer, inner)
    # the label names the offerer's side: the media monitor tells endpoint and direction by it
    flags = f"direction={source} direction={target} label={source} {ANCHOR_FLAGS}"
    return flags if from_pbx or pbx_srtp else f"{flags} transport-protocol=RTP/AVP"


def rtpengine_argv(binary: str, media: MediaSettings, interfaces: list[MediaInterface], kernel_table: int,
                   verbose: bool) -> list[str]:
    """The host's rtpengine: in the foreground for its supervisor, logging to stderr, no
    config file of its own (Debian's /etc/rtpengine/rtpengine.conf is for its own service).
    `kernel_table`: 0 where the kernel module is loaded (forwarding in the kernel, where
    rtpengine manages its iptables rule), else -1 (userspace forwarding). Deleted calls
    free their ports at once (`--delete-delay=0`). Warnings and errors only (a notice per call
    would be two log lines per call), and control-protocol warnings not even those: the media
    monitor's queries race with calls ending, and Kamailio logs what it was refused itself."""
    return [
        binary, "--config-file=none", "--foreground", "--log-stderr", "--no-log-timestamps",
        f"--log-level={7 if verbose else 4}", f"--log-level-control={7 if verbose else 3}",
        f"--table={kernel_table}",
        *(interface.option() for interface in interfaces),
        f"--listen-ng={CONTROL_HOST}:{media.control_port}",
        f"--port-min={media.port_min}", f"--port-max={media.port_max}",
        f"--timeout={media.timeout_s}", "--delete-delay=0",
    ]
