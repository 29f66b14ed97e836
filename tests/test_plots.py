import pandas as pd
import torch
from PIL import Image

from benchmark.metrics.latency import NA_CUDA
from benchmark.plots import pareto_front, pareto_plots, save_grid


def test_grid_png_has_the_grid_size(tmp_path):
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    path = save_grid(images, tmp_path / "grids" / "samples.png", nrow=3)
    with Image.open(path) as grid:
        assert grid.format == "PNG"
        assert grid.size == (3 * (16 + 2) + 2, 2 * (16 + 2) + 2)  # 3 x 2 images, 2-pixel padding


def leaderboard(latency):
    return pd.DataFrame(
        {
            "backbone": ["uvit", "uvit", "uvit", "ddpm", "ddpm"],
            "method": ["dense", "asp", "sparsedm", "dense", "asp"],
            "status": ["ok", "ok", "failed", "ok", "ok"],
            "fid": [10.0, 12.5, None, 14.0, 15.0],
            "macs_g": [1.2, 1.2, 1.2, 6.1, 6.1],
            "sparse_macs_g": [1.2, 0.7, None, 6.1, 3.2],
            "latency_ms": latency,
            "sparse_latency_ms": [NA_CUDA] * 5,
        }
    )


def test_pareto_plots_without_latency_numbers(tmp_path):
    paths = pareto_plots(leaderboard([NA_CUDA] * 5), tmp_path)
    assert [p.name for p in paths] == ["pareto_fid_vs_macs.png"]
    assert paths[0].stat().st_size > 0


def test_pareto_plots_with_latency(tmp_path):
    paths = pareto_plots(leaderboard([3.0, 3.1, None, 9.0, 9.2]), tmp_path / "plots")
    assert [p.name for p in paths] == ["pareto_fid_vs_macs.png", "pareto_fid_vs_latency.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100


def test_pareto_front_keeps_the_points_nothing_beats_on_both_axes():
    cost = pd.Series([3.0, 1.0, 2.0, 4.0, 2.5])
    fid = pd.Series([10.0, 30.0, 20.0, 5.0, 25.0])  # (2.5, 25) is beaten by (2, 20)
    assert pareto_front(cost, fid) == ([1.0, 2.0, 3.0, 4.0], [30.0, 20.0, 10.0, 5.0])
