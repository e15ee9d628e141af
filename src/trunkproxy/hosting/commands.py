"""CLI subcommands of this package (registered by trunkproxy.cli): `trunk ...` and `apply`."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from trunkproxy.config.load import load_config

DEFAULT_INTERFACE = "default"


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this package's subcommands to the `trunkproxy` parser."""
    trunk = sub.add_parser("trunk", help="the instance's trunks (registrar, credentials, interface, fallback)")
    actions = trunk.add_subparsers(dest="trunk_command", required=True)

    add = actions.add_parser("add", help="add a trunk")
    add.add_argument("name")
    add.add_argument("--registrar", required=True, help="registrar HOST[:PORT], e.g. tel.t-online.de")
    _trunk_fields(add, defaults=True)
    add.set_defaults(func=_trunk_add)

    edit = actions.add_parser("edit", help="change a trunk (only the options given)")
    edit.add_argument("name")
    edit.add_argument("--registrar", help="registrar HOST[:PORT]")
    _trunk_fields(edit, defaults=False)
    edit.add_argument("--no-fallback", action="store_true", help="remove the fallback trunk")
    edit.set_defaults(func=_trunk_edit)

    listing = actions.add_parser("list", help="list trunks (secrets shown as ***)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    _db(listing)
    listing.set_defaults(func=_trunk_list)

    remove = actions.add_parser("remove", help="remove a trunk")
    remove.add_argument("name")
    _db(remove)
    remove.set_defaults(func=_trunk_remove)

    apply = sub.add_parser("apply", help="write the PBX's trunk configuration (PJSIP) with the proxies that apply")
    apply.add_argument("--dry-run", action="store_true", help="show the diff of what would change; write nothing")
    apply.add_argument("--output", type=Path, default=None, help="directory for pjsip_trunkproxy.conf (default /etc/asterisk)")
    apply.add_argument("--sipproxy-json", type=Path, default=None,
                       help="the instance's rule file (default /etc/pascom/sipproxy.json)")
    apply.add_argument("--no-sipproxy-json", action="store_true", help="ignore the instance's rule file")
    apply.add_argument("--consul-address", help="read the host's KV rules from this agent (default: [consul] when enabled)")
    apply.add_argument("--no-consul", action="store_true", help="ignore the host's KV rules")
    apply.add_argument("--dns-server", help="resolve proxy names with this server HOST[:PORT] (e.g. 127.0.0.1:8600)")
    apply.add_argument("--no-dns-check", action="store_true", help="do not check that proxy names resolve")
    apply.add_argument("--hostname", help="this host's name in proxy names (default proxy.hostname / the hostname)")
    apply.add_argument("--context", default="from-trunk", help="dialplan context for incoming calls (default from-trunk)")
    apply.add_argument("--bind", default=None,
                       help="bind address of the transport sections written (default 0.0.0.0:5060 with Consul, "
                            "where the PBX has its own address; 0.0.0.0:5062 without, where it shares the host "
                            "with the endpoint's internal side on 5060)")
    apply.add_argument("--no-transports", action="store_true",
                       help="do not write transport sections (the PBX defines trunkproxy-udp / trunkproxy-tcp)")
    _db(apply)
    apply.set_defaults(func=_apply)


def _db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=None, help="trunk store (default STATE_DIR/trunks.sqlite)")


def _trunk_fields(parser: argparse.ArgumentParser, defaults: bool) -> None:
    parser.add_argument("--username", default="" if defaults else None, help="authentication user")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--secret", help="password (visible in the process list; prefer --secret-stdin)")
    secret.add_argument("--secret-stdin", action="store_true", help="read the password from the first line of stdin")
    parser.add_argument("--transport", choices=("udp", "tcp"), default="udp" if defaults else None)
    parser.add_argument("--interface", default=DEFAULT_INTERFACE if defaults else None,
                        help="outbound proxy interface: 'default' (no proxy) or an endpoint's interface, e.g. ens5")
    parser.add_argument("--fallback", help="name of the fallback trunk")
    _db(parser)


def _store(args: argparse.Namespace):
    from trunkproxy.hosting.apply import default_store_path
    from trunkproxy.hosting.trunks import TrunkStore

    if args.db is not None:
        return TrunkStore(args.db)
    return TrunkStore(default_store_path(load_config(args.config)))


def _secret(args: argparse.Namespace) -> str | None:
    if args.secret_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return args.secret


def _fail(message: str) -> int:
    print(f"trunkproxy: {message}", file=sys.stderr)
    return 1


def _trunk_add(args: argparse.Namespace) -> int:
    from trunkproxy.hosting.trunks import Trunk, TrunkError

    trunk = Trunk(name=args.name, registrar=args.registrar, username=args.username, secret=_secret(args) or "",
                  transport=args.transport, interface=args.interface, fallback=args.fallback)
    try:
        _store(args).add(trunk)
    except TrunkError as exc:
        return _fail(str(exc))
    print(f"added trunk {trunk.name}; run `trunkproxy apply` to write the PBX configuration")
    return 0


def _trunk_edit(args: argparse.Namespace) -> int:
    from trunkproxy.hosting.trunks import TrunkError

    changes = {k: getattr(args, k) for k in ("registrar", "username", "transport", "interface", "fallback")
               if getattr(args, k) is not None}
    secret = _secret(args)
    if secret is not None:
        changes["secret"] = secret
    if args.no_fallback:
        if "fallback" in changes:
            return _fail("give either --fallback or --no-fallback")
        changes["fallback"] = None
    if not changes:
        return _fail("nothing to change; give e.g. --interface ens5")
    try:
        _store(args).edit(args.name, **changes)
    except TrunkError as exc:
        return _fail(str(exc))
    print(f"changed trunk {args.name}: {', '.join(sorted(changes))}; run `trunkproxy apply` to take it live")
    return 0


def _trunk_list(args: argparse.Namespace) -> int:
    trunks = [t.public() for t in _store(args).list()]
    if args.json:
        print(json.dumps(trunks, indent=2))
        return 0
    if not trunks:
        print("no trunks; add one with `trunkproxy trunk add NAME --registrar HOST`")
        return 0
    for t in trunks:
        print(f"{t['name']}: registrar {t['registrar']}, username {t['username'] or '-'}, "
              f"secret: {t['secret'] or '-'}, transport {t['transport']}, interface {t['interface']}, "
              f"fallback {t['fallback'] or '-'}")
    return 0


def _trunk_remove(args: argparse.Namespace) -> int:
    from trunkproxy.hosting.trunks import TrunkError

    try:
        _store(args).remove(args.name)
    except TrunkError as exc:
        return _fail(str(exc))
    print(f"removed trunk {args.name}; run `trunkproxy apply` to take it out of the PBX configuration")
    return 0


HOSTED_PBX_BIND = "0.0.0.0:5060"
"""A PBX instance in its own container (hosting mode, Consul on) has the port to itself."""
STANDALONE_PBX_BIND = "0.0.0.0:5062"
"""A PBX on the same host as the endpoint (no Consul): the endpoint's internal side has 5060."""


def _apply(args: argparse.Namespace) -> int:
    from trunkproxy.hosting.apply import DEFAULT_OUTPUT_DIR, DEFAULT_SIPPROXY_JSON, run_apply
    from trunkproxy.hosting.pjsip import PjsipSettings
    from trunkproxy.hosting.trunks import TrunkStore

    config = load_config(args.config)
    kwargs = {}
    if args.no_consul:
        kwargs["kv_rules"] = None
    bind = args.bind or (HOSTED_PBX_BIND if config.consul.enabled else STANDALONE_PBX_BIND)
    settings = PjsipSettings(context=args.context, bind=bind, write_transports=not args.no_transports)
    result = asyncio.run(run_apply(
        config, output_dir=args.output or DEFAULT_OUTPUT_DIR, store=TrunkStore(args.db) if args.db else None,
        sipproxy_json=None if args.no_sipproxy_json else (args.sipproxy_json or DEFAULT_SIPPROXY_JSON),
        consul_address=args.consul_address, check_dns=not args.no_dns_check, dns_server=args.dns_server,
        dry_run=args.dry_run, settings=settings, hostname=args.hostname, **kwargs))
    if args.dry_run and result.ok:
        print(result.diff if result.changed else f"{result.output}: no changes", end="" if result.changed else "\n")
    return 0 if result.ok else 1
