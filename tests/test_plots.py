import matplotlib.pyplot as plt
import pandas as pd
import torch
from PIL import Image

from benchmark.metrics.latency import NA_CUDA
from benchmark.plots import budget_curves, method_family, pareto_plots, row_styles, save_grid


def test_grid_png_has_the_grid_size(tmp_path):
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    path = tmp_path / "grids" / "samples.png"
    save_grid(images, path, nrow=3)
    with Image.open(path) as grid:
        assert grid.format == "PNG"
        assert grid.size == (3 * (16 + 2) + 2, 2 * (16 + 2) + 2)  # 3 x 2 images, 2-pixel padding


def leaderboard(speedup):
    return pd.DataFrame(
        {
            "backbone": ["uvit", "uvit", "uvit", "ddpm", "ddpm", "ddpm", "ddpm"],
            "method": ["dense", "asp", "sparsedm", "dense", "asp", "dipgo@0.3", "dipgo@0.7"],
            "status": ["ok", "ok", "failed", "ok", "ok", "ok", "ok"],
            "fid": [10.0, 12.5, None, 14.0, 15.0, 30.0, 16.0],
            "fid_low": [9.0, 11.5, None, 13.0, 14.0, 28.0, 15.0],
            "fid_high": [11.0, 13.5, None, 15.0, 16.0, 32.0, 17.0],
            "macs_g": [1.2, 1.2, 1.2, 6.1, 6.1, 6.1, 6.1],
            "sparse_macs_g": [1.2, 0.7, None, 6.1, 3.2, 1.9, 4.3],
            "speedup": speedup,
        }
    )


def test_a_method_and_its_operating_points_make_one_curve():
    assert method_family("dipgo@0.3") == method_family("dipgo") == "dipgo"
    assert method_family("diff-pruning@0.5+dipgo@0.3") == "diff-pruning+dipgo"


def test_pareto_plots_without_latency_numbers(tmp_path):
    paths = pareto_plots(leaderboard([NA_CUDA] * 7), tmp_path)
    assert [p.name for p in paths] == ["pareto_fid_vs_macs.png"]
    assert paths[0].stat().st_size > 0


def test_pareto_plots_with_latency(tmp_path):
    paths = pareto_plots(leaderboard([1.0, NA_CUDA, None, 1.0, NA_CUDA, 1.9, 1.2]), tmp_path / "plots")
    assert [p.name for p in paths] == ["pareto_fid_vs_macs.png", "pareto_fid_vs_latency.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100


def test_rows_keep_one_distinct_style_in_every_panel():
    methods = [f"method-{i}" for i in range(20)]
    styles = row_styles(methods)
    assert len(set(styles.values())) == 20  # no two rows of a full leaderboard look alike
    assert len({colour for colour, _ in list(styles.values())[:18]}) == 18
    assert row_styles(methods[:3]) == {m: styles[m] for m in methods[:3]}  # the same row, the same style


def test_budget_curves_label_the_budgets_and_colour_a_method_alike_across_backbones(tmp_path, monkeypatch):
    rows = []
    for backbone, methods in (("ddpm", ["asp", "dense-ft", "ste"]), ("dit", ["asp", "ste"])):
        rows.append({"backbone": backbone, "method": "dense", "status": "ok", "fid": 20.0, "fid_low": 18.0,
                     "fid_high": 22.0, "train_steps": 0})
        for i, method in enumerate(methods):
            for steps in (300, 1000, 3000):
                fid = 40.0 + i - steps / 1000
                rows.append({"backbone": backbone, "method": method, "status": "ok", "fid": fid,
                             "fid_low": fid - 2, "fid_high": fid + 2, "train_steps": steps})
    saved = {}
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, path, **_: saved.update(fig=fig, path=path))
    assert budget_curves(pd.DataFrame(rows), tmp_path) == tmp_path / "budget_curves.png"
    ddpm, dit = saved["fig"].axes
    for ax in (ddpm, dit):
        assert [tick.get_text() for tick in ax.get_xticklabels()] == ["300", "1000", "3000"]
    colour = {ax: {line.get_label(): line.get_color() for line in ax.get_lines() if not line.get_label().startswith("_")}
              for ax in (ddpm, dit)}
    assert colour[ddpm]["asp"] == colour[dit]["asp"] and colour[ddpm]["ste"] == colour[dit]["ste"]
    assert len(set(colour[ddpm].values())) == 3
