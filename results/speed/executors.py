"""Wall time of one small grid with the local executor at ``--jobs 1`` (this process, the machine's threads)
and ``--jobs 2`` (two worker processes, one thread each), with Ray at 1 and 2 actors, and Ray's fixed cost.

The grid: dense, asp and uniform-skip on the tiny DDPM, seeds 0 and 1, 20 training steps, FID@32,
10 DDIM steps (6 cells). Each configuration runs in a fresh process on an idle machine, into a fresh
directory, so nothing is resumed; Ray starts its own local cluster (the machine's CPUs) each time, and
its fixed cost is ``ray.init`` to a ready local cluster, the first task and the shutdown.

    python results/speed/executors.py > results/speed/executors.out
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time

GRID = ["--methods", "dense,asp,uniform-skip", "--backbones", "ddpm", "--seeds", "0,1", "--train-steps", "20",
        "--fid-samples", "32", "--sample-steps", "10", "--quiet"]
STARTUP = """
import time, ray
start = time.perf_counter(); ray.init(num_cpus={cpus}, include_dashboard=False); ready = time.perf_counter()
ray.get(ray.remote(lambda: None).remote()); first = time.perf_counter(); ray.shutdown()
print(f"{{ready - start:.1f}} {{first - ready:.1f}} {{time.perf_counter() - first:.1f}}")
"""


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    print("| executor | workers | wall time (s) |")
    print("|---|---|---|")
    for executor, jobs in (("local", 1), ("local", 2), ("ray", 1), ("ray", 2)):
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-m", "benchmark", "run", *GRID, "--executor", executor, "--jobs", str(jobs),
                       "--out", out]
            print(f"| {executor} | {jobs} | {timed(command):.1f} |", flush=True)
    for cpus in (1, 2):
        init, first_task, shutdown = subprocess.run(
            [sys.executable, "-c", STARTUP.format(cpus=cpus)], check=True, capture_output=True, text=True
        ).stdout.split()
        print(f"\nRay fixed cost, {cpus} CPU(s): ray.init {init} s, first task {first_task} s, shutdown {shutdown} s")


if __name__ == "__main__":
    main()
