import torch, time
from torch.sparse import to_sparse_semi_structured, SparseSemiStructuredTensor
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), torch.cuda.get_device_capability())
print("cusparselt", getattr(torch.backends, "cusparselt", None) and torch.backends.cusparselt.version())
print("FORCE_CUTLASS default", SparseSemiStructuredTensor._FORCE_CUTLASS)
def t(fn, n=50):
    for _ in range(10): fn()
    torch.cuda.synchronize(); s=torch.cuda.Event(enable_timing=True); e=torch.cuda.Event(enable_timing=True)
    ts=[]
    for _ in range(n):
        s.record(); fn(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    ts.sort(); return ts[len(ts)//2]
for force in (False, True):
    SparseSemiStructuredTensor._FORCE_CUTLASS = force
    for (o,i,tok) in [(10240,3072,3072),(2048,512,257*128),(512,2048,257*128),(1536,512,257*128),(512,512,257)]:
        w = torch.randn(o,i,device='cuda',dtype=torch.half)
        mask = torch.tensor([0,0,1,1],device='cuda',dtype=torch.bool).tile(o, i//4)
        w = w*mask
        x = torch.randn(tok,i,device='cuda',dtype=torch.half)
        try:
            ws = to_sparse_semi_structured(w)
            d = t(lambda: torch.nn.functional.linear(x,w)); sp = t(lambda: torch.nn.functional.linear(x,ws))
            err = (torch.nn.functional.linear(x,ws)-torch.nn.functional.linear(x,w)).abs().max().item()
            print(f"cutlass={force} W[{o},{i}] x[{tok}] dense {d:.4f} ms sparse {sp:.4f} ms speedup {d/sp:.3f} maxerr {err:.3g}")
        except Exception as ex:
            print(f"cutlass={force} W[{o},{i}] FAIL {type(ex).__name__}: {str(ex)[:200]}")
