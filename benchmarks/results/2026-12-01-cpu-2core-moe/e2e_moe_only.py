"""Decode ms/token at the demo size (default 4-layer model, fp32, 1 thread): reference vs patch(ops=("moe",)) vs patch(all)."""
import sys, time, torch
sys.path.insert(0, "benchmarks")
torch.set_num_threads(1)
from decode_loop import time_per_token, _gen
from interns2_fast import models, patch, unpatch
model = models.build_causal_lm("qwen3_5_moe", models.default_config(4), dtype=torch.float32).eval()
ids = torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(0))
N, R = 33, int(sys.argv[1]) if len(sys.argv) > 1 else 3
res = {}
outs = {}
for rnd in range(2):
    for name, kw in (("reference", None), ("patched moe only", dict(ops=("moe",), static_decode=False)),
                     ("patched all", dict(static_decode=False))):
        unpatch(model)
        if kw: patch(model, **kw)
        with torch.no_grad():
            t = time_per_token(model, ids, N, R)
            outs[name] = _gen(model, ids, 12)
        res[name] = min(res.get(name, 1e9), t)
    unpatch(model)
for k, v in res.items():
    print(f"{k:18s} {v*1e3:7.2f} ms/token  {res['reference']/v:5.2f}x  ids==ref {torch.equal(outs[k], outs['reference'])}")
