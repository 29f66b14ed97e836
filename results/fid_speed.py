"""What one FID and its bootstrap interval cost, in the form the harness uses and in pytorch-fid's.

At N <= 2048 samples, tr sqrt(S1 S2) is the nuclear norm of A Bᵀ / sqrt((N1-1)(N2-1)) with A, B the
centred features: an N x N singular-value problem instead of a 2048 x 2048 matrix square root.
Prints the time of each form and how far the values agree, and the time of a 200-resample bootstrap.

    python results/fid_speed.py > results/fid_speed.out
"""
from __future__ import annotations

import platform
import time

import numpy as np
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from benchmark.metrics.fid import FEATURE_DIMS, MIN_RESAMPLES, bootstrap_fid, fid_from_features

N = 256


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def eigh_form(a: np.ndarray, b: np.ndarray) -> float:
    """tr sqrt(S1 S2) as the eigenvalues of sqrt(S1) S2 sqrt(S1), in float64 (the harness's form until now)."""
    s1, s2 = (torch.as_tensor(np.cov(x, rowvar=False)) for x in (a, b))
    values, vectors = torch.linalg.eigh(s1)
    root = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
    trace = torch.linalg.eigvalsh(root @ s2 @ root).clamp(min=0).sqrt().sum()
    diff = torch.as_tensor(a.mean(0) - b.mean(0))
    return float(diff @ diff + s1.trace() + s2.trace() - 2 * trace)


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(64, FEATURE_DIMS)) / 8  # low-rank structure, like Inception pool3 features
    generated = np.abs(rng.normal(size=(N, 64)) @ mixing + 0.1 * rng.normal(size=(N, FEATURE_DIMS)))
    reference = np.abs(rng.normal(size=(N, 64)) @ mixing + 0.1 * rng.normal(size=(N, FEATURE_DIMS)) + 0.05)

    nuclear, t_nuclear = timed(lambda: fid_from_features(generated, reference))
    eigh, t_eigh = timed(lambda: eigh_form(generated, reference))
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (generated, reference)]
    sqrtm, t_sqrtm = timed(lambda: calculate_frechet_distance(*stats[0], *stats[1]))
    estimate, t_boot = timed(lambda: bootstrap_fid(generated, reference, MIN_RESAMPLES, seed=0))

    print(f"# FID at N = {N}, D = {FEATURE_DIMS}, 1 thread ({platform.processor() or platform.machine()}, "
          f"torch {torch.__version__})\n")
    print("| form | FID | relative to pytorch-fid | seconds |")
    print("|---|---|---|---|")
    for name, value, seconds in (
        ("nuclear norm of A·Bᵀ (harness)", nuclear, t_nuclear),
        ("eigh of sqrt(S1)·S2·sqrt(S1)", eigh, t_eigh),
        ("pytorch-fid (scipy sqrtm)", sqrtm, t_sqrtm),
    ):
        print(f"| {name} | {value:.6f} | {abs(value - sqrtm) / abs(sqrtm):.1e} | {seconds:.3f} |")
    print(f"\nbootstrap, {MIN_RESAMPLES} resamples: {estimate.value:.3f} ± {estimate.high - estimate.value:.3f} "
          f"(sd {estimate.sd:.3f}) in {t_boot:.2f} s")


if __name__ == "__main__":
    main()
