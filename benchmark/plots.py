"""Figures: sample grids and FID-vs-cost Pareto plots of a leaderboard."""
from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import save_image  # noqa: E402

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
FAILED = {"failed", "error"}


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save ``[N, C, H, W]`` images in [-1, 1] as one PNG grid, ``nrow`` images per row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(((images.detach().float().cpu() + 1) / 2).clamp(0, 1), path, nrow=nrow)
    return path


def _numeric(df: pd.DataFrame, column: str) -> pd.Series:
    """A column as floats; missing columns and text such as "n/a (...)" become NaN."""
    if column not in df:
        return pd.Series(float("nan"), index=df.index)
    return pd.to_numeric(df[column], errors="coerce")


def pareto_front(x: pd.Series, y: pd.Series) -> tuple[list[float], list[float]]:
    """Points no other point beats on both axes (lower is better), by increasing ``x``."""
    front_x, front_y = [], []
    for px, py in sorted(zip(x, y)):
        if not front_y or py < front_y[-1]:
            front_x.append(px)
            front_y.append(py)
    return front_x, front_y


def _scatter(rows: pd.DataFrame, x: pd.Series, xlabel: str, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 5))
    markers = dict(zip(sorted(rows["backbone"].unique()), itertools.cycle(MARKERS)))
    for backbone, marker in markers.items():  # one front per backbone: their FIDs do not compare
        mine = rows["backbone"] == backbone
        points = ax.scatter(x[mine], rows["fid"][mine], marker=marker, label=backbone, alpha=0.8)
        low, high = _numeric(rows, "fid_low")[mine], _numeric(rows, "fid_high")[mine]
        if low.notna().any():  # the 95% interval of each row's FID
            ax.errorbar(x[mine], rows["fid"][mine], yerr=[rows["fid"][mine] - low, high - rows["fid"][mine]],
                        fmt="none", ecolor=points.get_facecolor()[0], elinewidth=1, capsize=3, alpha=0.6)
        ax.plot(*pareto_front(x[mine], rows["fid"][mine]), linestyle="--", linewidth=1,
                color=points.get_facecolor()[0], label=f"{backbone} Pareto front")
    dense = rows["method"] == "dense"
    ax.scatter(x[dense], rows["fid"][dense], s=220, facecolors="none", edgecolors="black", linewidths=1.5,
               label="dense reference")
    for (_, row), px in zip(rows.iterrows(), x):
        ax.annotate(row["method"], (px, row["fid"]), textcoords="offset points", xytext=(5, 4), fontsize=8,
                    fontweight="bold" if row["method"] == "dense" else "normal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pareto_plots(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """FID vs sparse MACs, and FID vs measured latency where any row has a latency; failed rows are left out.

    The latency of a row is its ``sparse_latency_ms`` where measured, else its dense ``latency_ms``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = ~df["status"].astype(str).str.lower().isin(FAILED) & _numeric(df, "fid").notna()
    rows = df[ok].assign(fid=_numeric(df, "fid")[ok])
    macs = _numeric(rows, "sparse_macs_g").fillna(_numeric(rows, "macs_g"))
    paths = []
    has_macs = macs.notna()
    if has_macs.any():
        paths.append(
            _scatter(rows[has_macs], macs[has_macs], "MACs per sample with N:M sparsity (G)", "FID vs sparse MACs",
                     out_dir / "pareto_fid_vs_macs.png")
        )
    latency = _numeric(rows, "sparse_latency_ms").fillna(_numeric(rows, "latency_ms"))
    has_latency = latency.notna()
    if has_latency.any():
        paths.append(
            _scatter(rows[has_latency], latency[has_latency], "measured time per network evaluation (ms)",
                     "FID vs measured latency", out_dir / "pareto_fid_vs_latency.png")
        )
    return paths
