"""Wall time of one small grid with the local executor and with Ray at 1 and 2 workers, and Ray's fixed cost.

The grid: dense, asp and uniform-skip on the tiny DDPM, seeds 0 and 1, 20 training steps, FID@32,
10 DDIM steps (6 cells). Each configuration runs in a fresh process on an idle machine, into a fresh
directory, so nothing is resumed; Ray's start-up is ``ray.init`` to a ready local cluster and its
shutdown.

    python results/executors.py > results/executors.out
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
    for label, workers, extra in (("local", 1, []), ("ray", 1, ["--executor", "ray"]), ("ray", 2, ["--executor", "ray"])):
        with tempfile.TemporaryDirectory() as out:
            env_prefix = [sys.executable, "-c", f"import ray, runpy, sys; ray.init(num_cpus={workers}, "
                          "include_dashboard=False); sys.argv = ['benchmark'] + sys.argv[1:]; "
                          "runpy.run_module('benchmark', run_name='__main__')"] if extra else [sys.executable, "-m",
                                                                                           "benchmark"]
            print(f"| {label} | {workers} | {timed([*env_prefix, 'run', *GRID, *extra, '--out', out]):.1f} |", flush=True)
    for cpus in (1, 2):
        init, first_task, shutdown = subprocess.run(
            [sys.executable, "-c", STARTUP.format(cpus=cpus)], check=True, capture_output=True, text=True
        ).stdout.split()
        print(f"\nRay fixed cost, {cpus} CPU(s): ray.init {init} s, first task {first_task} s, shutdown {shutdown} s")


if __name__ == "__main__":
    main()
