"""CLI subcommands of this package (registered by trunkproxy.cli)."""
from __future__ import annotations

import argparse


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this package's subcommands to the `trunkproxy` parser."""
