import copy
import json
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.api import Backbone, NMPattern
from benchmark.metrics.latency import (
    NA_CUDA,
    format_report,
    latency_command,
    semi_structured_supported,
    sparse_latency_report,
    time_fn,
    to_semi_structured,
)
from benchmark.presets import get_preset
from benchmark.sparsity import nm_mask

HAS_SM80 = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)
needs_sm80 = pytest.mark.skipif(not HAS_SM80, reason=NA_CUDA)


class TokenMLP(nn.Module):
    """Pixels as tokens through an MLP: ``model(x, t) -> eps`` with Linear layers 2:4 kernels accept."""

    def __init__(self, channels: int, width: int = 64):
        super().__init__()
        self.embed = nn.Linear(channels, width)  # 1 or 3 inputs: too narrow for 2:4, stays dense
        self.body = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.out = nn.Linear(width, channels)

    def forward(self, x, t):
        tokens = self.embed(x.flatten(2).transpose(1, 2)) + t.float()[:, None, None] / 1000
        pixels = self.out(self.body(tokens)).transpose(1, 2)
        return pixels.reshape(x.shape)


class TokenMLPBackbone(Backbone):
    name = "token-mlp"
    version = "1"

    def build(self, preset):
        return TokenMLP(preset.channels)

    def load_checkpoint(self, model, path):
        model.load_state_dict(torch.load(path))

    def blocks(self, model):
        return [("body", model.body)]


def test_time_fn_on_cpu_measures_milliseconds():
    assert 2.0 <= time_fn(lambda: time.sleep(0.002), "cpu", warmup=1, repeat=3) < 200


def test_semi_structured_needs_cuda():
    assert semi_structured_supported("cpu") == (False, NA_CUDA)
    if not torch.cuda.is_available():
        assert semi_structured_supported("cuda") == (False, NA_CUDA)


def test_conversion_keeps_unsupported_layers_dense():
    model = nn.Sequential(nn.Conv2d(16, 16, 1), nn.Linear(16, 16))
    conversion = to_semi_structured(model, ["0", "1"])
    assert conversion.converted == []
    assert "nn.Linear only" in conversion.skipped["0"]
    assert "float16/bfloat16 on CUDA" in conversion.skipped["1"]
    with pytest.raises(ValueError, match="no layer 'missing'"):
        to_semi_structured(model, ["missing"])


def test_sparse_report_without_cuda_is_na():
    report = sparse_latency_report(TokenMLP(1), {}, lambda b: (torch.zeros(b, 1, 4, 4), torch.zeros(b)), [1], "cpu")
    assert report == {"supported": False, "reason": NA_CUDA}
    assert format_report(report) == f"2:4 latency: {NA_CUDA}"


def test_latency_command_on_cpu_writes_na_json(tmp_path, capsys):
    out = tmp_path / "latency" / "token-mlp.json"
    result = latency_command(TokenMLPBackbone(), "tiny", [1, 4], device="cpu", out_json=out)
    written = json.loads(out.read_text())
    assert written == result
    assert written["supported"] is False and written["reason"] == NA_CUDA
    assert written["backbone"] == "token-mlp" and written["preset"] == "tiny" and written["pattern"] == "2:4"
    assert written["device_name"] == "cpu" and written["compute_capability"] is None
    assert written["torch"] == torch.__version__
    assert "batches" not in written
    assert NA_CUDA in capsys.readouterr().out


def two_four_linear(rows, cols):
    layer = nn.Linear(cols, rows).to("cuda", torch.float16)
    with torch.no_grad():
        layer.weight.mul_(nm_mask(layer.weight, NMPattern(2, 4)))
    return layer


@needs_sm80
def test_two_four_linear_matches_dense():
    layer = two_four_linear(128, 256)
    sparse = nn.Sequential(copy.deepcopy(layer))
    conversion = to_semi_structured(sparse, ["0"])
    assert conversion.converted == ["0"] and conversion.skipped == {}
    assert type(sparse[0].weight).__name__.startswith("SparseSemiStructuredTensor")
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), F.linear(x, layer.weight, layer.bias), rtol=1e-2, atol=1e-2)


@needs_sm80
@pytest.mark.parametrize("fuse_transpose", [False, True])
def test_two_four_linear_takes_strided_input(fuse_transpose):
    layer = two_four_linear(128, 256)
    sparse = nn.Sequential(copy.deepcopy(layer))
    to_semi_structured(sparse, ["0"], fuse_transpose=fuse_transpose)
    x = torch.randn(2, 256, 64, device="cuda", dtype=torch.float16).transpose(1, 2)  # as diffusers' attention
    with torch.inference_mode():
        out = sparse(x)
        torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-2, atol=1e-2)
    if fuse_transpose:
        assert out.is_contiguous()


@needs_sm80
def test_conversion_refuses_weights_that_are_not_two_four():
    model = nn.Sequential(nn.Linear(64, 64).to("cuda", torch.float16), nn.Linear(8, 8).to("cuda", torch.float16))
    conversion = to_semi_structured(model, ["0", "1"])
    assert "not 2:4 sparse" in conversion.skipped["0"]
    assert "not a multiple" in conversion.skipped["1"]


@needs_sm80
def test_latency_command_on_gpu_reports_each_batch(tmp_path):
    result = latency_command(TokenMLPBackbone(), "tiny", [1, 8], device="cuda", out_json=tmp_path / "out.json")
    assert result["supported"] is True and result["compute_capability"]
    assert result["converted"] == ["body.0", "body.2"]
    assert [entry["batch"] for entry in result["batches"]] == [1, 8]
    for entry in result["batches"]:
        for mode in ("eager", "graphed", "graphed_fused"):
            assert entry[mode]["dense_ms"] > 0 and entry[mode]["sparse_ms"] > 0
        assert [layer["tokens"] for layer in entry["layers"]] == [entry["batch"] * 256] * 2
        assert all(layer["graphed"]["sparse_ms"] > 0 for layer in entry["layers"])
    assert json.loads((tmp_path / "out.json").read_text())["batches"][1]["batch"] == 8


@needs_sm80
def test_cuda_graph_replays_the_captured_kernels():
    from benchmark.metrics.latency import cuda_graphed

    x = torch.randn(32, 64, device="cuda")
    replay, output = cuda_graphed(lambda: x * 2)
    x.copy_(torch.arange(32 * 64, device="cuda", dtype=torch.float32).reshape(32, 64))
    replay()
    torch.testing.assert_close(output, 2 * x)


def test_report_table_shows_each_timing_mode_and_capture_errors():
    layer = {"eager": {"speedup": 0.5}, "graphed": {"speedup": 1.5}}
    report = {
        "supported": True, "device": "GPU (sm90)", "dtype": "float16", "backend": "cusparselt",
        "converted": ["a"], "skipped": {"b": "why"},
        "batches": [{
            "batch": 8,
            "eager": {"dense_ms": 1.0, "sparse_ms": 2.0, "speedup": 0.5},
            "graphed": {"dense_ms": 0.3, "sparse_ms": 0.2, "speedup": 1.5},
            "graphed_fused": {"error": "RuntimeError: capture failed"},
            "layers": [layer],
        }],
    }
    lines = format_report(report).splitlines()
    assert lines[0] == "GPU (sm90), float16, cusparselt: 1 Linear layers at 2:4, 1 masked layers left dense"
    eager, graphed, fused = lines[3:]
    assert eager.split()[:5] == ["8", "eager", "1.000", "2.000", "0.50x"] and "median 0.50x" in eager
    assert graphed.split()[:6] == ["8", "CUDA", "graph", "0.300", "0.200", "1.50x"] and "median 1.50x" in graphed
    assert "fused transpose" in fused and "capture failed" in fused


def test_masked_copy_applies_masks_in_fp16_and_counts_tokens():
    from torch.nn.utils import parametrize

    from benchmark.metrics.latency import _masked_fp16_copy, _tokens_per_layer

    model = TokenMLP(1)
    mask = nm_mask(model.body[0].weight, NMPattern(2, 4))
    copied = _masked_fp16_copy(model, {"body.0": mask}, torch.device("cpu"))
    assert copied.body[0].weight.dtype == torch.float16 and model.body[0].weight.dtype == torch.float32
    torch.testing.assert_close(copied.body[0].weight, (model.body[0].weight * mask).half())
    assert (model.body[0].weight != 0).all()  # the original is untouched

    inputs = TokenMLPBackbone().example_inputs(get_preset("tiny"), 3)
    with torch.no_grad():
        assert _tokens_per_layer(model, ["body.0", "out"], inputs) == {"body.0": 3 * 256, "out": 3 * 256}

    parametrize.register_parametrization(model.out, "weight", nn.Identity())
    with pytest.raises(ValueError, match="bake the weight parametrizations first"):
        _masked_fp16_copy(model, {}, torch.device("cpu"))


def test_headline_timing_prefers_the_graphed_fused_mode_then_falls_back():
    from benchmark.metrics.latency import headline_timing

    fused, graphed, eager = ({"sparse_ms": ms} for ms in (1.0, 2.0, 3.0))
    assert headline_timing({"graphed_fused": fused, "graphed": graphed, "eager": eager}) == ("graphed_fused", fused)
    failed = {"error": "RuntimeError: capture failed"}
    assert headline_timing({"graphed_fused": failed, "graphed": failed, "eager": eager}) == ("eager", eager)
