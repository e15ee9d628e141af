"""Kamailio embeds Debian's python3: routing code and the KEMI adapter may import only the
standard library and each other."""
import ast
import sys
from pathlib import Path

SRC = Path(__file__).parents[2] / "src" / "trunkproxy"
EMBEDDED = [*sorted((SRC / "routing").glob("*.py")), SRC / "kamailio" / "kemi.py", SRC / "kamailio" / "kemi_entry.py",
            SRC / "kamailio" / "relay.py"]
ALLOWED_OWN = ("trunkproxy.routing", "trunkproxy.kamailio.kemi", "trunkproxy.kamailio.relay")


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_embedded_modules_import_only_stdlib_and_routing():
    offenders = []
    for path in EMBEDDED:
        for name in _imports(path):
            top = name.split(".")[0]
            if name.startswith(ALLOWED_OWN) or top in sys.stdlib_module_names or top in ("KSR", "__future__"):
                continue
            offenders.append(f"{path.name}: {name}")
    assert offenders == []
