"""CLI subcommands of this package (registered by trunkproxy.cli).

`trunkproxy status` reads the state file `trunkproxy run` writes (`<state_dir>/registrations.sqlite`)
directly, read-only: it works without the HTTP API being enabled and even while `run` is
stopped (then it shows the last known state, with expiries that have passed shown as `expired`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from trunkproxy.config.load import load_config
from trunkproxy.registrations import paths
from trunkproxy.registrations.state import RegistrationBook, State
from trunkproxy.registrations.store import RegistrationStore, StoreError
from trunkproxy.registrations.view import render_table


def _status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    db = paths.database_path(config.state_path)
    now = time.time()
    registrations = []
    if db.exists():
        try:
            with RegistrationStore(db, readonly=True) as store:
                registrations = store.load()
        except StoreError as exc:
            print(f"trunkproxy: {exc}", file=sys.stderr)
            return 1
    elif not args.json:
        print(f"(no registration state at {db} yet: `trunkproxy run` has not seen a REGISTER)", file=sys.stderr)
    book = RegistrationBook(registrations)
    book.tick(now)  # in memory only: show what has expired since `run` last wrote
    state = State(args.state) if args.state else None
    selected = book.select(endpoint=args.endpoint, trunk=args.trunk, state=state)
    media = _media(config)
    if args.json:
        out = {"registrations": [r.as_dict(now) for r in selected], "now": now}
        if media is not None:
            out["media"] = media.as_dict()
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    filtered = args.endpoint or args.trunk or args.state
    configured = [] if filtered else [e.endpoint_name for e in config.endpoints]
    print(render_table(selected, now, configured))
    if media is not None:
        from trunkproxy.media.monitor import describe

        print("\n" + describe(media))
    return 0


def _media(config):
    """The host's rtpengine read live (None when no endpoint relays media)."""
    import asyncio

    from trunkproxy.kamailio.render import rtpengine_installed
    from trunkproxy.media.monitor import read_media
    from trunkproxy.media.plan import relays_media

    installed = rtpengine_installed(config)
    relaying = [e.endpoint_name for e in config.endpoints if relays_media(config.media, e, installed)]
    return asyncio.run(read_media(config.media.control_port, relaying)) if relaying else None


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this package's subcommands to the `trunkproxy` parser."""
    status = sub.add_parser("status", help="show every trunk's registration state and the media relay's",
                            description="Registration state per endpoint, as last recorded by `trunkproxy run`; "
                                        "the media relay's sessions and traffic, read from rtpengine.")
    status.add_argument("--json", action="store_true", help="print JSON (same shape as GET /api/registrations)")
    status.add_argument("--endpoint", metavar="NAME", help="only this endpoint (e.g. ifens5)")
    status.add_argument("--trunk", metavar="NAME", help="only this trunk")
    status.add_argument("--state", choices=[s.value for s in State], help="only registrations in this state")
    status.set_defaults(func=_status)
