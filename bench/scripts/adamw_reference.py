"""Prints torch.optim.AdamW's parameters and moments after three steps on fixed numbers, as the
Swift literals of Tests/MSQTests/OptimizerTests.swift (run: /work/venv/bin/python adamw_reference.py;
the committed numbers came from PyTorch 2.15.0, single-tensor path, float32)."""
import torch
def run(w0, grads, lr, betas, eps, wd):
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float32))
    opt = torch.optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=wd, foreach=False)
    out = []
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
        st = opt.state[p]
        out.append((p.detach().clone().tolist(), st['exp_avg'].clone().tolist(), st['exp_avg_sq'].clone().tolist()))
    return out
w0 = [0.5, -1.25, 2.0, 0.0, -0.0625, 3.5, -2.75]
grads = [[0.1, -0.2, 0.3, 0.0, 1.5, -0.01, 0.25],
         [-0.3, 0.05, 0.3, 0.2, -1.0, 0.02, 0.25],
         [0.7, -0.4, -0.1, -0.2, 0.5, 0.0, 0.25]]
def fmt(xs): return '[' + ', '.join('%.9g' % x for x in xs) + ']'
for cfg in [dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, wd=0.05), dict(lr=0.1, betas=(0.8, 0.99), eps=1e-3, wd=0.0)]:
    print('        // lr %g, betas %s, eps %g, weight_decay %g' % (cfg['lr'], cfg['betas'], cfg['eps'], cfg['wd']))
    for i, (w, m, v) in enumerate(run(w0, grads, **cfg)):
        print('        (w: %s,\n         m: %s,\n         v: %s),' % (fmt(w), fmt(m), fmt(v)))
