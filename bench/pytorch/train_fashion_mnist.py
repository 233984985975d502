"""PyTorch twin of `msq train` (float) for checking our engine's accuracy against a reference.

Same model (CIFAR ResNet-20, option-A shortcuts, Kaiming-normal fan-out init), same recipe
(SGD with Nesterov momentum 0.9, weight decay 5e-4 on conv/linear weights only, linear warm-up then per-step
cosine, optional random crop with zero padding + horizontal flip (off by default, as in
`msq train --dataset fashion-mnist`), Fashion-MNIST normalisation), same data
subset (the first N training images, the full 10k test set).

    python bench/pytorch/train_fashion_mnist.py --epochs 3 --limit-train 10000 --lr 0.1 --seed 0
"""
import argparse, gzip, json, math, os, time

import numpy as np
import torch
import torch.nn.functional as F

from models import ResNet20


def read_idx(path):
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def augment(x, pad, flip, gen):
    n, c, h, w = x.shape
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        x = torch.stack([xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if flip:
        m = torch.rand(n, generator=gen) < 0.5
        x[m] = x[m].flip(3)
    return x


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit-train", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--crop-padding", type=int, default=0)
    p.add_argument("--flip", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    d = a.data_dir
    xtr = read_idx(os.path.join(d, "train-images-idx3-ubyte.gz"))[: a.limit_train]
    ytr = read_idx(os.path.join(d, "train-labels-idx1-ubyte.gz"))[: a.limit_train]
    xte = read_idx(os.path.join(d, "t10k-images-idx3-ubyte.gz"))
    yte = read_idx(os.path.join(d, "t10k-labels-idx1-ubyte.gz"))
    to_t = lambda x: torch.tensor(x, dtype=torch.float32).unsqueeze(1) / 255.0
    xtr, xte = to_t(xtr), to_t(xte)
    ytr, yte = torch.tensor(ytr, dtype=torch.long), torch.tensor(yte, dtype=torch.long)
    mean, std = 0.2860, 0.3530
    model = ResNet20()
    decay = [p_ for n_, p_ in model.named_parameters() if p_.dim() > 1]
    no_decay = [p_ for n_, p_ in model.named_parameters() if p_.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": a.weight_decay},
                           {"params": no_decay, "weight_decay": 0}], lr=a.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = math.ceil(len(xtr) / a.batch_size)
    total, warm = steps_per_epoch * a.epochs, round(a.warmup_epochs * steps_per_epoch)
    lr_at = lambda t: a.lr * (t + 1) / warm if t < warm else a.lr * (1 + math.cos(math.pi * (t - warm) / max(total - warm, 1))) / 2
    gen = torch.Generator().manual_seed(a.seed)
    step, start = 0, time.time()
    for epoch in range(1, a.epochs + 1):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * a.batch_size:(b + 1) * a.batch_size]
            x = (augment(xtr[idx].clone(), a.crop_padding, a.flip, gen) - mean) / std
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = F.cross_entropy(model(x), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            correct = sum((model((xte[i:i + 500] - mean) / std).argmax(1) == yte[i:i + 500]).sum().item()
                          for i in range(0, len(xte), 500))
        print(json.dumps({"epoch": epoch, "test_accuracy": correct / len(xte), "seconds": time.time() - start}), flush=True)


if __name__ == "__main__":
    main()
