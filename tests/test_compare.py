"""``compare`` and ``rerun-diff``: the analyses behind the published verdicts, as commands on any run."""
from __future__ import annotations

import pytest

from benchmark.cli import main
from benchmark.grid.store import CellStore
from test_results import make_cell

FIDS = {"sparsedm": [20.0, 21.0, 20.5], "ste": [30.0, 31.0, 30.5], "asp": [20.4, 20.9, 21.1]}


@pytest.fixture
def run_dir(tmp_path):
    store = CellStore(tmp_path / "run")
    for method, fids in FIDS.items():
        for seed, fid in enumerate(fids):
            store.write(make_cell("uvit", method, fid=fid, seed=seed))
    return store.out_dir


def budget_cell(backbone, method, fid, seed, steps, **metrics):
    """A weight-training cell at a budget; 300 is the preset's own, which a cell's ``steps`` leaves unset."""
    return {**make_cell(backbone, method, fid=fid, seed=seed, train_steps=steps, **metrics),
            "steps": None if steps == 300 else steps}


def run_main(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_two_rows_are_tested_per_backbone(run_dir, capsys):
    code, out, _ = run_main(capsys, "compare", run_dir, "sparsedm", "ste")
    assert code == 0 and "| uvit | sparsedm vs ste | -10.00 |" in out and "lower (n = 3, 3)" in out
    assert "| 0: 20.0, 1: 21.0, 2: 20.5 | 0: 30.0, 1: 31.0, 2: 30.5 |" in out  # each row's seeds, in seed order
    _, out, _ = run_main(capsys, "compare", run_dir, "sparsedm", "asp")
    assert "tie (n = 3, 3)" in out


def test_claims_test_what_the_run_has(run_dir, capsys):
    code, out, _ = run_main(capsys, "compare", run_dir, "--claims")
    assert code == 0
    assert "SparseDM transfer beats STE at 2:4: sparsedm vs ste | -10.00" in out
    assert "STE beats one-shot ASP at 2:4: ste vs asp (fid_to_dense) | +0.00" in out
    assert "dipgo" not in out.split("###")[0]  # claims whose rows the run lacks are left out


def test_with_several_budgets_rows_that_train_no_weights_serve_every_budget(tmp_path, capsys):
    store = CellStore(tmp_path / "run")
    for seed, fid in enumerate([20.0, 20.5, 21.0]):
        store.write(make_cell("ddpm", "dense", fid=fid, seed=seed, train_steps=0))
    for steps, fids in {300: [30.0, 31.0, 30.5], 3000: [20.2, 20.7, 20.9]}.items():
        for seed, fid in enumerate(fids):
            store.write(budget_cell("ddpm", "dense-ft", fid, seed, steps))
    code, out, _ = run_main(capsys, "compare", store.out_dir, "dense-ft", "dense")
    assert code == 0 and "| ddpm, 300 steps | dense-ft vs dense | +10.00 |" in out
    assert "| ddpm, 3000 steps | dense-ft vs dense | +0.10 |" in out and out.count("| ddpm") == 2


def test_equal_latency_never_pools_a_row_across_budgets(tmp_path, capsys):
    store = CellStore(tmp_path / "run")
    for seed in range(3):
        store.write(make_cell("dit", "uniform-skip", fid=35.0 + seed, seed=seed, train_steps=0, speedup=1.9))
        for steps, fid in {300: 150.0, 3000: 60.0}.items():
            store.write(budget_cell("dit", "l1-channel", fid + seed, seed, steps, speedup=1.6))
    code, out, _ = run_main(capsys, "compare", store.out_dir, "--claims")
    assert code == 0
    assert "### dit, 300 steps: operating points" in out and "### dit, 3000 steps: operating points" in out
    assert "| l1-channel | 1.60 | 30.0 | 151.0 | 3 |" in out and "| l1-channel | 1.60 | 30.0 | 61.0 | 3 |" in out
    assert "| l1-channel | 1.60 | uniform-skip | 1.90 | +25.00 |" in out  # 3000 steps: 61 against 36


def test_bad_rows_get_one_line(run_dir, capsys):
    code, _, err = run_main(capsys, "compare", run_dir, "sparsedm", "dipgo")
    assert code == 2 and "no ok row 'dipgo'" in err and "rows: asp, sparsedm, ste" in err
    code, _, err = run_main(capsys, "compare", run_dir, "sparsedm")
    assert code == 2 and "compare needs two rows or --claims, got 1 row(s)" in err


def test_rerun_diff_sets_equal_cells_side_by_side(run_dir, tmp_path, capsys):
    other = CellStore(tmp_path / "rerun")
    for method, fids in FIDS.items():
        for seed, fid in enumerate(fids):
            other.write(make_cell("uvit", method, fid=fid + (3.0 if method == "ste" and seed == 0 else 0.0), seed=seed))
    code, out, _ = run_main(capsys, "rerun-diff", run_dir, tmp_path / "rerun")
    assert code == 0 and "9 cells with equal config hashes" in out
    assert "| uvit__ste__seed0 | 30.000 | 33.000 | -3.000 |" in out
    assert "8 of 9 FIDs agree within 0.001" in out


def test_rerun_diff_any_config_pairs_cells_whose_configs_differ(run_dir, tmp_path, capsys):
    other = CellStore(tmp_path / "rerun")
    for method, fids in FIDS.items():
        for seed, fid in enumerate(fids):
            cell = make_cell("uvit", method, fid=fid, seed=seed)
            if method == "asp":
                cell = {**cell, "config_hash": "another-recipe"}
            other.write(cell)
    _, out, _ = run_main(capsys, "rerun-diff", run_dir, tmp_path / "rerun")
    assert "6 cells with equal config hashes" in out and "uvit__asp" not in out
    _, out, _ = run_main(capsys, "rerun-diff", run_dir, tmp_path / "rerun", "--any-config")
    assert "9 cells with the same name" in out and "9 of 9 FIDs agree" in out
    assert "| uvit__asp__seed0 | 20.400 | 20.400 | +0.000 | tie | n/a | n/a | differs |" in out
    assert "| uvit__ste__seed0 | 30.000 | 30.000 | +0.000 | tie | n/a | n/a | equal |" in out
