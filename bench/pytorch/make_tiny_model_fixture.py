"""Writes Tests/MSQTests/Fixtures/tiny-model.safetensors and tiny-model-io.safetensors with PyTorch.

A model that is not one of MSQ's built-in kinds, for SafeTensorsLoadingTests: nn.Sequential of
conv3x3(1->4, no bias), BN, ReLU, conv3x3/2(4->6, bias), BN, ReLU, global average pool, flatten,
linear(6->3). MSQ builds the same network as Sequential([Conv2d, BatchNorm2d, Activation(.relu),
Conv2d, BatchNorm2d, Activation(.relu), GlobalAvgPool2d, Flatten, Linear]), whose parameter paths
(`0.weight`, `1.running_mean`, `8.bias`, ...) are the state_dict names. Batch-norm parameters and
statistics are random so that a swapped tensor changes the logits; num_batches_tracked is 5.

tiny-model.safetensors: the state_dict. tiny-model-io.safetensors: `input` [2, 1, 6, 6] and
`logits` [2, 3], the model's eval-mode output on it.

    /work/venv/bin/python bench/pytorch/make_tiny_model_fixture.py [OUTDIR]
"""
import os
import sys

import torch
import torch.nn as nn
from safetensors.torch import save_file

here = os.path.dirname(os.path.abspath(__file__))
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "Tests", "MSQTests", "Fixtures")

torch.manual_seed(15)
model = nn.Sequential(
    nn.Conv2d(1, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
    nn.Conv2d(4, 6, 3, 2, 1, bias=True), nn.BatchNorm2d(6), nn.ReLU(),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(6, 3))
with torch.no_grad():
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.3, 0.3)
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(5)
model.eval()
x = torch.randn(2, 1, 6, 6)
with torch.no_grad():
    logits = model(x)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "tiny-model.safetensors"))
save_file({"input": x, "logits": logits}, os.path.join(out, "tiny-model-io.safetensors"))
print(f"wrote tiny-model.safetensors ({len(model.state_dict())} tensors) and tiny-model-io.safetensors "
      f"(logits {logits.tolist()}) in {os.path.normpath(out)}")
