"""How far float32 autograd itself is from float64 on one block of H·v: PyTorch double backward in both
precisions on an `msq-bench hvp` output file, compared with MSQ's float32 H·v on the same block.

    python hvp_float32_floor.py OUT.safetensors [LAYER] [PROBE ...]   (default conv1.weight, probes 0 and 5)

Made for ResNet-18's stem on Fashion-MNIST, whose block cancels in float32 (bench/README).
"""
import sys, torch, torch.nn.functional as F
from safetensors.torch import load_file
from safetensors import safe_open
from models import reference_model
path = sys.argv[1]
with safe_open(path, "pt") as f: meta = f.metadata()
t = load_file(path)
def hv(dtype, j):
    m = reference_model(meta["model"], int(meta["in_channels"]), int(meta["classes"]))
    sd = {k: v for k, v in t.items() if not k.startswith(("probe.", "hv.", "calibration."))}
    m.load_state_dict(sd, strict=False); m = m.to(dtype).eval()
    names = sorted({k.split(".", 2)[2] for k in t if k.startswith("probe.0.")})
    params = dict(m.named_parameters())
    ps = [params[n] for n in names]
    x = t["calibration.images"].to(dtype); y = t["calibration.labels"]
    loss = F.cross_entropy(m(x), y)
    g = torch.autograd.grad(loss, ps, create_graph=True)
    v = [t[f"probe.{j}.{n}"].to(dtype) for n in names]
    h = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v)), ps)
    return dict(zip(names, h))
layer = sys.argv[2] if len(sys.argv) > 2 else "conv1.weight"
for j in [int(a) for a in sys.argv[3:]] or [0, 5]:
    a, b = hv(torch.float32, j), hv(torch.float64, j)
    n = layer
    ours = t[f"hv.{j}.{n}"].double()
    e32 = ((a[n].double() - b[n]).norm() / b[n].norm()).item()
    eo = ((ours - b[n]).norm() / b[n].norm()).item()
    print(f"probe {j}: {n}: torch float32 vs float64 rel err {e32:.3e}; msq float32 vs torch float64 {eo:.3e}")
