"""docs/registrations.md shows the transition table the code has."""
from __future__ import annotations

from pathlib import Path

from trunkproxy.registrations.state import transitions_markdown

DOC = Path(__file__).parents[2] / "docs" / "registrations.md"


def test_documented_transitions_match_the_code():
    text = DOC.read_text()
    block = text.split("<!-- transitions:begin -->\n", 1)[1].split("\n<!-- transitions:end -->", 1)[0]
    assert block == transitions_markdown(), "regenerate the table with transitions_markdown()"
