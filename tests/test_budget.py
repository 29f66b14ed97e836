"""The fine-tuning budget as a grid axis: one cell per (backbone, method, seed, budget) for methods that train
weights, one cell for those that do not, and rows compared with ``dense-ft`` at their own budget."""
from __future__ import annotations

import dataclasses

import pytest

from benchmark.api import RunOptions
from benchmark.cli import main
from benchmark.grid.report import load_cells
from benchmark.grid.run import run_grid
from benchmark.grid.store import CellStore
from benchmark.plugins import build_registries
from benchmark.presets import Recipe
from methods.dense_ft import DenseFineTuned
from methods.progressive import Progressive
from test_harness import UNIT, registries  # noqa: F401 - the fixture

BUDGETS = [UNIT.train_steps, 3]  # the preset's budget (2) and another


@pytest.fixture
def budget_registries(registries):  # noqa: F811
    registries.methods.add(DenseFineTuned(), "tests")
    registries.methods.add(Progressive(), "tests")  # a staged method: its budgets train on their own
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


def test_weight_training_cells_record_the_loss_right_after_pruning(budget_registries, tmp_path):
    run(budget_registries, tmp_path, ["asp", "dense-ft", "uniform-skip"])
    store = CellStore(tmp_path)
    losses = {m: store.read("tiny-net", m, 0)["metrics"].get("loss_after_pruning") for m in ("asp", "dense-ft")}
    assert all(isinstance(v, float) and v > 0 for v in losses.values()) and losses["asp"] != losses["dense-ft"]
    assert "loss_after_pruning" not in store.read("tiny-net", "uniform-skip", 0)["metrics"]  # trains no weights
    board = load_cells(tmp_path)
    assert board.set_index("method").loc["asp", "loss_after_pruning"] == pytest.approx(losses["asp"])


def test_measuring_the_loss_after_pruning_changes_no_other_number(budget_registries, tmp_path, monkeypatch):
    from benchmark import training

    run(budget_registries, tmp_path / "probed", ["asp", "sparsedm"])
    monkeypatch.setattr(training, "probe_batch", lambda images, diffusion: None)
    run(budget_registries, tmp_path / "plain", ["asp", "sparsedm"])
    for method in ("asp", "sparsedm"):
        probed, plain = (CellStore(tmp_path / d).read("tiny-net", method, 0)["metrics"] for d in ("probed", "plain"))
        assert "loss_after_pruning" in probed and "loss_after_pruning" not in plain
        assert probed["fid"] == plain["fid"] and probed["sparsity"] == plain["sparsity"]


def test_the_probe_batch_is_fixed_by_the_data_set():
    import torch

    from benchmark.diffusion import Diffusion
    from benchmark.training import PROBE_IMAGES, probe_batch

    images = torch.randint(0, 256, (100, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    diffusion = Diffusion((1, 8, 8), 4)
    first, again = probe_batch(images, diffusion), probe_batch(images, diffusion)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    x_t, t, noise = first
    assert x_t.shape == (PROBE_IMAGES, 1, 8, 8) and t.min() == 0 and t.max() == diffusion.num_train_timesteps - 1


def test_scratch_trains_the_pruned_architecture_from_a_random_init(budget_registries, tmp_path):
    from methods.scratch import Scratch
    from benchmark.grid.plan import expand_methods

    budget_registries.methods.add(Scratch(), "tests")
    assert "scratch" not in expand_methods(budget_registries.methods, "all")  # a control: run when named
    run(budget_registries, tmp_path, ["l1-channel", "scratch"])
    store = CellStore(tmp_path)
    pruned, scratch = (store.read("tiny-net", m, 0) for m in ("l1-channel", "scratch"))
    assert scratch["status"] == "ok" and scratch["info"]["scratch"]["initialisation"].startswith("random")
    assert scratch["metrics"]["params_m"] == pruned["metrics"]["params_m"]  # the same architecture
    assert scratch["metrics"]["macs_g"] == pruned["metrics"]["macs_g"]
    # the same architecture but not the same weights: a random start is further from the data
    assert scratch["metrics"]["loss_after_pruning"] != pruned["metrics"]["loss_after_pruning"]


def test_reinitialise_as_built_slices_a_fresh_model():
    import torch

    from benchmark.structural import reinitialise_as_built
    from test_harness import TinyBackbone, TinyNet

    backbone = TinyBackbone()
    narrow = TinyNet(UNIT.channels, width=4)
    reinitialise_as_built(narrow, backbone, UNIT, seed=3)
    torch.manual_seed(3)
    fresh = backbone.build(UNIT)
    assert torch.equal(narrow.stem.weight, fresh.stem.weight[:4])
    assert torch.equal(narrow.head.weight, fresh.head.weight[:, :4])


def _seeds(method: str, steps: int, fids: list[float], loss: float) -> list[dict]:
    return [{"backbone": "b", "method": method, "status": "ok", "seed": s, "train_steps": steps, "fid": f,
             "fid_sd": 0.5, "loss_after_pruning": loss} for s, f in enumerate(fids)]


def test_ranks_share_a_place_where_rows_cannot_be_told_apart():
    import pandas as pd

    from benchmark.grid import budgets

    cells = pd.DataFrame(_seeds("a", 10, [10.0, 10.2, 9.9], 1.0) + _seeds("b", 10, [10.1, 9.8, 10.3], 2.0)
                         + _seeds("c", 10, [20.0, 20.5, 19.7], 3.0))
    groups = {m: g for m, g in cells.groupby("method")}
    assert budgets.ranks(groups) == {"a": 1, "b": 1, "c": 3}  # a and b tie; both beat c


def test_budget_table_names_flipped_pairs_and_the_tau_against_the_largest_budget():
    import pandas as pd

    from benchmark.grid import budgets

    rows = (_seeds("a", 10, [10.0, 10.1, 9.9], 1.0) + _seeds("b", 10, [20.0, 20.1, 19.9], 2.0)
            + _seeds("c", 10, [30.0, 30.2, 29.8], 3.0)
            + _seeds("a", 100, [25.0, 25.1, 24.9], 1.0) + _seeds("b", 100, [15.0, 15.1, 14.9], 2.0)
            + _seeds("c", 100, [5.0, 5.2, 4.8], 3.0))
    entry = budgets.budget_table(pd.DataFrame(rows))["b"]
    assert entry["budgets"] == [10, 100]
    assert entry["ranks"][10] == {"a": 1, "b": 2, "c": 3} and entry["ranks"][100] == {"a": 3, "b": 2, "c": 1}
    assert entry["tau"][10] == (pytest.approx(-1.0), 3)
    assert sorted(entry["swaps"][10]) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert entry["loss_vs_fid"][10] == (pytest.approx(1.0), 3) and entry["loss_vs_fid"][100][0] == pytest.approx(-1.0)
    assert entry["cheapest"] == 100 and entry["dense"] is None
    assert entry["change"]["a"].verdict == "higher" and entry["change"]["c"].difference == pytest.approx(-25.0)
    text = budgets.render({"b": entry})
    assert "| a | 10.00 ± 1.24 (1; n=3) | 25.00 ± 1.24 (3; n=3) | +15.00 (p " in text
    assert "10 steps vs 100: tau -1.00 over 3 rows; same ranks: no" in text
    assert "cheapest budget ranking the rows as 100 steps does: 100 steps" in text
    page = budgets.render_html({"b": entry})  # the same sections on the leaderboard page
    assert '<tr><td class="text">a</td><td>10.00 ± 1.24 (1; n=3)</td><td>25.00 ± 1.24 (3; n=3)</td>' in page
    assert "<li>10 steps vs 100: tau -1.00 over 3 rows; same ranks: no;" in page and budgets.render_html({}) == ""


def test_loss_after_pruning_is_correlated_with_fid_within_rows_whose_seeds_prune_differently():
    import pandas as pd

    from benchmark.grid import budgets

    rows = _seeds("fixed", 10, [10.0, 12.0, 11.0], 1.0) + _seeds("fixed", 100, [9.0, 8.0, 7.0], 1.0)
    rows[2]["loss_after_pruning"] = 1.0000001  # float noise (another thread count) is not another pruned model
    for steps, fids in ((10, [30.0, 20.0, 25.0]), (100, [5.0, 7.0, 6.0])):
        rows += [{**row, "loss_after_pruning": loss}  # seed 0 prunes best: loss 0.1 < 0.3 < 0.2
                 for row, loss in zip(_seeds("varies", steps, fids, 0.0), [0.1, 0.3, 0.2])]
    entry = budgets.budget_table(pd.DataFrame(rows))["b"]
    assert entry["loss_vs_fid_within"][10] == {"varies": pytest.approx(-1.0)}  # one loss for every seed: no entry
    assert entry["loss_vs_fid_within"][100] == {"varies": pytest.approx(1.0)}
    text = budgets.render({"b": entry})
    assert "- loss after pruning vs FID within rows at 100 steps, over seeds: varies 1.00" in text


def test_tau_is_undefined_where_every_row_shares_one_rank():
    import pandas as pd

    from benchmark.grid import budgets

    rows = (_seeds("a", 10, [10.0, 10.1, 9.9], 1.0) + _seeds("b", 10, [20.0, 20.1, 19.9], 2.0)
            + _seeds("c", 10, [30.0, 30.2, 29.8], 3.0))
    rows += [{**row, "train_steps": 100, "fid_sd": 20.0} for row in rows]  # at 100 steps no row tells from another
    entry = budgets.budget_table(pd.DataFrame(rows))["b"]
    assert set(entry["ranks"][100].values()) == {1}
    assert "10 steps vs 100: tau undefined over 3 rows (one budget ranks them all alike)" in budgets.render({"b": entry})


def test_rows_missing_at_a_budget_are_left_out_of_the_comparisons_between_budgets():
    import pandas as pd

    from benchmark.grid import budgets

    rows = (_seeds("a", 10, [10.0, 10.1, 9.9], 1.0) + _seeds("b", 10, [20.0, 20.1, 19.9], 2.0)
            + _seeds("c", 10, [30.0, 30.2, 29.8], 3.0)
            + _seeds("a", 100, [5.0, 5.1, 4.9], 1.0) + _seeds("b", 100, [15.0, 15.1, 14.9], 2.0))
    dense = [{"backbone": "b", "method": "dense", "status": "ok", "seed": s, "train_steps": 0, "fid": f, "fid_sd": 0.5,
              "loss_after_pruning": None} for s, f in enumerate([4.0, 4.1, 3.9])]
    entry = budgets.budget_table(pd.DataFrame(rows + dense))["b"]  # c has not reached 100 steps yet
    assert entry["same"][10] and entry["tau"][10][1] == 2 and entry["swaps"][10] == []
    assert "10 steps vs 100: no tau over 2 rows; same ranks: yes" in budgets.render({"b": entry})
    assert entry["cheapest"] == 10 and "c" not in entry["change"]  # the rows both budgets have rank alike
    assert entry["dense"] == (pytest.approx(4.0), pytest.approx(1.24, abs=0.01), 3)
    text = budgets.render({"b": entry})
    assert "| c | 30.00 ± 1.24 (3; n=3) |  |  |" in text and "same ranks: yes" in text
    assert "dense reference, no fine-tuning: 4.00 ± 1.24 (n=3)" in text
    assert "cheapest budget ranking the rows as 100 steps does: 10 steps" in text


def test_a_run_with_several_budgets_publishes_curves_and_rankings(budget_registries, tmp_path):
    run(budget_registries, tmp_path, ["asp", "dense-ft"], BUDGETS)
    assert (tmp_path / "budget_curves.png").stat().st_size > 0
    text = (tmp_path / "budgets.md").read_text()
    assert "## tiny-net" in text and "| 2 steps | 3 steps |" in text
    page = (tmp_path / "leaderboard.html").read_text()
    assert "<h3>tiny-net</h3>" in page and "<th>2 steps</th><th>3 steps</th>" in page
    single = tmp_path / "single"
    run(budget_registries, single, ["asp"])
    assert not (single / "budgets.md").exists() and not (single / "budget_curves.png").exists()
    assert "Rankings per fine-tuning budget" not in (single / "leaderboard.html").read_text()


def test_within_a_seed_larger_budgets_start_first(budget_registries):
    from benchmark.grid.plan import parse_request, plan_grid

    chains = parse_request(budget_registries, ["progressive", "uniform-skip"], ["tiny-net"], [0, 1])
    cells = plan_grid(budget_registries, chains, ["tiny-net"], UNIT, RunOptions(), [0, 1], "cpu",
                      {"tiny-net": "x"}, "w", [2, 30])
    order = [(c.seed, c.method, c.steps) for c in cells]
    assert order[:4] == [(0, "progressive", 30), (0, "dense", None), (0, "progressive", None), (0, "uniform-skip", None)]
    assert [seed for seed, _, _ in order] == [0] * 4 + [1] * 4  # seeds stay one after another
    assert all(c.work_group is None for c in cells)  # progressive is staged: each budget trains on its own


def test_the_budgets_of_a_cell_that_can_continue_run_together_smallest_first(budget_registries):
    from benchmark.grid.plan import parse_request, plan_grid

    def plan(methods, budgets, preset=UNIT):
        chains = parse_request(budget_registries, methods, ["tiny-net"], [0])
        return plan_grid(budget_registries, chains, ["tiny-net"], preset, RunOptions(), [0], "cpu",
                         {"tiny-net": "x"}, "w", budgets)

    cells = plan(["progressive", "asp", "asp@1:4", "sparsedm+dipgo"], [30, 2, 10])
    assert [(c.method, c.steps) for c in cells] == [
        ("progressive", 30), ("asp", None), ("asp", 10), ("asp", 30), ("asp@1:4", None), ("asp@1:4", 10),
        ("asp@1:4", 30), ("sparsedm+dipgo", 30), ("progressive", 10), ("sparsedm+dipgo", 10), ("dense", None),
        ("progressive", None), ("sparsedm+dipgo", None),
    ]
    asp = [c for c in cells if c.method == "asp"]
    assert len({c.work_group for c in asp}) == 1 and asp[0].continuation == asp[0].work_group[1]
    assert asp[0].continuation != next(c for c in cells if c.method == "asp@1:4").continuation
    assert all(c.continuation is None for c in cells if c.method in ("progressive", "sparsedm+dipgo"))  # staged; a chain
    assert all(c.continuation is None for c in plan(["asp"], [2]))  # one budget: nothing to continue
    cosine = dataclasses.replace(UNIT, finetune=Recipe(lr=1e-3, decay="cosine"))
    assert all(c.continuation is None for c in plan(["asp"], [2, 10], cosine))  # the rate depends on the budget


def test_a_larger_budget_continues_a_smaller_ones_training_and_ends_as_a_run_of_its_own(budget_registries, tmp_path):
    methods = ["asp", "sparsedm", "l1-channel", "dense-ft"]
    run(budget_registries, tmp_path / "together", methods, [2, 5])
    together = CellStore(tmp_path / "together")
    for method in methods:
        run(budget_registries, tmp_path / method, [method], [5])  # a budget of its own: nothing to continue
        continued = together.read("tiny-net", method, 0, 5)
        alone = CellStore(tmp_path / method).read("tiny-net", method, 0, 5)
        assert continued["info"]["continued_from_step"] == 2 and "continued_from_step" not in alone["info"]
        assert continued["config_hash"] == alone["config_hash"] and continued["mask_digest"] == alone["mask_digest"]
        for metric in ("fid", "fid_to_dense", "loss_after_pruning", "train_steps"):
            assert continued["metrics"][metric] == pytest.approx(alone["metrics"][metric], rel=1e-9, abs=1e-12)


def test_a_later_invocation_continues_the_saved_training_of_a_smaller_budget(budget_registries, tmp_path):
    from benchmark import training

    run(budget_registries, tmp_path / "later", ["asp"], [2, 3])
    store = CellStore(tmp_path / "later")
    assert len(list(store.continuations_dir.glob("*.pt"))) == 1  # one per cell and seed, at its last budget
    training._CONTINUATIONS.clear()  # a new process
    run(budget_registries, tmp_path / "later", ["asp"], [2, 5])  # the grid grows by a larger budget
    run(budget_registries, tmp_path / "alone", ["asp"], [5])
    later, alone = store.read("tiny-net", "asp", 0, 5), CellStore(tmp_path / "alone").read("tiny-net", "asp", 0, 5)
    assert later["info"]["continued_from_step"] == 3 and "continued_from_step" not in alone["info"]
    assert later["config_hash"] == alone["config_hash"] and later["mask_digest"] == alone["mask_digest"]
    for metric in ("fid", "fid_to_dense", "loss_after_pruning"):
        assert later["metrics"][metric] == pytest.approx(alone["metrics"][metric], rel=1e-9, abs=1e-12)
