"""Writes Tests/MSQTests/Fixtures/pytorch-state-dict-keys.txt: every state_dict key and shape of the
PyTorch twin of each MSQ model kind, for PyTorchNamesTests (MSQ parameter path -> PyTorch name).

Models (models.reference_model): resnet20/32/56 from models.py with 1 input channel; torchvision's
resnet18/resnet50, mobilenet_v3_large/small and swin_t, and models.py's DeiTs, with 3 (224² where the
shape depends on the size); all with 10 classes. One line per key: `MODEL NAME [d0,d1,...]` (`[]` for
a scalar such as num_batches_tracked), in state_dict order (Swin's relative_position_index buffers
included: MSQ computes them, PyTorchNamesTests lets them go unmapped).

    /work/venv/bin/python bench/pytorch/state_dict_keys.py [OUT]
"""
import os
import sys

import torch
import torchvision

from models import MODEL_NAMES, CIFAR_DEPTHS, reference_model

here = os.path.dirname(os.path.abspath(__file__))
default_out = os.path.join(here, "..", "..", "Tests", "MSQTests", "Fixtures", "pytorch-state-dict-keys.txt")
out = sys.argv[1] if len(sys.argv) > 1 else default_out

lines = [f"# bench/pytorch/state_dict_keys.py, torch {torch.__version__.split('+')[0]}, "
         f"torchvision {torchvision.__version__.split('+')[0]}: MODEL NAME SHAPE; "
         "CIFAR models 1 input channel, ImageNet models 3; 10 classes"]
for name in MODEL_NAMES:
    model = reference_model(name, 1 if name in CIFAR_DEPTHS else 3, 10)
    for key, value in model.state_dict().items():
        lines.append(f"{name} {key} [{','.join(str(d) for d in value.shape)}]")
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
print(f"wrote {os.path.normpath(out)} ({len(lines) - 1} keys)")
