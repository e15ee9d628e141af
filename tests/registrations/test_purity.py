"""The state machine, event format, view and statistics parser do no I/O and read no clock."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src" / "trunkproxy"
PURE = ["registrations/state.py", "registrations/events.py", "registrations/view.py", "api/kamailio_stats.py"]
FORBIDDEN = {"asyncio", "socket", "sqlite3", "time", "datetime", "os", "ssl", "aiohttp", "subprocess"}


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io(module):
    tree = ast.parse((SRC / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, imported & FORBIDDEN
