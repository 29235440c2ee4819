"""Float32 islands inside half-precision runs (docs/precision.md).

`fp32_region(tensor)` switches autocast off for the tensor's device; `at_least_fp32(tensor)` casts half types to
float32 and leaves float32 / float64 as they are. The cast is always recorded (also when it is a no-op), so the
exported ONNX graph carries an explicit Cast to float32 at the entry of each island, which
`mpnet_model.infer.precision.fp32_node_names` and the fp16 runtimes read.
"""
from __future__ import annotations

import torch
from torch import Tensor


def at_least_fp32(tensor: Tensor) -> Tensor:
    """float16 / bfloat16 -> float32; float32 and float64 unchanged (an explicit, exported cast either way)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def fp32_region(tensor: Tensor) -> torch.autocast:
    """Context manager: autocast disabled on `tensor`'s device (ops run in their inputs' dtype)."""
    return torch.autocast(tensor.device.type, enabled=False)
