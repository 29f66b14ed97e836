"""Why U-ViT-S end to end loses with 2:4 while its Linear layers break even (batch 128, CUDA graphs).

Times the graphed forward with cuSPARSELt's fused output transpose off and on, then profiles
one eager sparse forward and prints the CUDA kernels that take the most time.
"""
import torch
from torch.profiler import ProfilerActivity, profile

from benchmark.api import NMPattern
from benchmark.metrics.latency import (
    SPARSE_DTYPE, _masked_fp16_copy, _nm_masks, cuda_graphed, time_fn, to_semi_structured,
)
from benchmark.plugins import build_registries
from benchmark.presets import get_preset

preset, batch, device = get_preset("cifar10"), 128, torch.device("cuda")
for name in ("uvit", "ddpm"):
    backbone = build_registries().backbones.get(name)
    model = backbone.build(preset)
    masks = _nm_masks(backbone, model, NMPattern(2, 4))
    dense = _masked_fp16_copy(model, masks, device)
    inputs = tuple(x.to(device, SPARSE_DTYPE) if x.is_floating_point() else x.to(device)
                   for x in backbone.example_inputs(preset, batch))
    with torch.inference_mode(), torch.autocast("cuda", dtype=SPARSE_DTYPE, cache_enabled=False):
        print(f"{name} batch {batch}: dense graphed {time_fn(cuda_graphed(lambda: dense(*inputs))[0], device):.3f} ms")
        for fuse in (False, True):
            sparse = _masked_fp16_copy(model, masks, device)
            conversion = to_semi_structured(sparse, list(masks), fuse_transpose=fuse)
            out = sparse(*inputs)
            err = (out.float() - dense(*inputs).float()).abs().max().item()
            ms = time_fn(cuda_graphed(lambda: sparse(*inputs))[0], device)
            print(f"  2:4 fuse_transpose={fuse}: {len(conversion.converted)} layers, graphed {ms:.3f} ms, "
                  f"max |2:4 - dense| {err:.3g}, output contiguous {out.is_contiguous()}")
            if name == "uvit":
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    sparse(*inputs)
                    torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
