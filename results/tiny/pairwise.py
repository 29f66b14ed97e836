"""The comparisons the papers claim, tested on a run's cells: Welch's t over seeds, as in the leaderboard.

For each backbone and each pair below, the difference of mean FID (first minus second) and its p-value
by :func:`benchmark.significance.compare`; at p >= 0.05 the pair is a tie. Then, at equal measured
latency: every operating point of every family sorted by its measured speedup (each row's own pair of
timings, so rows timed per evaluation and per sampling step compare), and each structural point
against the skip-schedule point nearest to it in speedup.

    python results/tiny/pairwise.py results/tiny > results/tiny/pairwise.out
"""
from __future__ import annotations

import sys

import pandas as pd

from benchmark.grid.report import load_cell_rows
from benchmark.significance import compare

PAIRS = [  # (claim, first, second)
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
]
SKIP_FAMILIES = ("dipgo", "uniform-skip")
STRUCTURAL_FAMILIES = ("diff-pruning", "l1-channel")


def main(run_dir: str) -> None:
    cells = load_cell_rows(run_dir)
    ok = cells[cells["status"] == "ok"]
    print("| backbone | claim | first − second (FID@256) | p | verdict |")
    print("|---|---|---|---|---|")
    for backbone, rows in ok.groupby("backbone"):
        for metric in ("fid", "fid_to_dense"):
            for claim, first, second in PAIRS:
                a, b = (rows[rows["method"] == m] for m in (first, second))
                if a.empty or b.empty:
                    continue
                result = compare(*_values(a, metric), *_values(b, metric))
                label = f"{claim}: {first} vs {second}" + (" (fid_to_dense)" if metric != "fid" else "")
                print(f"| {backbone} | {label} | {result.difference:+.2f} | {result.p_value:.2g} | "
                      f"{result.verdict} (n = {len(a)}, {len(b)}) |")


def equal_latency(run_dir: str) -> None:
    """Operating points by measured speedup, and each structural point against the nearest skip schedule."""
    cells = load_cell_rows(run_dir)
    ok = cells[(cells["status"] == "ok") & ~cells["method"].str.contains(r"\+")]
    for backbone, rows in ok.groupby("backbone"):
        rows = rows.assign(speedup=pd.to_numeric(rows["speedup"], errors="coerce"))
        points = rows.dropna(subset=["speedup"]).groupby("method").agg(
            speedup=("speedup", "mean"), fid=("fid", "mean"), seeds=("fid", "size"), macs=("sparse_macs_g", "mean")
        ).sort_values("speedup")
        print(f"\n### {backbone}: operating points by measured speedup (mean over seeds)\n")
        print("| method | speedup | sparse MMACs | FID@256 | seeds |")
        print("|---|---|---|---|---|")
        for method, point in points.iterrows():
            print(f"| {method} | {point.speedup:.2f} | {point.macs * 1e3:.1f} | {point.fid:.1f} | {point.seeds} |")
        family = points.index.str.split("@").str[0]
        skips = points[family.isin(SKIP_FAMILIES)]
        print(f"\n| {backbone}: structural point | speedup | nearest skip schedule | speedup | FID difference | p | verdict |")
        print("|---|---|---|---|---|---|---|")
        for method, point in points[family.isin(STRUCTURAL_FAMILIES)].iterrows():
            nearest = (skips["speedup"] - point.speedup).abs().idxmin()
            a, b = (rows[rows["method"] == m] for m in (method, nearest))
            result = compare(*_values(a, "fid"), *_values(b, "fid"))
            print(f"| {method} | {point.speedup:.2f} | {nearest} | {skips.loc[nearest, 'speedup']:.2f} | "
                  f"{result.difference:+.2f} | {result.p_value:.2g} | {result.verdict} |")


def _values(rows: pd.DataFrame, metric: str) -> tuple[list[float], list[float]]:
    return rows[metric].astype(float).tolist(), rows[f"{metric}_sd"].astype(float).fillna(0.0).tolist()


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else "results/tiny"
    main(directory)
    equal_latency(directory)
