"""Does torch.compile make U-ViT-S/2's 2:4 forward competitive? Batch 128, fp16, CUDA events.

Compiles the masked dense model and its 2:4 copy (PyTorch's default layout) with
``torch.compile`` in the default mode and in ``reduce-overhead`` (CUDA graphs), prints compile
time, median ms per forward and the largest difference to the eager dense output.
"""
import time

import torch

from benchmark.api import NMPattern
from benchmark.metrics.latency import SPARSE_DTYPE, _masked_fp16_copy, _nm_masks, time_fn, to_semi_structured
from benchmark.plugins import build_registries
from benchmark.presets import get_preset

preset, batch, device = get_preset("cifar10"), 128, torch.device("cuda")
backbone = build_registries().backbones.get("uvit")
model = backbone.build(preset)
masks = _nm_masks(backbone, model, NMPattern(2, 4))
dense = _masked_fp16_copy(model, masks, device)
sparse = _masked_fp16_copy(model, masks, device)
to_semi_structured(sparse, list(masks))
inputs = tuple(x.to(device, SPARSE_DTYPE) if x.is_floating_point() else x.to(device)
               for x in backbone.example_inputs(preset, batch))
with torch.inference_mode(), torch.autocast("cuda", dtype=SPARSE_DTYPE, cache_enabled=False):
    reference = dense(*inputs).float()
    for mode in ("default", "reduce-overhead"):
        for label, module in (("dense", dense), ("2:4", sparse)):
            torch._dynamo.reset()
            compiled = torch.compile(module, mode=mode)
            start = time.perf_counter()
            try:
                out = compiled(*inputs).clone()  # reduce-overhead reuses its output buffer
                torch.cuda.synchronize()
            except Exception as error:  # report and go on: a failure to compile is a finding too
                print(f"{mode:16s} {label:5s} FAILED {type(error).__name__}: {str(error).splitlines()[0][:300]}", flush=True)
                continue
            compile_s = time.perf_counter() - start
            ms = time_fn(lambda: compiled(*inputs), device)
            err = (out.float() - reference).abs().max().item()
            print(f"{mode:16s} {label:5s} compile {compile_s:6.1f} s  {ms:8.3f} ms/forward  max|diff| {err:.3g}", flush=True)
