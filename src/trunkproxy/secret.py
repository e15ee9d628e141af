"""The host secret that signs flow tokens; every replica on a host (or cluster) shares it."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET_BYTES = 32


def load_or_create_secret(state_dir: Path) -> bytes:
    """Read `state_dir/secret` (hex), creating it (mode 0600) on first start."""
    path = state_dir / "secret"
    try:
        text = path.read_text().strip()
        value = bytes.fromhex(text)
        if len(value) >= 16:
            return value
        raise ValueError("too short")
    except FileNotFoundError:
        pass
    except ValueError as exc:
        raise ValueError(f"{path}: not a usable secret ({exc}); delete it to have a new one generated "
                         "(tokens issued with the old one stop working) or copy the file from another replica") from exc
    state_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_bytes(SECRET_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value.hex() + "\n")
    return value
