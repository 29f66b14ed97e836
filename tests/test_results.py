"""Cell files (atomic, versioned, hash-keyed) and the leaderboards generated from them."""
from __future__ import annotations

import csv
import io
import json
import os

import pytest

from benchmark.grid import store as results
from benchmark.api import BenchmarkError
from benchmark.grid.report import COLUMNS, load_cells, publish, render
from benchmark.grid.store import SCHEMA_VERSION, CellStore, config_hash

NA = "n/a (needs CUDA sm80+)"
CONFIG = {"preset": {"name": "tiny", "lr": 2e-4}, "options": {"pattern": "2:4"}, "seed": 0}


def make_cell(backbone: str, method: str, status: str = "ok", fid: float = 20.0, seed: int = 0, **metrics) -> dict:
    cell = {
        "schema": SCHEMA_VERSION,
        "backbone": backbone,
        "method": method,
        "status": status,
        "error": None,
        "traceback": None,
        "config": CONFIG,
        "config_hash": config_hash(CONFIG),
        "seed": seed,
        "metrics": {},
    }
    if status == "ok":
        cell["metrics"] = {
            "fid": fid, "fid_sd": 1.0, "fid_to_dense": 0.0 if method == "dense" else 4.0,
            "fid_to_dense_sd": 0.0 if method == "dense" else 0.5, "fid_samples": 256,
            "params_m": 0.4, "macs_g": 0.05, "sparse_macs_g": 0.03,
            "latency_mode": NA, "dense_latency_ms": NA, "latency_ms": NA, "speedup": NA,
            "sparsity": 0.5, "train_steps": 300, "sample_steps": 20, "sampler": "ddim (eta=0)", **metrics,
        }
    else:
        cell["error"] = "MaskValidationError: attn.qkv: 3 group(s) of 4 do not keep exactly 2"
        cell["traceback"] = "Traceback (most recent call last):\n  ...\n"
    return cell


@pytest.fixture
def store(tmp_path):
    return CellStore(tmp_path / "run")


class TestConfigHash:
    def test_stable_under_key_order(self):
        reordered = {"seed": 0, "options": {"pattern": "2:4"}, "preset": {"lr": 2e-4, "name": "tiny"}}
        assert config_hash(reordered) == config_hash(CONFIG)
        assert len(config_hash(CONFIG)) == 16 and int(config_hash(CONFIG), 16) >= 0

    def test_sensitive_to_nested_values(self):
        changed = {**CONFIG, "preset": {"name": "tiny", "lr": 1e-4}}
        assert config_hash(changed) != config_hash(CONFIG)
        assert config_hash({**CONFIG, "seed": 1}) != config_hash(CONFIG)


class TestCellStore:
    def test_write_then_read(self, store):
        cell = make_cell("uvit", "sparsedm+dipgo")
        path = store.write(cell)
        assert path.name == "uvit__sparsedm+dipgo__seed0.json"
        assert store.read("uvit", "sparsedm+dipgo", 0) == cell
        assert store.read("uvit", "asp", 0) is None

    def test_write_is_atomic(self, store, monkeypatch):
        store.write(make_cell("uvit", "asp", fid=1.0))
        synced = []
        monkeypatch.setattr(results.os, "fsync", lambda fd: synced.append(fd))
        store.write(make_cell("uvit", "asp", fid=2.0))
        assert synced, "the new file is flushed to disk before it replaces the old one"

        def crash_before_the_data_is_safe(fd):
            raise OSError("disk full")

        monkeypatch.setattr(results.os, "fsync", crash_before_the_data_is_safe)
        with pytest.raises(OSError, match="disk full"):
            store.write(make_cell("uvit", "asp", fid=3.0))
        assert store.read("uvit", "asp", 0)["metrics"]["fid"] == 2.0
        assert [p.name for p in store.cells_dir.iterdir()] == ["uvit__asp__seed0.json"]  # no temp file left

    def test_cells_and_their_files_get_the_umask_permissions(self, store):
        import os
        import stat

        previous = os.umask(0o022)
        try:
            path = store.write(make_cell("uvit", "asp"), {"samples/uvit__asp__seed0.png": b"png"})
        finally:
            os.umask(previous)
        for written in (path, store.out_dir / "samples" / "uvit__asp__seed0.png"):
            assert stat.S_IMODE(written.stat().st_mode) == 0o644  # readable by group and others

    def test_a_cell_is_claimed_by_one_process_at_a_time(self, store, monkeypatch):
        store.ensure_writable()
        assert store.claim("uvit", "asp", 0) is None  # this process holds it now
        holder = store.claim("uvit", "asp", 0)
        assert holder == f"{results.platform.node()} {results.os.getpid()}"
        store.release("uvit", "asp", 0)
        assert store.claim("uvit", "asp", 0) is None
        store.release("uvit", "asp", 0)
        claim = store.cells_dir / ".uvit__asp__seed0.claim"
        claim.write_text(f"{results.platform.node()} 999999999")  # a process that is gone
        assert store.claim("uvit", "asp", 0) is None and claim.read_text().endswith(str(results.os.getpid()))
        claim.write_text("another-host 1")  # cannot be checked from here: honoured
        assert store.claim("uvit", "asp", 0) == "another-host 1"
        assert [c["method"] for c in store.all_cells()] == []  # claims are not cells

    def test_a_process_killed_while_claiming_leaves_no_claim(self, store, monkeypatch):
        """A claim file names its holder from the instant it exists (an empty one could never be taken over)."""
        store.ensure_writable()

        def killed(*args):
            raise KeyboardInterrupt  # stands for SIGKILL at the last moment before the claim appears

        with monkeypatch.context() as m:
            m.setattr(results.os, "link", killed)
            with pytest.raises(KeyboardInterrupt):
                store.claim("uvit", "asp", 0)
        assert not list(store.cells_dir.glob(".uvit__asp__seed0.claim*"))
        assert store.claim("uvit", "asp", 0) is None

    def test_claims_stay_exclusive_where_the_filesystem_has_no_hard_links(self, store, monkeypatch):
        store.ensure_writable()

        def unsupported(*args):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(results.os, "link", unsupported)
        assert store.claim("uvit", "asp", 0) is None
        assert store.claim("uvit", "asp", 0) == f"{results.platform.node()} {results.os.getpid()}"
        assert [p.name for p in store.cells_dir.iterdir() if "asp" in p.name] == [".uvit__asp__seed0.claim"]

    def test_a_cell_is_written_after_its_files(self, store):
        cell = {**make_cell("uvit", "l1-channel", fid=2.0), "pruned_model": "models/uvit__l1-channel__seed0.pt"}
        store.write(cell, {"models/uvit__l1-channel__seed0.pt": b"weights", "samples/uvit__l1-channel__seed0.png": b"png"})
        assert (store.out_dir / cell["pruned_model"]).read_bytes() == b"weights"
        assert (store.out_dir / "samples" / "uvit__l1-channel__seed0.png").read_bytes() == b"png"
        assert store.read("uvit", "l1-channel", 0) == cell

    def test_truncated_file_warns_and_is_recomputed(self, store):
        path = store.write(make_cell("uvit", "asp"))
        path.write_text(path.read_text()[:40])
        with pytest.warns(UserWarning, match="recomputed"):
            assert store.read("uvit", "asp", 0) is None
        with pytest.warns(UserWarning):
            assert not store.is_complete("uvit", "asp", 0, config_hash(CONFIG))
        with pytest.warns(UserWarning):
            assert store.all_cells() == []

    def test_only_ok_cells_with_matching_hash_are_complete(self, store):
        store.write(make_cell("uvit", "asp"))
        store.write(make_cell("uvit", "ste", status="failed"))
        assert store.is_complete("uvit", "asp", 0, config_hash(CONFIG))
        assert not store.is_complete("uvit", "asp", 0, config_hash({**CONFIG, "seed": 1}))
        assert not store.is_complete("uvit", "ste", 0, config_hash(CONFIG))
        assert not store.is_complete("ddpm", "asp", 0, config_hash(CONFIG))

    def test_file_names_are_safe_and_distinct(self, store):
        pairs = [("a__b", "c"), ("a", "b__c"), ("net/v2", "x y"), ("uvit", "sparsedm+dipgo")]
        paths = [store.path(*pair, 0) for pair in pairs]
        assert len(set(paths)) == len(pairs)
        assert all(p.parent == store.cells_dir and "/" not in p.name and " " not in p.name for p in paths)
        for pair in pairs:
            store.write(make_cell(*pair))
        assert {(c["backbone"], c["method"]) for c in store.all_cells()} == set(pairs)

    def test_unwritable_out_dir(self, tmp_path):
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        with pytest.raises(BenchmarkError, match=str(blocker / "run")):
            CellStore(blocker / "run").write(make_cell("uvit", "asp"))


@pytest.fixture
def run_dir(store):
    older = make_cell("uvit", "asp", fid=25.0)
    del older["metrics"]["fid_to_dense"]  # a cell written before that column existed
    store.write(older)
    store.write(make_cell("uvit", "dense", fid=18.0, dense_latency_ms=2.0, latency_ms=2.1, speedup=0.95, sparsity=0.0, train_steps=0))
    store.write(make_cell("uvit", "ste", status="failed"))
    store.write(make_cell("ddpm", "uniform-skip", fid=30.0, dense_latency_ms=2.0, latency_ms=1.2, speedup=1.6, sparsity=0.0,
                          train_steps=0))
    store.write(make_cell("ddpm", "dense", fid=22.0, train_steps=0))
    return store.out_dir


class TestLeaderboard:
    def test_rows_grouped_dense_first_failed_last(self, run_dir):
        df = load_cells(run_dir)
        assert list(df.columns) == COLUMNS
        assert list(zip(df["backbone"], df["method"])) == [
            ("ddpm", "dense"), ("ddpm", "uniform-skip"), ("uvit", "dense"), ("uvit", "asp"), ("uvit", "ste"),
        ]
        failed = df.iloc[-1]
        assert failed["status"] == "failed" and failed["error"].startswith("MaskValidationError")

    def test_markdown(self, run_dir):
        text = render(load_cells(run_dir), "md")
        header, rule, *rows = [line for line in text.splitlines() if line.startswith("|")]
        columns = [c.strip() for c in header.strip("|").split("|")]
        assert columns[:14] == [
            "backbone", "method", "status", "seeds", "fid@256 ↓", "vs_reference", "fid_to_dense@256 ↓",
            "params_m ↓", "macs_g ↓", "sparse_macs_g ↓", "dense_latency_ms", "latency_ms ↓", "speedup ↑",
            "latency_mode",
        ]
        assert columns[-1] == "error" and "fid_samples" not in columns  # the sample count is in the FID header
        assert not any(c.endswith(("_low", "_high", "_std")) for c in columns)  # intervals are shown as ±
        cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
        assert [row[:2] for row in cells] == [
            ["ddpm", "dense"], ["", "uniform-skip"], ["uvit", "dense"], ["", "asp"], ["", "ste"],
        ]
        assert cells[0][4:7] == ["22.00 ± 1.96", "reference", "0.00 ± 0.00"]
        assert cells[1][6] == "4.00 ± 0.98" and cells[1][12] == "1.60"
        assert cells[1][5].startswith("▲ higher than dense (p=")  # 30 ± 1 against 22 ± 1
        assert cells[3][6] == "" and cells[3][11] == NA
        assert cells[3][5] == "n/a (no dense-ft row)"  # asp trains weights: judged against dense-ft
        assert cells[4][2] == "failed" and cells[4][-1].startswith("MaskValidationError: attn.qkv")

    def test_csv(self, run_dir):
        rows = list(csv.DictReader(io.StringIO(render(load_cells(run_dir), "csv"))))
        assert list(rows[0]) == COLUMNS
        assert rows[0]["method"] == "dense" and rows[0]["train_steps"] == "0"
        assert float(rows[0]["fid_low"]) == pytest.approx(22 - 1.96, abs=0.01) and rows[0]["seeds"] == "1"
        assert rows[3]["latency_ms"] == rows[3]["latency_mode"] == NA
        assert rows[4]["status"] == "failed" and rows[4]["fid"] == ""

    def test_json(self, run_dir):
        document = json.loads(render(load_cells(run_dir), "json"))
        assert document["metadata"]["schema"] == SCHEMA_VERSION
        assert {"benchmark_version", "generated"} <= document["metadata"].keys()
        assert len(document["records"]) == 5
        assert document["records"][4]["fid"] is None and document["records"][2]["fid"] == 18.0

    def test_seeds_are_aggregated_and_compared_by_welch(self, store):
        for seed, (dense, ft, asp) in enumerate([(20.0, 20.5, 30.0), (21.0, 21.5, 31.0), (22.0, 19.0, 29.0)]):
            store.write(make_cell("uvit", "dense", fid=dense, seed=seed, train_steps=0))
            store.write(make_cell("uvit", "dense-ft", fid=ft, seed=seed))
            store.write(make_cell("uvit", "asp", fid=asp, seed=seed))
        store.write(make_cell("uvit", "asp", status="failed", seed=3))
        df = load_cells(store.out_dir).set_index("method")
        assert df.loc["dense", "seeds"] == 3 and df.loc["dense", "fid"] == pytest.approx(21.0)
        assert df.loc["dense", "fid_std"] == pytest.approx(1.0)
        half = 4.303 * 1.0 / 3**0.5  # Student's t, 2 degrees of freedom
        assert df.loc["dense", "fid_high"] - 21.0 == pytest.approx(half, rel=1e-3)
        assert df.loc["dense-ft", "vs_reference"].startswith("= tie with dense (p=")
        assert df.loc["asp"].iloc[0]["vs_reference"].startswith("▲ higher than dense-ft (p=")  # ok row first
        assert list(df.loc["asp", "status"]) == ["ok", "failed"]

    def test_publish_rewrites_the_plots_too(self, run_dir):
        assert publish(run_dir) == {fmt: run_dir / f"leaderboard.{fmt}" for fmt in ("md", "csv", "json", "html")}
        assert all((run_dir / f"pareto_fid_vs_{x}.png").stat().st_size > 0 for x in ("macs", "latency"))

    def test_empty_run_dir(self, tmp_path):
        with pytest.raises(BenchmarkError, match="no result cells"):
            publish(tmp_path)
        assert not os.listdir(tmp_path)


def test_seeds_of_an_older_method_version_are_left_out_and_named(store):
    def versioned(seed: int, version: str, fid: float, finished: str) -> dict:
        config = {**CONFIG, "seed": seed, "method_versions": {"sparsedm": version}}
        return {**make_cell("uvit", "sparsedm", fid=fid, seed=seed), "config": config,
                "config_hash": config_hash(config), "finished": finished}

    store.write(make_cell("uvit", "dense"))
    store.write(versioned(0, "2", 30.0, "2026-12-02T18:00:00"))
    store.write(versioned(1, "1", 60.0, "2026-12-02T09:00:00"))  # before the method changed
    df = load_cells(store.out_dir)
    row = df[df["method"] == "sparsedm"].iloc[0]
    assert row["seeds"] == 1 and row["fid"] == 30.0
    assert "Left out: 1 cell(s) computed with an older version" in render(df, "md")
    assert "uvit/sparsedm seed 1" in render(df, "md")


def test_seeds_of_an_older_backbone_version_are_left_out(store):
    def versioned(seed: int, backbone_version: str, finished: str) -> dict:
        config = {**CONFIG, "seed": seed, "method_versions": {"asp": "1"}, "backbone_version": backbone_version}
        return {**make_cell("uvit", "asp", seed=seed), "config": config, "config_hash": config_hash(config),
                "finished": finished}

    store.write(make_cell("uvit", "dense"))
    store.write(versioned(0, "2", "2026-12-02T18:00:00"))
    store.write(versioned(1, "1", "2026-12-02T09:00:00"))  # masked another layer set
    assert load_cells(store.out_dir).set_index("method").loc["asp", "seeds"] == 1
