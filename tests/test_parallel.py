"""Cells in spawned worker processes (``--jobs N``), claims taken as cells start, leases and quiet timing.

The fake pipeline of test_harness (a tiny net, pixels as FID features) runs in real worker processes
and in real concurrent invocations, each a spawned process of its own.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmark import checkpoints
from benchmark.api import Backbone, Method, MethodContext, Pruned, RunOptions
from benchmark.grid import quiet, store as results
from benchmark.grid.execute import LocalExecutor, make_executor
from benchmark.grid.run import run_grid
from benchmark.grid.store import CellStore
from benchmark.grid.workers import ProcessExecutor
from benchmark.metrics import fid
from benchmark.plugins import Registries
from benchmark.registry import Registry
from methods.asp import ASP
from methods.dense import Dense
from methods.uniform_skip import UniformSkip
from test_harness import UNIT, TinyBackbone, fake_method, fake_reference_features
from test_ray import TIMED, PixelScorer

MARKER = "DIFFPRUNE_TEST_MARKER"
LOG = "DIFFPRUNE_TEST_LOG"


class DieOnce(Method):
    """SIGKILLs the process computing it the first time (a marker file remembers), then keeps the model."""

    name, version = "die", "1"

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        marker = Path(os.environ[MARKER])
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return state


class Slow(Method):
    """Keeps the model after a pause, so that concurrent invocations overlap; logs who computed it."""

    name, version = "slow", "1"

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        time.sleep(1.0)
        with open(os.environ[LOG], "a") as log:
            log.write(f"{os.getpid()} {self.name} {ctx.seed}\n")
        return state


class AlsoSlow(Slow):
    name = "also-slow"


_SEARCHED: set[int] = set()  # the seeds whose search this process ran


class SharedSearch(Method):
    """Operating points that share a search, as DiP-GO's share its pruner: logs who computed each point and
    whether it had to search."""

    name, version, trains_weights, points_share_work, knob = "shared-search", "1", False, True, "dipgo_target"

    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        searched = ctx.seed not in _SEARCHED
        _SEARCHED.add(ctx.seed)
        time.sleep(0.5)
        with open(os.environ[LOG], "a") as log:
            log.write(f"{os.getpid()} {ctx.options.dipgo_target} {searched}\n")
        return state


def make_registries(checkpoint: Path) -> Registries:
    """The test grid's registries, with the fakes installed in this process (also used by spawned drivers)."""
    methods: Registry[Method] = Registry("method", Method)
    for method in (Dense(), ASP(), UniformSkip(), DieOnce(), Slow(), AlsoSlow(), SharedSearch()):
        methods.add(method, "tests")
    backbones: Registry[Backbone] = Registry("backbone", Backbone)
    backbones.add(TinyBackbone(), "tests")
    checkpoints.dense_checkpoint = lambda *args, **kwargs: checkpoint
    fid.FIDScorer = PixelScorer
    fid.reference_features = fake_reference_features
    fid.ensure_weights_available = lambda: "fake-weights"
    return Registries(methods, backbones, {"tests": "builtin"})


@pytest.fixture
def registries(monkeypatch, tmp_path_factory):
    path = tmp_path_factory.mktemp("dense") / "tiny-net.pt"
    torch.manual_seed(1234)
    torch.save(TinyBackbone().build(UNIT).state_dict(), path)
    for module, name in ((checkpoints, "dense_checkpoint"), (fid, "FIDScorer"), (fid, "reference_features"),
                         (fid, "ensure_weights_available")):
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    monkeypatch.setenv(MARKER, str(tmp_path_factory.mktemp("marker") / "died"))
    return make_registries(path)


def run(registries, out, methods, executor, seeds=(0, 1)):
    return run_grid(registries, methods, ["tiny-net"], UNIT, RunOptions(), list(seeds), "cpu", out, progress=False,
                    executor=executor)


def test_worker_processes_give_the_cells_of_a_sequential_run(registries, tmp_path):
    methods = ["asp", "uniform-skip"]
    serial = run(registries, tmp_path / "serial", methods, LocalExecutor())
    parallel = run(registries, tmp_path / "parallel", methods, ProcessExecutor(2))
    assert sorted(serial.ok) == sorted(parallel.ok) and len(serial.ok) == 6 and not parallel.failed
    for backbone, method, seed, _ in serial.ok:
        a, b = (CellStore(tmp_path / d).read(backbone, method, seed) for d in ("serial", "parallel"))
        assert a["config_hash"] == b["config_hash"] and b["threads"] == 1
        for key in a["metrics"].keys() - TIMED:
            mine, theirs = a["metrics"][key], b["metrics"][key]
            assert theirs == (pytest.approx(mine, rel=1e-4, abs=1e-9) if isinstance(mine, float) else mine), key
    assert not list((tmp_path / "parallel" / "cells").glob(".*.claim"))
    assert len(list((tmp_path / "parallel" / "features").glob("*.npy"))) == 2  # one per seed, for later runs


def test_operating_points_that_share_a_search_run_on_one_worker_which_searches_once(registries, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv(LOG, str(tmp_path / "computed.log"))
    points = ["shared-search@0.3", "shared-search@0.6", "asp", "shared-search@0.7"]
    summary = run(registries, tmp_path / "run", points, ProcessExecutor(2), seeds=[0])
    assert not summary.failed
    computed = [line.split() for line in (tmp_path / "computed.log").read_text().splitlines()]
    assert sorted(target for _, target, _ in computed) == ["0.3", "0.6", "0.7"]
    assert len({pid for pid, _, _ in computed}) == 1  # the other worker took asp and then waited
    assert [searched for _, _, searched in computed] == ["True", "False", "False"]


def test_a_killed_worker_fails_its_cell_only_and_a_rerun_computes_only_it(registries, tmp_path):
    first = run(registries, tmp_path, ["die", "asp"], ProcessExecutor(2))
    (_, method, seed, _), = first.failed
    assert method == "die" and len(first.ok) == 5
    cell = CellStore(tmp_path).read("tiny-net", "die", seed)
    assert cell["error"].startswith("WorkerDied: the worker process computing this cell ended (signal SIGKILL)")
    again = run(registries, tmp_path, ["die", "asp"], ProcessExecutor(2))
    assert again.ok == [("tiny-net", "die", seed, None)] and len(again.skipped) == 5


def test_plugins_that_cannot_reach_a_worker_get_a_clear_error(registries, tmp_path):
    from benchmark.errors import BenchmarkError

    registries.methods.add(fake_method("local-only", lambda ctx, state: state), "tests")  # a class made at run time
    with pytest.raises(BenchmarkError, match=r"cannot hand this run's plugins to worker processes .*; use --jobs 1"):
        run(registries, tmp_path, ["local-only"], ProcessExecutor(2), seeds=[0])


def _invoke(checkpoint: str, out: str, env: dict[str, str]) -> None:
    """One invocation of the grid, in a process of its own."""
    os.environ.update(env)
    torch.set_num_threads(1)
    run(make_registries(Path(checkpoint)), Path(out), ["slow", "also-slow"], LocalExecutor(), seeds=(0, 1, 2))


def test_two_invocations_on_one_directory_split_the_grid_and_compute_no_cell_twice(registries, tmp_path):
    log = tmp_path / "computed.log"
    env = {MARKER: os.environ[MARKER], LOG: str(log), "DIFFPRUNE_BENCH_QUIET_DIR": str(quiet.registry_dir())}
    spawn = multiprocessing.get_context("spawn")
    invocations = [spawn.Process(target=_invoke, args=(str(checkpoints.dense_checkpoint()), str(tmp_path / "run"), env))
                   for _ in range(2)]
    for process in invocations:
        process.start()
    for process in invocations:
        process.join(300)
        assert process.exitcode == 0
    cells = CellStore(tmp_path / "run").all_cells()
    assert len(cells) == 9 and all(c["status"] == "ok" for c in cells)
    computed = [line.split() for line in log.read_text().splitlines()]
    assert sorted((method, seed) for _, method, seed in computed) == sorted(
        (method, str(seed)) for method in ("slow", "also-slow") for seed in range(3))  # each cell once
    assert {pid for pid, _, _ in computed} == {str(p.pid) for p in invocations}  # both computed cells
    assert not list((tmp_path / "run" / "cells").glob(".*.claim"))


def test_an_expired_lease_is_taken_over_from_another_host(tmp_path, monkeypatch):
    store = CellStore(tmp_path)
    store.ensure_writable()
    claim = store.cells_dir / ".uvit__asp__seed0.claim"
    claim.write_text("another-host 1")
    assert store.claim("uvit", "asp", 0) == "another-host 1"  # its lease runs
    old = time.time() - results.LEASE_SECONDS - 1
    os.utime(claim, (old, old))  # not renewed for a lease: its host is gone
    assert store.claim("uvit", "asp", 0) is None and claim.read_text().endswith(str(os.getpid()))
    os.utime(claim, (old, old))
    store.renew()
    assert time.time() - claim.stat().st_mtime < 60  # the holder renews its lease
    store.release_all()
    assert not claim.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pausing needs /proc")
def test_quiet_timing_pauses_the_other_workers_of_the_machine():
    code = "from benchmark.grid import quiet; import time, sys\nwith quiet.worker():\n print(flush=True); time.sleep(60)"
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        other.stdout.readline()  # it has registered
        state = lambda: Path(f"/proc/{other.pid}/stat").read_text().rpartition(")")[2].split()[0]  # noqa: E731
        with quiet.quiet():
            assert state() == "T"
        assert state() != "T"
    finally:
        other.kill()
        other.wait()


def test_jobs_are_checked_and_default_to_one_worker_per_core():
    from benchmark.errors import BenchmarkError

    assert isinstance(make_executor("local", jobs=1), LocalExecutor)
    executor = make_executor("local", jobs=3)
    assert isinstance(executor, ProcessExecutor) and executor.jobs == 3
    cores = len(os.sched_getaffinity(0))
    assert isinstance(make_executor("local"), LocalExecutor if cores == 1 else ProcessExecutor)
    assert isinstance(make_executor("local", device="cuda"), LocalExecutor)  # one GPU
    with pytest.raises(BenchmarkError, match="--jobs 0 is not possible: use 1 or more worker processes"):
        make_executor("local", jobs=0)


def test_sigterm_stops_a_run_as_ctrl_c_does_keeping_finished_cells_and_no_claims(registries, tmp_path):
    env = {MARKER: os.environ[MARKER], LOG: str(tmp_path / "computed.log"),
           "DIFFPRUNE_BENCH_QUIET_DIR": str(quiet.registry_dir())}
    process = multiprocessing.get_context("spawn").Process(
        target=_invoke, args=(str(checkpoints.dense_checkpoint()), str(tmp_path / "run"), env))
    process.start()
    cells = tmp_path / "run" / "cells"
    deadline = time.monotonic() + 120
    while not list(cells.glob("*.json")) and time.monotonic() < deadline:  # wait for a finished cell
        time.sleep(0.1)
    process.terminate()  # SIGTERM
    process.join(60)
    assert process.exitcode not in (0, None)
    kept = CellStore(tmp_path / "run").all_cells()
    assert kept and all(c["status"] == "ok" for c in kept)
    assert not list(cells.glob(".*.claim"))  # released on the way out


def test_dipgo_points_of_one_model_and_seed_form_one_work_group():
    from benchmark.grid.plan import work_group
    from benchmark.plugins import build_registries

    registries = build_registries()
    group = lambda *chain, seed=0, steps=None: work_group(registries, "ddpm", chain, seed, steps)  # noqa: E731
    assert group("dipgo@0.3") == group("dipgo") == group("dipgo@0.7") != group("dipgo", seed=1)
    assert group("sparsedm", "dipgo@0.3") == group("sparsedm", "dipgo") != group("dipgo")
    assert group("sparsedm", "dipgo", steps=1000) != group("sparsedm", "dipgo")
    assert group("asp") is None and group("dipgo", "asp") is None


def test_a_work_group_that_has_begun_goes_on_before_other_cells():
    from benchmark.grid.execute import CellQueue
    from benchmark.grid.plan import CellSpec

    def cell(method, seed, group=None):
        return CellSpec("ddpm", (method,), seed, {}, None, group)

    dense0, dense1 = cell("dense", 0), cell("dense", 1)
    first, second = cell("asp", 1, ("g",)), cell("asp@1:4", 1, ("g",))
    others = [cell("ste", 1), cell("ste@1:4", 1)]
    queue = CellQueue([dense0, dense1, first, *others, second], lambda spec: spec)
    assert [queue.next(), queue.next()] == [dense0, dense1]
    queue.done(dense1)
    assert queue.next() == first
    assert queue.next() == others[0]  # the group's second cell waits while its first computes
    queue.done(first)
    assert queue.next() == second  # before others[1], which comes first in plan order
    assert queue.next() == others[1]
