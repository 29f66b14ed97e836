"""The ray executor on a local 2-CPU Ray cluster (one per module): the same cells as the local executor,
and a worker that dies fails its own cell only, which a rerun then computes."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from benchmark import checkpoints
from benchmark.api import Backbone, Method, RunOptions
from benchmark.grid.execute import LocalExecutor, RayExecutor, make_executor, start_local_ray
from benchmark.grid.run import run_grid
from benchmark.grid.store import CellStore
from benchmark.plugins import Registries
from benchmark.registry import Registry
from methods.asp import ASP
from methods.dense import Dense
from methods.uniform_skip import UniformSkip
from benchmark.metrics import fid
from test_harness import UNIT, TinyBackbone, fake_method, fake_reference_features

ray = pytest.importorskip("ray")

TIMED = {"latency_mode", "dense_latency_ms", "latency_ms", "speedup"}
DRIVER = "DIFFPRUNE_TEST_DRIVER_PID"


class PixelScorer:
    """Raw pixels for Inception features, in the driver and (imported from here) in the Ray workers."""

    def __init__(self, device, batch_size=50, progress=True):
        self.progress = progress

    def features(self, images, progress=None):
        return images.flatten(1).double().numpy()


def die_once_in_a_worker(ctx, state):
    """SIGKILL the Ray worker running this cell, the first time only (a marker file remembers)."""
    marker = Path(os.environ["DIFFPRUNE_TEST_MARKER"])
    if str(os.getpid()) != os.environ[DRIVER] and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return state


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    marker = tmp_path_factory.mktemp("ray") / "died"
    env = {
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])]),
        "DIFFPRUNE_BENCH_DISABLE_PLUGIN_AUTOLOAD": "1",
        DRIVER: str(os.getpid()),
        "DIFFPRUNE_TEST_MARKER": str(marker),
    }
    os.environ.update({DRIVER: env[DRIVER], "DIFFPRUNE_TEST_MARKER": str(marker)})
    start_local_ray(ray, num_cpus=2, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


def test_ray_workers_run_at_the_drivers_priority(cluster):
    @ray.remote
    def niceness():
        return os.nice(0)

    assert ray.get(niceness.remote()) == os.nice(0)  # Ray's default of 15 starves them beside busy processes
    assert "RAY_worker_niceness" not in os.environ  # the driver's environment is left as it was


@pytest.fixture
def registries(monkeypatch, tmp_path_factory):
    methods: Registry[Method] = Registry("method", Method)
    for method in (Dense(), ASP(), UniformSkip(), fake_method("die", die_once_in_a_worker)):
        methods.add(method, "tests")
    backbones: Registry[Backbone] = Registry("backbone", Backbone)
    backbones.add(TinyBackbone(), "tests")
    path = tmp_path_factory.mktemp("dense") / "tiny-net.pt"
    torch.manual_seed(1234)
    torch.save(TinyBackbone().build(UNIT).state_dict(), path)
    monkeypatch.setattr(checkpoints, "dense_checkpoint", lambda *args, **kwargs: path)
    monkeypatch.setattr(fid, "FIDScorer", PixelScorer)
    monkeypatch.setattr(fid, "reference_features", fake_reference_features)
    monkeypatch.setattr(fid, "ensure_weights_available", lambda: "fake-weights")
    return Registries(methods, backbones, {"tests": "builtin"})


def run(registries, out, methods, executor):
    return run_grid(registries, methods, ["tiny-net"], UNIT, RunOptions(), [0, 1], "cpu", out, progress=False,
                    executor=executor)


def test_ray_cells_equal_local_cells(cluster, registries, tmp_path):
    methods = ["asp", "uniform-skip"]
    local = run(registries, tmp_path / "local", methods, LocalExecutor())
    remote = run(registries, tmp_path / "ray", methods, RayExecutor())
    assert sorted(local.ok) == sorted(remote.ok) and len(local.ok) == 6 and not remote.failed
    for backbone, method, seed, _ in local.ok:
        a, b = (CellStore(tmp_path / name).read(backbone, method, seed) for name in ("local", "ray"))
        assert a["config_hash"] == b["config_hash"]
        assert a["metrics"].keys() == b["metrics"].keys()
        for key in a["metrics"].keys() - TIMED:
            mine, theirs = a["metrics"][key], b["metrics"][key]
            expected = pytest.approx(mine, rel=1e-4, abs=1e-9) if isinstance(mine, float) else mine
            assert theirs == expected, (method, seed, key)
        assert (tmp_path / "ray" / "samples" / f"tiny-net__{method}__seed{seed}.png").is_file()


def test_a_killed_worker_fails_its_cell_only_and_a_rerun_resumes(cluster, registries, tmp_path):
    first = run(registries, tmp_path, ["die", "asp"], RayExecutor())
    (_, method, seed, _), = first.failed  # one seed's die cell killed its worker; the other ran after the marker
    assert method == "die" and len(first.ok) == 5
    cell = CellStore(tmp_path).read("tiny-net", method, seed)
    assert cell["status"] == "failed" and cell["error"].startswith(("WorkerCrashedError", "ActorDiedError"))
    assert cell["traceback"]
    again = run(registries, tmp_path, ["die", "asp"], RayExecutor())
    assert again.ok == [("tiny-net", "die", seed, None)] and len(again.skipped) == 5


def test_executor_names_are_checked_before_any_work(monkeypatch):
    import sys

    from benchmark.errors import BenchmarkError

    assert isinstance(make_executor("local", jobs=1), LocalExecutor)
    with pytest.raises(BenchmarkError, match="--ray-address needs --executor ray"):
        make_executor("local", "auto")
    with pytest.raises(BenchmarkError, match="unknown executor 'spark'; available: local, ray"):
        make_executor("spark")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(BenchmarkError, match=r'--executor ray needs Ray: pip install -e "\.\[ray\]"'):
        make_executor("ray")
