"""Reading the TOML configuration file with errors that name file, key and fix."""
from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import ValidationError

from trunkproxy.config.model import Config, embedded_default

DEFAULT_PATH = Path("/etc/trunkproxy/trunkproxy.toml")


class ConfigError(Exception):
    """A configuration file that cannot be used; the message says where and what to do."""


def load_config(path: Path | None) -> Config:
    """`path` None: the default file if it exists, else the embedded default."""
    if path is None:
        if not DEFAULT_PATH.exists():
            return embedded_default()
        path = DEFAULT_PATH
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror}); check the path given with --config") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}; fix the syntax at that line") from exc
    return parse_config(data, str(path))


def parse_config(data: dict, source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            hint = err["msg"]
            if err["type"] == "extra_forbidden":
                hint = "unknown key; remove it or check its spelling against docs/configuration.md"
            problems.append(f"{source}: key `{key}`: {hint}")
        raise ConfigError("\n".join(problems)) from exc
