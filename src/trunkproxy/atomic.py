"""Writing files so that readers see the old or the new content, never a part."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(directory: Path, files: dict[str, str], mode: int = 0o600) -> list[Path]:
    """Write every file to a temporary name first, then rename them into place; on any error nothing is renamed.

    With one file (what apply writes) the result is all or nothing; a reader sees the old or the new file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    temps: list[tuple[str, Path]] = []
    try:
        for name, text in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
            temps.append((name, Path(tmp)))
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                os.fchmod(handle.fileno(), mode)
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException:
        for _, tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    written = []
    for name, tmp in temps:
        target = directory / name
        os.replace(tmp, target)
        written.append(target)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return written
