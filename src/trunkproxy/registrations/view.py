"""Registrations as the operator reads them: a table per endpoint (for `trunkproxy status`). Pure."""
from __future__ import annotations

from itertools import groupby
from typing import Iterable

from trunkproxy.registrations.state import Registration

COLUMNS = ("TRUNK", "AOR", "REGISTRAR", "FLOW", "STATE", "EXPIRES IN", "LAST REPLY", "FAILS", "LAST SUCCESS")


def duration(seconds: float) -> str:
    """Compact duration: 45s, 9m58s, 2h05m, 3d04h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _row(reg: Registration, now: float) -> tuple[str, ...]:
    remaining = reg.seconds_until_expiry(now)
    reply = "-" if reg.last_code is None else f"{reg.last_code} {reg.last_reason or ''}".strip()
    success = "never" if reg.last_success is None else f"{duration(max(0.0, now - reg.last_success))} ago"
    return (reg.trunk or "-", reg.key.aor, reg.key.registrar, reg.key.flow, reg.state.value,
            "-" if remaining is None else duration(remaining), reply, str(reg.consecutive_failures), success)


def _table(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def render_table(registrations: Iterable[Registration], now: float, endpoints: Iterable[str] = ()) -> str:
    """One block per endpoint (configured ones too, even without registrations), one row per registration."""
    by_endpoint = {name: [] for name in endpoints}
    for endpoint, regs in groupby(sorted(registrations, key=lambda r: r.key), key=lambda r: r.key.endpoint):
        by_endpoint.setdefault(endpoint, []).extend(regs)
    if not by_endpoint:
        return "no registrations"
    lines: list[str] = []
    for endpoint in sorted(by_endpoint):
        regs = by_endpoint[endpoint]
        if lines:
            lines.append("")
        lines.append(f"endpoint {endpoint}: {len(regs)} registration{'s' if len(regs) != 1 else ''}")
        if regs:
            lines.extend(_table([COLUMNS, *(_row(r, now) for r in regs)]))
    return "\n".join(lines)
