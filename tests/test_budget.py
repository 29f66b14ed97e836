"""The fine-tuning budget as a grid axis: one cell per (backbone, method, seed, budget) for methods that train
weights, one cell for those that do not, and rows compared with ``dense-ft`` at their own budget."""
from __future__ import annotations

import pytest

from benchmark.api import RunOptions
from benchmark.cli import main
from benchmark.grid.report import load_cells
from benchmark.grid.run import run_grid
from benchmark.grid.store import CellStore
from benchmark.plugins import build_registries
from methods.dense_ft import DenseFineTuned
from test_harness import UNIT, registries  # noqa: F401 - the fixture

BUDGETS = [UNIT.train_steps, 3]  # the preset's budget (2) and another


@pytest.fixture
def budget_registries(registries):  # noqa: F811
    registries.methods.add(DenseFineTuned(), "tests")
    return registries


def run(registries, out, methods, budgets=None):
    return run_grid(registries, methods, ["tiny-net"], UNIT, RunOptions(), [0], "cpu", out, progress=False,
                    budgets=budgets)


def test_each_budget_is_a_cell_of_its_own_and_training_free_methods_run_once(budget_registries, tmp_path):
    summary = run(budget_registries, tmp_path, ["asp", "dense-ft", "uniform-skip"], BUDGETS)
    assert sorted((k.method, k.steps or 0) for k in summary.ok) == [
        ("asp", 0), ("asp", 3), ("dense", 0), ("dense-ft", 0), ("dense-ft", 3), ("uniform-skip", 0),
    ]  # the preset's budget is spelled as the default: those are the cells of a run without --train-steps
    store = CellStore(tmp_path)
    assert sorted(p.name for p in store.cells_dir.glob("*asp*")) == [
        "tiny-net__asp__seed0.json", "tiny-net__asp__seed0__steps3.json"]
    default, longer = store.read("tiny-net", "asp", 0), store.read("tiny-net", "asp", 0, 3)
    assert default["metrics"]["train_steps"] == 2 and longer["metrics"]["train_steps"] == 3
    assert longer["steps"] == 3 and default["steps"] is None
    assert default["config_hash"] != longer["config_hash"]
    assert store.read("tiny-net", "uniform-skip", 0)["config"]["options"]["train_steps"] is None

    alone = run(budget_registries, tmp_path / "alone", ["asp"])  # no budget list: the same cell as the default
    assert CellStore(tmp_path / "alone").read("tiny-net", "asp", 0)["config_hash"] == default["config_hash"]
    again = run(budget_registries, tmp_path, ["asp", "uniform-skip"], [3])
    assert sorted((k.method, k.steps or 0) for k in again.skipped) == [("asp", 3), ("dense", 0), ("uniform-skip", 0)]
    assert alone.ok


def test_the_leaderboard_groups_rows_by_budget_and_compares_with_dense_ft_at_the_same_budget(
    budget_registries, tmp_path
):
    run(budget_registries, tmp_path, ["asp", "dense-ft", "uniform-skip"], BUDGETS)
    board = load_cells(tmp_path)
    rows = list(zip(board["method"], board["train_steps"]))
    assert rows == [("dense", 0), ("uniform-skip", 0), ("asp", 2), ("dense-ft", 2), ("asp", 3), ("dense-ft", 3)]
    asp = board[board["method"] == "asp"]
    assert all(verdict.endswith(")") and "dense-ft" in verdict for verdict in asp["vs_reference"])
    # each asp row is tested against the dense-ft row of its own budget, not the other one
    for _, row in asp.iterrows():
        control = board[(board["method"] == "dense-ft") & (board["train_steps"] == row["train_steps"])]
        assert len(control) == 1


def test_cli_runs_a_budget_list(tmp_path):
    out = tmp_path / "run"
    code = main(["run", "--train-steps", "5,10", "--methods", "asp,dense-ft", "--backbones", "ddpm",
                 "--fid-samples", "4", "--sample-steps", "2", "--out", str(out), "--quiet", "--jobs", "1"])
    assert code == 0
    cells = CellStore(out).all_cells()
    trained = sorted((c["method"], c["metrics"]["train_steps"]) for c in cells if c["method"] != "dense")
    assert trained == [("asp", 5), ("asp", 10), ("dense-ft", 5), ("dense-ft", 10)]
    assert [c["method"] for c in cells].count("dense") == 1


def test_budgets_must_be_distinct(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--train-steps", "5,5"])
    assert "budgets must be distinct, got 5,5" in capsys.readouterr().err


def test_every_builtin_says_whether_it_trains_weights():
    registries = build_registries()
    trainers = {name for name in registries.methods.names() if registries.methods.get(name).trains_weights}
    assert trainers == set(registries.methods.names()) - {"dense", "uniform-skip", "dipgo"}
