"""Leaderboard tables generated from a run directory's cells (never edited by hand)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from benchmark import __version__
from benchmark.api import BenchmarkError
from benchmark.results import REFERENCE_METHOD, SCHEMA_VERSION, CellStore, now_iso

COLUMNS = [
    "backbone", "method", "status", "fid", "fid_to_dense", "params_m", "macs_g", "sparse_macs_g", "latency_ms",
    "sparse_latency_ms", "speedup", "sparsity", "train_steps", "seed", "sample_steps", "fid_samples", "error",
]
FID_COLUMNS = ["fid", "fid_to_dense"]  # headed with their shared sample count, e.g. fid@256
INTEGER_COLUMNS = ["train_steps", "seed", "sample_steps", "fid_samples"]
LOWER_IS_BETTER = ["fid", "fid_to_dense", "params_m", "macs_g", "sparse_macs_g", "latency_ms", "sparse_latency_ms"]
HIGHER_IS_BETTER = ["speedup"]
FORMATS = ("md", "csv", "json")
_DECIMALS = {"fid": 2, "fid_to_dense": 2, "speedup": 2, "sparsity": 3}
_ERROR_WIDTH = 60


def load_cells(out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per cell: grouped by backbone, the dense reference first, failed cells last."""
    cells = CellStore(out_dir).all_cells()
    if not cells:
        raise BenchmarkError(
            f"no result cells in {Path(out_dir) / 'cells'}; run `python -m benchmark run --out {out_dir}` first"
        )
    df = pd.DataFrame([_row(cell) for cell in cells], columns=COLUMNS)
    for column in INTEGER_COLUMNS:
        df[column] = pd.to_numeric(df[column]).astype("Int64")
    order = df.assign(
        _not_reference=df["method"] != REFERENCE_METHOD,
        _failed=df["status"] != "ok",
    ).sort_values(["backbone", "_not_reference", "_failed", "method"], kind="stable")
    return df.loc[order.index].reset_index(drop=True)


def _row(cell: dict[str, Any]) -> dict[str, Any]:
    metrics = cell.get("metrics") or {}
    row = {column: metrics.get(column) for column in COLUMNS}
    row.update(
        backbone=cell["backbone"],
        method=cell["method"],
        status=cell["status"],
        seed=cell.get("seed"),
        error=cell.get("error"),
    )
    return row


def render(df: pd.DataFrame, fmt: str) -> str:
    """The leaderboard as Markdown (``md``), CSV or JSON text."""
    if fmt == "md":
        return _markdown(df)
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        document = {
            "metadata": {"schema": SCHEMA_VERSION, "benchmark_version": __version__, "generated": now_iso()},
            "records": json.loads(df.to_json(orient="records", force_ascii=False)),
        }
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    raise BenchmarkError(f"unknown leaderboard format {fmt!r}; available: {', '.join(FORMATS)}")


def write_leaderboard(out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``leaderboard.{md,csv,json}`` into ``out_dir``; returns the paths by format."""
    return _write_tables(load_cells(out_dir), out_dir)


def publish(out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Rewrite the leaderboard files and the Pareto plots from ``out_dir``'s cells; the table paths by format."""
    from benchmark import plots

    df = load_cells(out_dir)
    paths = _write_tables(df, out_dir)
    plots.pareto_plots(df, out_dir)
    return paths


def _write_tables(df: pd.DataFrame, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    paths = {fmt: Path(out_dir) / f"leaderboard.{fmt}" for fmt in FORMATS}
    try:
        for fmt, path in paths.items():
            path.write_text(render(df, fmt), encoding="utf-8")
    except OSError as e:
        raise BenchmarkError(f"cannot write the leaderboard to {out_dir}: {e.strerror or e}") from None
    return paths


def _markdown(df: pd.DataFrame) -> str:
    table = df.copy()
    fid_samples = table.loc[table["status"] == "ok", "fid_samples"].dropna().unique()
    at = f"@{fid_samples[0]}" if len(fid_samples) == 1 else ""
    shown = [c for c in COLUMNS if not (c == "fid_samples" and len(fid_samples) == 1)]
    if (table["status"] == "ok").all():
        shown.remove("error")
    headers = [_header(c, at) for c in shown]
    rows = []
    previous_backbone = None
    for record in table[shown].to_dict("records"):
        cells = [_cell(c, record[c]) for c in shown]
        if record["backbone"] == previous_backbone:
            cells[0] = ""  # group rows under their backbone
        previous_backbone = record["backbone"]
        rows.append(cells)
    body = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    return (
        "# Leaderboard\n\n"
        f"Generated {now_iso()} by diffprune-bench {__version__} (cell schema {SCHEMA_VERSION}) "
        f"from {len(df)} cells. ↓ lower is better, ↑ higher is better; each backbone's `dense` row is "
        "the reference.\n\n"
        f"{body}\n"
    )


def _header(column: str, at: str) -> str:
    """The column's name, with the shared FID sample count (``at``, e.g. ``@256``) on the FID columns."""
    name = column + at if column in FID_COLUMNS else column
    if column in LOWER_IS_BETTER:
        return f"{name} ↓"
    if column in HIGHER_IS_BETTER:
        return f"{name} ↑"
    return name


def _cell(column: str, value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column == "error":
        first_line = str(value).splitlines()[0] if str(value) else ""
        short = first_line if len(first_line) <= _ERROR_WIDTH else first_line[: _ERROR_WIDTH - 1] + "…"
        return short.replace("|", "\\|")
    if isinstance(value, str):
        return value.replace("|", "\\|")  # names, statuses and "n/a (...)" markers stay text
    if column in INTEGER_COLUMNS:
        return str(int(value))
    if column in _DECIMALS:
        return f"{value:.{_DECIMALS[column]}f}"
    return f"{value:.4g}"
