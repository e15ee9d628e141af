from __future__ import annotations

import pytest

from trunkproxy.registrations.view import duration, render_table


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.9, "59s"), (60, "1m00s"), (598, "9m58s"),
                                           (3600, "1h00m"), (7500, "2h05m"), (86400 * 3 + 4 * 3600, "3d04h")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_nothing_at_all():
    assert render_table([], 0.0) == "no registrations"
