"""``python -m benchmark compare`` and ``rerun-diff``: the tests behind the published verdicts, on any run.

``compare RUN A B`` tests two rows of one run per backbone (Welch's t over seeds on the seeds' bootstrap-
floored variances, as the leaderboard's ``vs_reference``; at p >= 0.05 a tie) beside each row's seeds;
``compare RUN --claims`` tests the comparisons the papers claim (:data:`CLAIMS`) and, at equal measured
latency, each structural operating point against the skip schedule nearest to it in speedup.
``rerun-diff RUN_A RUN_B`` sets two runs' cells with equal config hashes (or, with ``--any-config``, every
cell of the same name) side by side: how far a rerun moves each FID and speedup.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

from benchmark import significance
from benchmark.grid.report import load_cell_rows
from benchmark.grid.store import CellStore, cell_stem

CLAIMS = [  # (claim, first, second): the first is claimed to have the lower FID
    ("SparseDM transfer beats STE at 2:4", "sparsedm", "ste"),
    ("SparseDM transfer beats ASP at 2:4", "sparsedm", "asp"),
    ("STE beats one-shot ASP at 2:4", "ste", "asp"),
    ("progressive switching vs one-stage transfer", "progressive", "sparsedm"),
    ("chained transfer (7:8 -> 3:4 -> 2:4) beats one-stage transfer", "sparsedm-chained", "sparsedm"),
    ("chained transfer beats STE at 2:4", "sparsedm-chained", "ste"),
    ("DiP-GO beats uniform skipping at equal MACs", "dipgo", "uniform-skip"),
    ("DiP-GO on top of a 2:4 model", "sparsedm+dipgo", "sparsedm"),
    ("DiP-GO at 0.3 MACs beats uniform skipping at its cheapest point", "dipgo@0.3", "uniform-skip"),
    ("DiP-GO beats uniform skipping at 0.6 MACs", "dipgo@0.6", "uniform-skip@0.6"),
    ("DiP-GO beats uniform skipping at 0.7 MACs", "dipgo@0.7", "uniform-skip@0.7"),
    ("Taylor (Diff-Pruning) beats L1 at 0.4 MACs", "diff-pruning@0.4", "l1-channel@0.4"),
    ("Taylor (Diff-Pruning) beats L1 at 0.5 MACs", "diff-pruning", "l1-channel"),
    ("Taylor (Diff-Pruning) beats L1 at 0.7 MACs", "diff-pruning@0.7", "l1-channel@0.7"),
    ("DiP-GO on top of Diff-Pruning", "diff-pruning+dipgo", "diff-pruning"),
    ("Taylor (Diff-Pruning) beats L1 at the paper's per-layer ratio 0.3", "diff-pruning@layer=0.3",
     "l1-channel@layer=0.3"),
    ("the paper's per-layer ratio 0.3 vs global ranking to 0.7 of the MACs", "diff-pruning@layer=0.3",
     "diff-pruning@0.7"),
    ("structural at 0.5 MACs vs 2:4 (ASP) at 0.5 of the masked layers", "diff-pruning", "asp"),
    ("pruning beats training the pruned architecture from scratch", "l1-channel", "scratch"),
    ("pruning beats training from scratch at the paper's per-layer ratio 0.3", "l1-channel@layer=0.3",
     "scratch@layer=0.3"),
    ("Diff-Pruning beats training its architecture from scratch (the paper's control)", "diff-pruning@layer=0.3",
     "scratch@layer=0.3"),
]
SKIP_FAMILIES = ("dipgo", "uniform-skip")
STRUCTURAL_FAMILIES = ("diff-pruning", "l1-channel")
AGREE = 1e-3  # FID units: float summation order (e.g. thread count) moves the last digits only


def ok_cells(run_dir: str | Path) -> pd.DataFrame:
    cells = load_cell_rows(run_dir)
    return cells[cells["status"] == "ok"]


def pairs(cells: pd.DataFrame, tests: Iterable[tuple[str, str, str]], metric: str = "fid") -> list[str]:
    """One table row per backbone and ``(claim, first, second)`` where the run has both rows."""
    lines = []
    for where, rows in budget_groups(cells):
        for claim, first, second in tests:
            a, b = (rows[rows["method"] == m] for m in (first, second))
            if a.empty or b.empty:
                continue
            result = significance.compare(*_values(a, metric), *_values(b, metric))
            label = f"{claim}: {first} vs {second}" if claim else f"{first} vs {second}"
            lines.append(f"| {where} | {label}{'' if metric == 'fid' else f' ({metric})'} | "
                         f"{result.difference:+.2f} | {result.p_value:.2g} | {result.verdict} "
                         f"(n = {len(a)}, {len(b)}) | {_per_seed(a, metric)} | {_per_seed(b, metric)} |")
    return lines


def budget_groups(cells: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """``(where, rows)`` per backbone, or per backbone and fine-tuning budget where a run has several: rows
    that train no weights (dense, skip schedules) serve every budget, so ``dense-ft`` at 3000 steps is tested
    against the same ``dense`` row as at 300."""
    for backbone, rows in cells.groupby("backbone", sort=True):
        steps = pd.to_numeric(rows["train_steps"], errors="coerce").fillna(0)
        budgets = sorted(int(b) for b in steps[steps > 0].unique())
        if len(budgets) < 2:
            yield backbone, rows
            continue
        for budget in budgets:
            yield f"{backbone}, {budget} steps", rows[(steps == 0) | (steps == budget)]


def pairs_table(cells: pd.DataFrame, tests: Iterable[tuple[str, str, str]], metrics: Iterable[str]) -> str:
    tests = list(tests)
    header = ["| backbone | comparison | first − second | p | verdict | first, per seed | second, per seed |",
              "|---|---|---|---|---|---|---|"]
    return "\n".join(header + [line for metric in metrics for line in pairs(cells, tests, metric)])


def equal_latency(cells: pd.DataFrame) -> str:
    """Operating points by measured speedup, and each structural point against the nearest skip schedule; per
    backbone, or per backbone and budget where a run has several (a row's seeds are never pooled across budgets)."""
    out = []
    single = cells[~cells["method"].str.contains(r"\+")]
    for backbone, rows in budget_groups(single):
        rows = rows.assign(speedup=pd.to_numeric(rows["speedup"], errors="coerce"))
        points = rows.dropna(subset=["speedup"]).groupby("method").agg(
            speedup=("speedup", "mean"), fid=("fid", "mean"), seeds=("fid", "size"), macs=("sparse_macs_g", "mean")
        ).sort_values("speedup")
        out += [f"\n### {backbone}: operating points by measured speedup (mean over seeds)\n",
                "| method | speedup | sparse MMACs | FID | seeds |", "|---|---|---|---|---|"]
        out += [f"| {m} | {p.speedup:.2f} | {p.macs * 1e3:.1f} | {p.fid:.1f} | {int(p.seeds)} |" for m, p in points.iterrows()]
        family = points.index.str.split("@").str[0]
        skips = points[family.isin(SKIP_FAMILIES)]
        structural = points[family.isin(STRUCTURAL_FAMILIES)]
        if skips.empty or structural.empty:
            continue
        out += [f"\n| {backbone}: structural point | speedup | nearest skip schedule | speedup | FID difference | p "
                "| verdict |", "|---|---|---|---|---|---|---|"]
        for method, point in structural.iterrows():
            nearest = (skips["speedup"] - point.speedup).abs().idxmin()
            a, b = (rows[rows["method"] == m] for m in (method, nearest))
            result = significance.compare(*_values(a, "fid"), *_values(b, "fid"))
            out.append(f"| {method} | {point.speedup:.2f} | {nearest} | {skips.loc[nearest, 'speedup']:.2f} | "
                       f"{result.difference:+.2f} | {result.p_value:.2g} | {result.verdict} |")
    return "\n".join(out)


def rerun_diff(first: str | Path, second: str | Path, any_config: bool = False) -> str:
    """The cells of two runs with equal config hashes (with ``any_config``, every cell both runs name alike):
    FIDs, their difference judged against the two cells' bootstrap intervals, and speedups."""
    a_cells, b_cells = (_by_stem(run) for run in (first, second))
    same_config = {s: a_cells[s]["config_hash"] == b_cells[s]["config_hash"] for s in a_cells if s in b_cells}
    shared = [s for s, same in same_config.items() if any_config or same]
    a_name, b_name = Path(first).name, Path(second).name
    which, head, rule = ("the same name", " config |", "---|") if any_config else ("equal config hashes", "", "")
    lines = [f"# {first} vs {second}: {len(shared)} cells with {which}", "",
             f"| cell | FID, {a_name} | FID, {b_name} | difference | verdict | speedup, {a_name} | speedup, {b_name} |"
             + head, "|---|---|---|---|---|---|---|" + rule]
    agree = 0
    for stem in shared:
        a, b = a_cells[stem]["metrics"], b_cells[stem]["metrics"]
        verdict = significance.compare([a["fid"]], [a["fid_sd"]], [b["fid"]], [b["fid_sd"]]).verdict
        agree += abs(a["fid"] - b["fid"]) < AGREE
        config = f" {'equal' if same_config[stem] else 'differs'} |" if any_config else ""
        lines.append(f"| {stem} | {a['fid']:.3f} | {b['fid']:.3f} | {a['fid'] - b['fid']:+.3f} | {verdict} | "
                     f"{_speedup(a)} | {_speedup(b)} |{config}")
    lines += ["", f"{agree} of {len(shared)} FIDs agree within {AGREE}; the rest differ by the amounts above."]
    return "\n".join(lines)


def _by_stem(run: str | Path) -> dict[str, dict]:
    return {cell_stem(c["backbone"], c["method"], c["seed"], c.get("steps")): c for c in CellStore(run).all_cells()
            if c["status"] == "ok"}


def _speedup(metrics: dict) -> str:
    value = metrics.get("speedup")
    return f"{value:.2f}" if isinstance(value, float) else "n/a"


def _per_seed(rows: pd.DataFrame, metric: str) -> str:
    """The row's values in seed order, as ``seed: value``."""
    ordered = rows.sort_values("seed")
    return ", ".join(f"{int(seed)}: {float(v):.1f}" for seed, v in zip(ordered["seed"], ordered[metric]))


def _values(rows: pd.DataFrame, metric: str) -> tuple[list[float], list[float]]:
    return rows[metric].astype(float).tolist(), pd.to_numeric(rows[f"{metric}_sd"], errors="coerce").fillna(0.0).tolist()
