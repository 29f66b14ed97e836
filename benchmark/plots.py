"""Figures: sample grids and FID-vs-cost Pareto plots of a leaderboard."""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import save_image  # noqa: E402

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
FAILED = {"failed", "error"}


def save_grid(images: torch.Tensor, file: str | Path | BinaryIO, nrow: int = 8) -> None:
    """Save ``[N, C, H, W]`` images in [-1, 1] as one PNG grid, ``nrow`` images per row, to a path or a file."""
    if isinstance(file, (str, Path)):
        Path(file).parent.mkdir(parents=True, exist_ok=True)
    save_image(((images.detach().float().cpu() + 1) / 2).clamp(0, 1), file, nrow=nrow, format="png")


def _numeric(df: pd.DataFrame, column: str) -> pd.Series:
    """A column as floats; missing columns and text such as "n/a (...)" become NaN."""
    if column not in df:
        return pd.Series(float("nan"), index=df.index)
    return pd.to_numeric(df[column], errors="coerce")


def method_family(method: str) -> str:
    """The curve a row belongs to: its method (or chain) without operating points, ``dipgo@0.3`` -> ``dipgo``."""
    return "+".join(part.split("@")[0] for part in method.split("+"))


def _curves(rows: pd.DataFrame, x: pd.Series, xlabel: str, title: str, path: Path) -> Path:
    """One panel per backbone (their FIDs do not compare); in each, one curve per method family through its
    operating points, with each point's 95% FID interval; the dense row ringed."""
    backbones = sorted(rows["backbone"].unique())
    fig, axes = plt.subplots(1, len(backbones), figsize=(6.5 * len(backbones), 5), squeeze=False)
    families = sorted(rows["method"].map(method_family).unique())
    styles = row_styles(families)
    for ax, backbone in zip(axes[0], backbones):
        mine = rows[rows["backbone"] == backbone]
        for family in families:
            points = mine[mine["method"].map(method_family) == family]
            if points.empty:
                continue
            order = x[points.index].sort_values().index
            px, py = x[order], points.loc[order, "fid"]
            low, high = _numeric(points, "fid_low")[order], _numeric(points, "fid_high")[order]
            colour, marker = styles[family]
            ax.plot(px, py, marker=marker, color=colour, label=family, linewidth=1.2)
            if low.notna().any():
                ax.errorbar(px, py, yerr=[py - low, high - py], fmt="none", ecolor=colour, elinewidth=1,
                            capsize=3, alpha=0.6)
            for method, qx, qy in zip(points.loc[order, "method"], px, py):
                if "@" in method:
                    ax.annotate(method.split("@", 1)[1], (qx, qy), textcoords="offset points", xytext=(4, 3),
                                fontsize=7, color=colour)
        dense = mine[mine["method"] == "dense"]
        ax.scatter(x[dense.index], dense["fid"], s=220, facecolors="none", edgecolors="black", linewidths=1.5,
                   label="dense reference")
        ax.set_title(f"{backbone}: {title}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FID (lower is better)")
        ax.set_ylim(bottom=0)  # an FID is never negative, whatever a two-seed t interval says
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pareto_plots(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """FID vs sparse MACs, and FID vs measured latency relative to dense, one curve per method; failed rows
    are left out.

    A row's relative latency is ``1 / speedup``: its two timings were taken the same way (its
    ``latency_mode``), so rows timed per evaluation and per sampling step share the axis.
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
            _curves(rows[has_macs], macs[has_macs], "MACs per sample with N:M sparsity and skipped blocks (G)",
                    "FID vs MACs", out_dir / "pareto_fid_vs_macs.png")
        )
    relative = 1 / _numeric(rows, "speedup")
    has_latency = relative.notna()
    if has_latency.any():
        paths.append(
            _curves(rows[has_latency], relative[has_latency], "measured latency / dense latency (same mode per row)",
                    "FID vs measured latency", out_dir / "pareto_fid_vs_latency.png")
        )
    return paths


def row_styles(methods: list[str]) -> dict[str, tuple[tuple[float, ...], str]]:
    """A colour and marker per row (or method family), the same in every panel of a figure: tab10's colours,
    then Dark2's, so up to eighteen rows differ in colour."""
    palette = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors
    return {method: (palette[i % len(palette)], MARKERS[i % len(MARKERS)]) for i, method in enumerate(methods)}


def budget_curves(df: pd.DataFrame, out_dir: str | Path) -> Path | None:
    """FID against fine-tuning steps (both axes log: rows near the dense reference and collapsed ones differ
    by 10x), one curve per weight-training row with its 95% intervals (clipped at the bottom of the axis where
    they reach below it) and the dense reference as a band, one panel per backbone; None when no backbone has
    two budgets."""
    ok = ~df["status"].astype(str).str.lower().isin(FAILED) & _numeric(df, "fid").notna()
    rows = df[ok].assign(fid=_numeric(df, "fid")[ok], steps=_numeric(df, "train_steps")[ok])
    trained = rows[rows["steps"] > 0]
    backbones = sorted(b for b, g in trained.groupby("backbone") if g["steps"].nunique() > 1)
    if not backbones:
        return None
    styles = row_styles(sorted(trained["method"].unique()))
    fig, axes = plt.subplots(1, len(backbones), figsize=(8.5 * len(backbones), 5), squeeze=False)
    for ax, backbone in zip(axes[0], backbones):
        mine = trained[trained["backbone"] == backbone]
        for method, points in mine.groupby("method"):
            points = points.sort_values("steps")
            low, high = _numeric(points, "fid_low"), _numeric(points, "fid_high")
            colour, marker = styles[method]
            ax.plot(points["steps"], points["fid"], marker=marker, color=colour, label=method, linewidth=1.2)
            if low.notna().any():
                ax.errorbar(points["steps"], points["fid"], yerr=[points["fid"] - low, high - points["fid"]],
                            fmt="none", ecolor=colour, elinewidth=1, capsize=3, alpha=0.6)
        dense = rows[(rows["backbone"] == backbone) & (rows["method"] == "dense")]
        bottom = mine["fid"].min()
        if not dense.empty:
            low, high = _numeric(dense, "fid_low").iloc[0], _numeric(dense, "fid_high").iloc[0]
            ax.axhspan(low, high, color="grey", alpha=0.25, label="dense reference (95%)")
            bottom = min(bottom, dense["fid"].iloc[0], low if low > 0 else bottom)
        ax.set_xscale("log")
        budgets = sorted(int(steps) for steps in mine["steps"].unique())
        ax.set_xticks(budgets, labels=[str(steps) for steps in budgets])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 3, 5)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{backbone}: FID vs fine-tuning budget")
        ax.set_xlabel("fine-tuning steps")
        ax.set_ylabel("FID (lower is better)")
        ax.set_ylim(bottom=0.8 * bottom)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the curves, not over them
    fig.tight_layout()
    path = Path(out_dir) / "budget_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
