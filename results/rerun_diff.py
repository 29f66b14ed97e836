"""Two runs of the same cells, side by side: how far a rerun moves each FID and speedup.

Cells are matched by (backbone, method, seed) and must have the same config hash (the same configuration); the FID
difference is judged against the two cells' bootstrap intervals (:mod:`benchmark.significance`).

    python results/rerun_diff.py results/default results/tiny > results/default/rerun_diff.out
"""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmark import significance
from benchmark.grid.store import CellStore, cell_stem

AGREE = 1e-3  # FID units: float summation order (e.g. thread count) moves the last digits only


def _cells(run: Path) -> dict[str, dict]:
    """The run's cells by file stem, read as the harness reads them."""
    return {cell_stem(c["backbone"], c["method"], c["seed"]): c for c in CellStore(run).all_cells()}


def _speedup(cell: dict) -> str:
    value = cell["metrics"]["speedup"]
    return f"{value:.2f}" if isinstance(value, float) else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    first, second = _cells(args.first), _cells(args.second)
    shared = [stem for stem in first if stem in second and first[stem]["config_hash"] == second[stem]["config_hash"]]
    print(f"# {args.first} vs {args.second}: {len(shared)} cells with equal config hashes\n")
    print(f"| cell | FID, {args.first.name} | FID, {args.second.name} | difference | verdict | "
          f"speedup, {args.first.name} | speedup, {args.second.name} |")
    print("|---|---|---|---|---|---|---|")
    agree = 0
    for stem in shared:
        a, b = first[stem]["metrics"], second[stem]["metrics"]
        verdict = significance.compare([a["fid"]], [a["fid_sd"]], [b["fid"]], [b["fid_sd"]]).verdict
        agree += abs(a["fid"] - b["fid"]) < AGREE
        print(f"| {stem} | {a['fid']:.3f} | {b['fid']:.3f} | {a['fid'] - b['fid']:+.3f} | {verdict} | "
              f"{_speedup(first[stem])} | {_speedup(second[stem])} |")
    print(f"\n{agree} of {len(shared)} FIDs agree within {AGREE}; the rest differ by the amounts above.")


if __name__ == "__main__":
    main()
