"""``check-dense``: the convergence checks of a dense reference."""
from __future__ import annotations

from benchmark.cli import main
from benchmark.convergence import worse_with_more_steps
from benchmark.metrics.fid import FIDEstimate


def estimate(value: float, sd: float = 0.5) -> FIDEstimate:
    return FIDEstimate(value, sd, value - 1.96 * sd, value + 1.96 * sd, 200)


def test_a_step_count_is_worse_only_beyond_noise():
    assert worse_with_more_steps({20: estimate(30.0), 50: estimate(30.5), 100: estimate(29.0)}) == []
    assert worse_with_more_steps({20: estimate(30.0), 50: estimate(40.0), 100: estimate(30.2)}) == ["20->50"]


def test_the_command_checks_the_tiny_reference(capsys, tmp_path):
    code = main(["check-dense", "--backbones", "ddpm", "--steps", "2,4", "--samples", "8", "--grids", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "Real-vs-real floor FID@8" in out
    row = next(line for line in out.splitlines() if line.startswith("| ddpm |"))
    assert row.count("±") == 2 and row.endswith("| n/a | n/a |")  # 50 steps (the preset's) not among 2,4: no bound;
    # unconditional: no prompt adherence
    assert "torch 2." in out.splitlines()[-1] and "wall time" in out.splitlines()[-1]
