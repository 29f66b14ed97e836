"""Wall time of the README's main command, ``python -m benchmark run --methods all``, from nothing, and where
the cells' time goes, beside the same cells of an earlier published run.

    python results/speed/default_run.py --out results/default --before 751db34 > results/speed/default_run.out

Run it on an idle machine: it times the command as one process into ``--out``, which must not exist yet (so
nothing is resumed), then prints the wall time, each phase's seconds summed over the cells (the worker's
time, so with ``--jobs 2`` they add up to about twice the wall time), the same sums for the cells of
``results/default`` at commit ``--before``, and the wall time over the floor of issue #23 (the FID features'
and the fine-tuning's multiply-adds at the fp32 peak of two AVX-512 cores; DiP-GO's 350-step pruner, added
since, is not in that floor).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

FLOOR_SECONDS = 69e12 / 190e9  # 44 T (FID features) + 25 T (fine-tuning) multiply-adds at 190 GMAC/s
PHASES = ("load", "prune", "metrics", "fid", "total")


def phase_sums(cells: list[dict]) -> dict[str, float]:
    sums: dict[str, float] = defaultdict(float)
    for cell in cells:
        for phase in PHASES:
            sums[phase] += cell["timings"].get(phase, 0.0)
    return sums


def cells_at(commit: str) -> list[dict]:
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{commit}:results/default/cells"], check=True,
                           capture_output=True, text=True).stdout.split()
    return [json.loads(subprocess.run(["git", "show", f"{commit}:results/default/cells/{name}"], check=True,
                                      capture_output=True, text=True).stdout) for name in names if name.endswith(".json")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--before", required=True, help="commit whose results/default cells to compare with")
    parser.add_argument("run_args", nargs="*", help="extra arguments for run, e.g. --jobs 1")
    args = parser.parse_args()
    if args.out.exists():
        sys.exit(f"error: {args.out} exists; give a fresh directory")
    command = [sys.executable, "-m", "benchmark", "run", "--methods", "all", "--out", str(args.out),
               *args.run_args]
    start = time.perf_counter()
    finished = subprocess.run(command)
    wall = time.perf_counter() - start
    cells = [json.loads(p.read_text()) for p in sorted((args.out / "cells").glob("*.json"))]
    ok = sum(c["status"] == "ok" for c in cells)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"command: {' '.join(['python', *command[1:]])}")
    print(f"commit {commit}, {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"exit {finished.returncode}")
    print(f"wall time: {wall:.0f} s ({wall / 60:.1f} min) for {len(cells)} cells, {ok} ok; "
          f"threads per worker: {sorted({c.get('threads') for c in cells})}")
    print(f"wall time / floor ({FLOOR_SECONDS:.0f} s): {wall / FLOOR_SECONDS:.1f}x\n")
    before = cells_at(args.before)
    now, then = phase_sums(cells), phase_sums(before)
    print(f"| phase | seconds summed over cells, now ({len(cells)} cells) | at {args.before} ({len(before)} cells) |")
    print("|---|---|---|")
    for phase in PHASES:
        print(f"| {phase} | {now[phase]:.0f} | {then[phase]:.0f} |")
    print("\n| cell | total s now | prune | fid | total s before |")
    print("|---|---|---|---|---|")
    earlier = {(c["backbone"], c["method"]): c for c in before}
    for cell in cells:
        old = earlier.get((cell["backbone"], cell["method"]))
        t = cell["timings"]
        print(f"| {cell['backbone']}/{cell['method']} | {t['total']:.0f} | {t.get('prune', 0):.0f} | "
              f"{t.get('fid', 0):.0f} | {old['timings']['total']:.0f} |" if old else
              f"| {cell['backbone']}/{cell['method']} | {t['total']:.0f} | {t.get('prune', 0):.0f} | "
              f"{t.get('fid', 0):.0f} | (new) |")


if __name__ == "__main__":
    main()
