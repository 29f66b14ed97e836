"""``python -m benchmark cost DIR``: what a run's finished cells cost, per backbone.

Worker time sums the cells' measured ``timings["total"]``. Wall time is the union of the cells'
``started``..``finished`` spans, so cells that ran side by side on parallel workers count once; spans closer
than ``gap`` join one session, and the time between sessions does not count. Work lost to a stop (a cell in
progress that never finished) is in neither figure.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Iterable

from tabulate import tabulate

Span = tuple[datetime, datetime]


def sessions(spans: Iterable[Span], gap: timedelta) -> list[Span]:
    """The union of ``spans``, with stretches that are less than ``gap`` apart joined into one."""
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start - merged[-1][1] <= gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def summarize(cells: Iterable[dict[str, Any]], gap: timedelta = timedelta(minutes=5)) -> list[dict[str, Any]]:
    """One entry per backbone: cell counts, worker seconds, the dearest cell, wall seconds and sessions."""
    by_backbone: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        if cell.get("started") and cell.get("finished"):
            by_backbone.setdefault(cell["backbone"], []).append(cell)
    summary = []
    for backbone, group in sorted(by_backbone.items()):
        seconds = {_name(c): float((c.get("timings") or {}).get("total", 0.0)) for c in group}
        dearest = max(seconds, key=seconds.get)
        spans = sessions(((datetime.fromisoformat(c["started"]), datetime.fromisoformat(c["finished"]))
                          for c in group), gap)
        summary.append({
            "backbone": backbone,
            "cells": len(group),
            "failed": sum(c.get("status") != "ok" for c in group),
            "worker_s": sum(seconds.values()),
            "dearest": (dearest, seconds[dearest]),
            "wall_s": sum((end - start).total_seconds() for start, end in spans),
            "sessions": spans,
        })
    return summary


def render(summary: list[dict[str, Any]]) -> str:
    headers = ["backbone", "cells", "failed", "worker-s", "s per cell", "dearest cell", "wall", "sessions (UTC)"]
    rows = [[
        s["backbone"], s["cells"], s["failed"], f"{s['worker_s']:,.0f}", f"{s['worker_s'] / s['cells']:.0f}",
        f"{s['dearest'][0]} ({s['dearest'][1]:,.0f} s)", _duration(s["wall_s"]),
        "; ".join(_session(start, end) for start, end in s["sessions"]),
    ] for s in summary]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _name(cell: dict[str, Any]) -> str:
    budget = f", {cell['steps']} steps" if cell.get("steps") else ""
    return f"{cell['method']} seed {cell.get('seed', 0)}{budget}"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _session(start: datetime, end: datetime) -> str:
    until = f"{end:%H:%M}" if start.date() == end.date() else f"{end:%Y-%m-%d %H:%M}"
    return f"{start:%Y-%m-%d %H:%M}–{until}"
