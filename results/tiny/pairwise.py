"""The comparisons the papers claim, tested on a run's cells: Welch's t over seeds, as in the leaderboard.

For each backbone and each pair below, the difference of mean FID (first minus second) and its p-value
by :func:`benchmark.significance.compare`; at p >= 0.05 the pair is a tie.

    python results/tiny/pairwise.py results/tiny > results/tiny/pairwise.out
"""
from __future__ import annotations

import sys

import pandas as pd

from benchmark.leaderboard import load_cell_rows
from benchmark.significance import compare

PAIRS = [  # (claim, first, second)
    ("SparseDM transfer beats STE at 2:4", "sparsedm", "ste"),
    ("SparseDM transfer beats ASP at 2:4", "sparsedm", "asp"),
    ("STE beats one-shot ASP at 2:4", "ste", "asp"),
    ("progressive switching vs staged transfer", "progressive", "sparsedm"),
    ("DiP-GO beats uniform skipping at equal MACs", "dipgo", "uniform-skip"),
    ("DiP-GO on top of a 2:4 model", "sparsedm+dipgo", "sparsedm"),
]


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


def _values(rows: pd.DataFrame, metric: str) -> tuple[list[float], list[float]]:
    return rows[metric].astype(float).tolist(), rows[f"{metric}_sd"].astype(float).fillna(0.0).tolist()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/tiny")
