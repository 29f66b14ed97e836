"""Wall-clock cost of each step of one 2:4 Linear ([2048, 512] at 32896 rows), output transpose fused or not."""
import time

import torch
import torch.nn.functional as F
from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

from benchmark.metrics.latency import cuda_graphed, time_fn


def wall(label, fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    print(f"    {label}: {time.perf_counter() - start:.3f} s", flush=True)
    return result


x = torch.randn(32896, 512, device="cuda", dtype=torch.half)
w = torch.randn(2048, 512, device="cuda", dtype=torch.half) * torch.tensor([0, 0, 1, 1], device="cuda").tile(2048, 128)
for fuse in (False, True, False, True):
    SparseSemiStructuredTensor._FUSE_TRANSPOSE = fuse
    print(f"fuse_transpose={fuse}", flush=True)
    ws = wall("compress", lambda: to_sparse_semi_structured(w))
    wall("first call", lambda: F.linear(x, ws))
    wall("second call", lambda: F.linear(x, ws))
    wall("10 calls", lambda: [F.linear(x, ws) for _ in range(10)])
    eager = wall("time_fn eager", lambda: time_fn(lambda: F.linear(x, ws), "cuda"))
    graphed = wall("capture + time_fn graphed", lambda: time_fn(cuda_graphed(lambda: F.linear(x, ws))[0], "cuda"))
    print(f"    eager {eager:.4f} ms, graphed {graphed:.4f} ms, dense {time_fn(lambda: F.linear(x, w), 'cuda'):.4f} ms")
