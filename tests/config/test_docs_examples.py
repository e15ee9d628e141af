"""Every TOML example in the README and docs/ is a configuration trunkproxy accepts: the docs
cannot drift from the model unnoticed."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from trunkproxy.config.model import Config

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(path.name, n, block) for path in DOCS
          for n, block in enumerate(re.findall(r"```toml\n(.*?)```", path.read_text(), re.S))]


@pytest.mark.parametrize("name, n, block", BLOCKS, ids=[f"{name}#{n}" for name, n, _ in BLOCKS])
def test_documented_configuration_is_valid(name, n, block):
    Config.model_validate(tomllib.loads(block))


def test_the_docs_have_examples_to_check():
    assert len(BLOCKS) >= 4  # README, configuration.md, media.md, capture.md
