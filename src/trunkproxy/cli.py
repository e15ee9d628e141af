"""Command-line entry point: argument parsing only; the work happens in the packages."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from trunkproxy.config.load import ConfigError, load_config


def _run(args: argparse.Namespace) -> int:
    from trunkproxy.supervisor import run_forever

    config = load_config(args.config)
    return run_forever(config, lambda: load_config(args.config))


def _check(args: argparse.Namespace) -> int:
    from trunkproxy.kamailio.render import host_problems

    config = load_config(args.config)
    problems = host_problems(config)
    if problems:
        print("trunkproxy: configuration cannot run on this host:\n" + "\n".join(f"- {p}" for p in problems),
              file=sys.stderr)
        return 2
    names = ", ".join(e.endpoint_name for e in config.endpoints) or "none"
    print(f"configuration OK: endpoints {names}")
    return 0


def _example(args: argparse.Namespace) -> int:
    from importlib import resources

    print(resources.files("trunkproxy.config").joinpath("example.toml").read_text(), end="")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trunkproxy")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trunkproxy", description="Outbound SIP proxy for PBX trunks")
    parser.add_argument("--version", action="version", version=f"trunkproxy {_version()}")
    parser.add_argument("-c", "--config", type=Path, default=None,
                        help="TOML configuration (default /etc/trunkproxy/trunkproxy.toml, else the embedded default)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start and supervise one Kamailio per interface endpoint")
    run.set_defaults(func=_run)
    check = sub.add_parser("check-config", help="validate the configuration file and exit")
    check.set_defaults(func=_check)
    for command in (run, check):
        # also after the command (`./run.sh --config FILE` ends as `trunkproxy run --config FILE`)
        command.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS,
                             help="TOML configuration (as before the command)")
    example = sub.add_parser("example-config", help="print a commented configuration to start from")
    example.set_defaults(func=_example)

    # Each area adds its own subcommands; kept in their packages so this file stays parsing only.
    from trunkproxy.hosting import commands as hosting_commands
    from trunkproxy.registrations import commands as registration_commands

    hosting_commands.register(sub)
    registration_commands.register(sub)
    return parser


def log_format(environ) -> str:
    """One line per event; under systemd (JOURNAL_STREAM set) without our own timestamp, which
    the journal keeps already."""
    fields = "%(levelname)s %(name)s: %(message)s"
    return fields if environ.get("JOURNAL_STREAM") else f"%(asctime)s {fields}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=log_format(os.environ),
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"trunkproxy: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
