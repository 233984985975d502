"""Writes Tests/MSQTests/Fixtures/small.safetensors with Python's own safetensors writer.

SafeTensorsTests reads it (values) and compares MSQ's writer against it byte for byte, so every
value here is repeated in that test. Mixed dtypes check the reference tensor order (decreasing
dtype alignment, then name); one metadata key only, because the reference writer keeps metadata
in a hash map and orders several keys differently from run to run. The value has a slash, quotes
and a non-ASCII letter to check JSON escaping.

    /work/venv/bin/python bench/pytorch/make_safetensors_fixture.py [OUT]
"""
import os
import sys

import numpy as np
from safetensors.numpy import save_file

here = os.path.dirname(os.path.abspath(__file__))
default_out = os.path.join(here, "..", "..", "Tests", "MSQTests", "Fixtures", "small.safetensors")
out = sys.argv[1] if len(sys.argv) > 1 else default_out

tensors = {
    "weight": (np.arange(6, dtype=np.float32) * 0.5 - 1.25).reshape(2, 3),
    "bias": np.array([0.1, -2.0, 3.5], dtype=np.float32),
    "labels": np.array([0, 9, -1, 2**40], dtype=np.int64),
    "scale": np.array(1.0 / 3.0, dtype=np.float64),
    "counts": np.array([[1, -2], [3, 2**31 - 1]], dtype=np.int32),
    "empty": np.zeros((0, 3), dtype=np.float32),
}
save_file(tensors, out, metadata={"note": 'a/b "c" \u00e9'})
print(f"wrote {os.path.normpath(out)} ({os.path.getsize(out)} bytes)")
