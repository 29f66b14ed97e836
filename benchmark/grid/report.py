"""Leaderboard tables generated from a run directory's cells (never edited by hand)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from benchmark import __version__, significance
from benchmark.errors import BenchmarkError
from benchmark.grid import budgets
from benchmark.grid.store import FINETUNE_CONTROL, REFERENCE_METHOD, SCHEMA_VERSION, CellStore, now_iso

CELL_COLUMNS = [
    "backbone", "method", "budget", "seed", "status", "fid", "fid_sd", "fid_to_dense", "fid_to_dense_sd", "params_m",
    "macs_g", "sparse_macs_g", "dense_latency_ms", "latency_ms", "speedup", "latency_mode", "sparsity",
    "train_steps", "sample_steps", "fid_samples", "loss_after_pruning", "prompt_adherence", "prompt_adherence_low",
    "prompt_adherence_high", "error",
]
COLUMNS = [
    "backbone", "method", "budget", "status", "seeds", "fid", "fid_low", "fid_high", "fid_std", "vs_reference",
    "fid_to_dense", "fid_to_dense_low", "fid_to_dense_high", "fid_to_dense_std", "prompt_adherence",
    "prompt_adherence_low", "prompt_adherence_high", "params_m", "macs_g",
    "sparse_macs_g", "dense_latency_ms", "latency_ms", "speedup", "latency_mode", "sparsity", "train_steps",
    "sample_steps", "fid_samples", "loss_after_pruning", "error",
]
FID_COLUMNS = ["fid", "fid_to_dense"]  # headed with their shared sample count, e.g. fid@256, shown as mean ± 95%
ADHERENCE = "prompt_adherence"  # text-to-image backbones only: the share of samples showing their prompt
INTERVAL_COLUMNS = [f"{c}_{end}" for c in FID_COLUMNS for end in ("low", "high", "std")] + [
    f"{ADHERENCE}_low", f"{ADHERENCE}_high"]  # csv/json only
INTEGER_COLUMNS = ["train_steps", "seeds", "sample_steps", "fid_samples"]
CSV_ONLY = ["budget", "loss_after_pruning"]  # in csv/json; the markdown table shows train_steps instead of budget
ROW = ["backbone", "method", "budget"]  # what makes a row: its cells differ only by seed
LOWER_IS_BETTER = ["fid", "fid_to_dense", "params_m", "macs_g", "sparse_macs_g", "latency_ms"]
HIGHER_IS_BETTER = ["speedup", ADHERENCE]
FORMATS = ("md", "csv", "json", "html")
_DECIMALS = {"fid": 2, "fid_to_dense": 2, "speedup": 2, "sparsity": 3, ADHERENCE: 3}
_ERROR_WIDTH = 60
_MARKS = {"lower": "▼ lower", "higher": "▲ higher", "tie": "= tie"}


def read_cells(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every readable cell of a run; a one-line error where it has none."""
    cells = CellStore(out_dir).all_cells()
    if not cells:
        raise BenchmarkError(
            f"no result cells in {Path(out_dir) / 'cells'}; run `python -m benchmark run --out {out_dir}` first"
        )
    return cells


def load_cell_rows(out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per current cell file (per seed), unaggregated; ``attrs["superseded"]`` names the cells left out
    because another cell of their (backbone, method) ran a newer version of its methods."""
    current, superseded = split_superseded(read_cells(out_dir))
    df = pd.DataFrame([_row(cell) for cell in current], columns=CELL_COLUMNS)
    df.attrs["superseded"] = [f"{c['backbone']}/{c['method']} seed {c.get('seed')}" for c in superseded]
    return df


def split_superseded(cells: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Cells whose (backbone, method) ran the method and backbone versions of its latest cell, and the others.

    Seeds computed before a method or backbone changed (a new ``version``) must not be averaged with seeds
    after it.
    """
    def versions(cell: dict[str, Any]) -> str:
        config = cell.get("config") or {}
        return json.dumps([config.get("method_versions"), config.get("backbone_version")], sort_keys=True)

    def row(cell: dict[str, Any]) -> tuple[str, str, Any]:
        return cell["backbone"], cell["method"], cell.get("steps")

    latest: dict[tuple[str, str, Any], dict[str, Any]] = {}
    for cell in cells:
        key = row(cell)
        if key not in latest or str(cell.get("finished", "")) > str(latest[key].get("finished", "")):
            latest[key] = cell
    wanted = {key: versions(cell) for key, cell in latest.items()}
    is_current = [versions(c) == wanted[row(c)] for c in cells]
    return ([c for c, ok in zip(cells, is_current) if ok], [c for c, ok in zip(cells, is_current) if not ok])


def load_cells(out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per (backbone, method) over its ok seeds, plus one per failed cell.

    Rows are grouped by backbone, the dense reference first, failed cells last. FID columns hold the
    mean over seeds with the 95% interval of :func:`benchmark.significance.summarize`; ``vs_reference``
    says whether the row's FID differs from its reference row's beyond noise.
    """
    cells = load_cell_rows(out_dir)
    ok = cells[cells["status"] == "ok"]
    rows = [_aggregate(group) for _, group in ok.groupby(ROW, sort=False, dropna=False)]
    rows += [{**record, "seeds": 1} for record in cells[cells["status"] != "ok"].to_dict("records")]
    df = pd.DataFrame(rows, columns=COLUMNS)
    _mark_against_references(df, ok)
    for column in INTEGER_COLUMNS:
        df[column] = pd.to_numeric(df[column]).astype("Int64")
    df["budget"] = pd.to_numeric(df["budget"]).astype("Int64")
    order = df.assign(
        _not_reference=df["method"] != REFERENCE_METHOD,
        _budget=df["train_steps"].fillna(0),  # rows grouped by fine-tuning budget, those that train none first
        _failed=df["status"] != "ok",
    ).sort_values(["backbone", "_not_reference", "_failed", "_budget", "method"], kind="stable")
    result = df.loc[order.index].reset_index(drop=True)
    result.attrs["superseded"] = cells.attrs["superseded"]
    return result


def reference_of(method: str, train_steps: Any) -> str:
    """The row a method is judged against: ``dense-ft`` for weight-training methods, else ``dense``."""
    trains = train_steps is not None and train_steps is not pd.NA and float(train_steps) > 0
    return FINETUNE_CONTROL if trains and method != FINETUNE_CONTROL else REFERENCE_METHOD


def _row(cell: dict[str, Any]) -> dict[str, Any]:
    metrics = cell.get("metrics") or {}
    row = {column: metrics.get(column) for column in CELL_COLUMNS}
    row.update(
        backbone=cell["backbone"],
        method=cell["method"],
        status=cell["status"],
        seed=cell.get("seed"),
        budget=cell.get("steps"),
        error=cell.get("error"),
    )
    return row


def _aggregate(group: pd.DataFrame) -> dict[str, Any]:
    """One row from a (backbone, method)'s ok cells: FID summaries over seeds, other numbers averaged."""
    first = group.iloc[0]
    row: dict[str, Any] = {column: first.get(column) for column in COLUMNS if column in group}
    row.update(status="ok", seeds=len(group), error=None)
    for metric in FID_COLUMNS:
        values = pd.to_numeric(group[metric], errors="coerce").dropna()
        if values.empty:
            row[metric] = None
            continue
        sds = pd.to_numeric(group.loc[values.index, f"{metric}_sd"], errors="coerce").tolist()
        summary = significance.summarize(values.tolist(), sds)
        row.update({metric: summary.mean, f"{metric}_std": summary.std})
        if any(math.isfinite(sd) for sd in sds):  # cells of schema 1 carry no bootstrap
            row.update({f"{metric}_low": summary.low, f"{metric}_high": summary.high})
    shares = pd.to_numeric(group[ADHERENCE], errors="coerce").dropna()
    if not shares.empty:  # the seeds' shares with their Wilson intervals, summarised as FIDs are
        lows, highs = (pd.to_numeric(group.loc[shares.index, f"{ADHERENCE}_{end}"]) for end in ("low", "high"))
        sds = ((highs - lows) / (2 * significance.Z95)).tolist()
        summary = significance.summarize(shares.tolist(), sds)
        row.update({ADHERENCE: summary.mean, f"{ADHERENCE}_low": max(0.0, summary.low),
                    f"{ADHERENCE}_high": min(1.0, summary.high)})
    for column in ("params_m", "macs_g", "sparse_macs_g", "dense_latency_ms", "latency_ms", "speedup", "sparsity",
                   "loss_after_pruning"):
        numbers = pd.to_numeric(group[column], errors="coerce")
        row[column] = float(numbers.mean()) if numbers.notna().all() else first[column]  # text such as "n/a"
    return row


def _mark_against_references(df: pd.DataFrame, ok: pd.DataFrame) -> None:
    """Fill ``vs_reference``: e.g. ``▼ lower than dense-ft (p=0.003)``; ``reference`` on the dense rows."""
    seeds = {_key(key): group for key, group in ok.groupby(ROW, sort=False, dropna=False)}
    df["vs_reference"] = df["vs_reference"].astype(object)
    for index, row in df[df["status"] == "ok"].iterrows():
        if row["method"] == REFERENCE_METHOD:
            df.at[index, "vs_reference"] = "reference"
            continue
        reference = reference_of(row["method"], row["train_steps"])
        budget = _key((row["budget"],))[0] if reference == FINETUNE_CONTROL else None  # dense-ft at the same budget
        mine = seeds[_key((row["backbone"], row["method"], row["budget"]))]
        theirs = seeds.get((row["backbone"], reference, budget))
        if theirs is None:
            df.at[index, "vs_reference"] = f"n/a (no {reference} row)"
            continue
        comparison = significance.compare(
            mine["fid"].tolist(), _sds(mine), theirs["fid"].tolist(), _sds(theirs)
        )
        df.at[index, "vs_reference"] = (
            f"{_MARKS[comparison.verdict]} than {reference} (p={comparison.p_value:.2g})"
            if comparison.verdict != "tie"
            else f"{_MARKS['tie']} with {reference} (p={comparison.p_value:.2g})"
        )


def _key(values: tuple) -> tuple:
    """A row key with missing budgets (NaN, NA) as None, so that keys compare equal."""
    return tuple(None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v for v in values)


def _sds(group: pd.DataFrame) -> list[float]:
    return pd.to_numeric(group["fid_sd"], errors="coerce").fillna(0.0).tolist()


def render(df: pd.DataFrame, fmt: str, out_dir: str | os.PathLike[str] | None = None) -> str:
    """The leaderboard as Markdown (``md``), CSV, JSON or a self-contained HTML page (``html``, which adds the
    rankings per budget of ``out_dir``'s cells, inlines its plots and links its sample grids)."""
    if fmt == "html":
        from benchmark.grid import page

        shown, headers = _shown(df)
        cells = load_cell_rows(out_dir) if out_dir is not None else pd.DataFrame(columns=CELL_COLUMNS)
        rankings = budgets.render_html(budgets.budget_table(cells))
        return page.render_page(df, cells, out_dir or ".", shown, headers, cell_text, rankings)
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


def publish(out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Rewrite the leaderboard files and the Pareto plots from ``out_dir``'s cells, and with several fine-tuning
    budgets ``budgets.md`` and ``budget_curves.png``; the table paths by format."""
    from benchmark import plots

    df = load_cells(out_dir)
    plots.pareto_plots(df, out_dir)
    table = budgets.budget_table(load_cell_rows(out_dir))
    if table:  # a run with several fine-tuning budgets: curves and rankings per budget beside the table
        plots.budget_curves(df, out_dir)
    paths = _write_tables(df, out_dir)  # after the plots: the html page inlines them
    if table:
        paths["budgets"] = Path(out_dir) / "budgets.md"
        paths["budgets"].write_text(budgets.render(table) + "\n", encoding="utf-8")
    return paths


def _write_tables(df: pd.DataFrame, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    paths = {fmt: Path(out_dir) / f"leaderboard.{fmt}" for fmt in FORMATS}
    try:
        for fmt, path in paths.items():
            path.write_text(render(df, fmt, out_dir), encoding="utf-8")
    except OSError as e:
        raise BenchmarkError(f"cannot write the leaderboard to {out_dir}: {e.strerror or e}") from None
    return paths


def _shown(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The columns the md and html tables show, and their headers."""
    fid_samples = df.loc[df["status"] == "ok", "fid_samples"].dropna().unique()
    at = f"@{fid_samples[0]}" if len(fid_samples) == 1 else ""
    shown = [c for c in COLUMNS if c not in INTERVAL_COLUMNS and c not in CSV_ONLY
             and not (c == "fid_samples" and len(fid_samples) == 1)
             and not (c == ADHERENCE and pd.to_numeric(df[c], errors="coerce").isna().all())]
    if (df["status"] == "ok").all():
        shown.remove("error")
    return shown, [_header(c, at) for c in shown]


def cell_text(column: str, record: dict[str, Any]) -> str:
    """A table cell as the md and html tables show it."""
    return _interval(column, record) if column in (*FID_COLUMNS, ADHERENCE) else _cell(column, record[column])


def _markdown(df: pd.DataFrame) -> str:
    shown, headers = _shown(df)
    rows = []
    previous_backbone = None
    for record in df.to_dict("records"):
        cells = [cell_text(c, record) for c in shown]
        if record["backbone"] == previous_backbone:
            cells[0] = ""  # group rows under their backbone
        previous_backbone = record["backbone"]
        rows.append(cells)
    body = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    return (
        "# Leaderboard\n\n"
        f"Generated {now_iso()} by diffprune-bench {__version__} (cell schema {SCHEMA_VERSION}) "
        f"from {int(df['seeds'].sum())} cells. ↓ lower is better, ↑ higher is better. FIDs are means over "
        "`seeds` with their 95% interval (± half-width); `vs_reference` compares each row's FID with its "
        "reference row (`dense-ft` for methods that train weights, else `dense`) by Welch's t-test at "
        "p < 0.05, a difference inside the noise being a tie (results/README.md).\n\n"
        f"{body}\n"
        + _superseded_note(df.attrs.get("superseded", []))
    )


def _superseded_note(superseded: list[str]) -> str:
    if not superseded:
        return ""
    return (f"\nLeft out: {len(superseded)} cell(s) computed with an older version of their methods than the "
            f"latest cell of the same row (rerun them to include them): {', '.join(sorted(superseded))}.\n")


def _header(column: str, at: str) -> str:
    """The column's name, with the shared FID sample count (``at``, e.g. ``@256``) on the FID columns."""
    name = column + at if column in FID_COLUMNS else column
    if column in LOWER_IS_BETTER:
        return f"{name} ↓"
    if column in HIGHER_IS_BETTER:
        return f"{name} ↑"
    return name


def _interval(column: str, record: dict[str, Any]) -> str:
    """``mean ± half-width`` of the 95% interval, or the bare mean where a cell carries no interval."""
    mean, low, high = (record.get(name) for name in (column, f"{column}_low", f"{column}_high"))
    text = _cell(column, mean)
    if not text or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)):
        return text
    return f"{text} ± {(high - low) / 2:.{_DECIMALS[column]}f}"


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
