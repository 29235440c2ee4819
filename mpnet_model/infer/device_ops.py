"""Small tensor operations without host-device synchronisation, for the frame path on a GPU (issue 25).

On CUDA, an operation whose output size depends on the data (``nonzero``, boolean-mask indexing, ``unique``,
``bincount``, ``repeat_interleave`` without ``output_size``) or that reads a value on the host (``.item()``,
``.tolist()``, ``.cpu()``) waits for the device to finish all queued work. The frame path needs a few sizes on the
host (how many blocks, entries, seeds, ...); these helpers let it read them in ONE copy and then do the
compactions and counts with sizes the host already knows:

* `read_host` - several device tensors (any dtypes) to numpy in one device -> host copy (one sync);
* `compact` - the indices of the True entries of a mask, in order, given their number (no sync);
* `counts` - ``bincount`` with a known length, by ``index_add_`` (no sync; weights summed exactly when they are
  integer valued, as every caller's are);
* `to_device` - a host array to the device without a blocking copy (pinned memory, ``non_blocking``);
* `to_host` - one tensor to numpy: on CUDA a non-blocking copy into pinned memory and one stream sync.

Every function is exact: the same integers / values as the synchronising operation it replaces. On the CPU
(`_cpu_strategy`, which tests and the sync counter switch off to run the GPU code on CPU tensors) `compact`,
`counts` and `unique_inverse` call the operation they replace: there it costs no sync and is faster.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def read_host(*tensors: Tensor) -> list[np.ndarray]:
    """Copy device tensors to the host in one transfer (one sync) -> numpy arrays of the same shapes and dtypes.

    The values travel bit-exactly in one int64 buffer: integers and booleans widened to int64, floating point
    widened to float64 and reinterpreted (float32 -> float64 -> float32 is exact)."""
    if not tensors:
        return []
    parts, kinds = [], []
    for tensor in tensors:
        flat = tensor.detach().reshape(-1)
        if flat.is_floating_point():
            parts.append(flat.double().view(torch.int64))
            kinds.append('float')
        else:
            parts.append(flat.long())
            kinds.append('int')
    packed = to_host(torch.cat(parts) if len(parts) > 1 else parts[0])
    arrays, start = [], 0
    for tensor, kind, part in zip(tensors, kinds, parts):
        stop = start + part.numel()
        values = packed[start:stop]
        if kind == 'float':
            values = values.view(np.float64)
        arrays.append(values.astype(_numpy_dtype(tensor.dtype), copy=False).reshape(tuple(tensor.shape)))
        start = stop
    return arrays


_NUMPY_DTYPES = {torch.bool: np.bool_, torch.uint8: np.uint8, torch.int8: np.int8, torch.int16: np.int16,
                 torch.int32: np.int32, torch.int64: np.int64, torch.float16: np.float16,
                 torch.bfloat16: np.float32, torch.float32: np.float32, torch.float64: np.float64}


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return np.dtype(_NUMPY_DTYPES[dtype])


def to_host(tensor: Tensor) -> np.ndarray:
    """One tensor to a numpy array: on CUDA a non-blocking copy into pinned memory, then one stream sync (the
    only wait of the transfer); on the CPU the tensor's own memory."""
    if tensor.device.type == 'cuda':
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        torch.cuda.current_stream(tensor.device).synchronize()
        return host.numpy()
    return tensor.detach().cpu().numpy()


def to_device(array: np.ndarray, device: torch.device | str) -> Tensor:
    """A host array on `device` without a blocking copy: on CUDA staged in pinned memory and copied with
    ``non_blocking=True`` (the caching host allocator keeps the staging buffer until the copy is done)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    device = torch.device(device)
    if device.type == 'cuda':
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _cpu_strategy(device: torch.device) -> bool:
    """True on the CPU: the synchronising operation itself (no sync there); tests switch it off."""
    return device.type == 'cpu'


def compact(mask: Tensor, count: int) -> Tensor:
    """(n,) bool -> (count,) int64 positions of its True entries in increasing order; `count` must be their
    number (known on the host). ``torch.nonzero(mask).squeeze(1)`` without the sync."""
    mask = mask.reshape(-1)
    if _cpu_strategy(mask.device):
        return torch.nonzero(mask).reshape(-1)
    positions = torch.cumsum(mask, 0) - 1
    target = torch.where(mask, positions, count)                 # everything else goes to a dump slot
    out = torch.empty(count + 1, dtype=torch.int64, device=mask.device)
    out.scatter_(0, target, torch.arange(mask.numel(), device=mask.device))
    return out[:count]


def counts(index: Tensor, length: int, weights: Tensor | None = None) -> Tensor:
    """``torch.bincount(index, weights, minlength=length)`` for indices known to lie in [0, length): int64 counts,
    or the sums of `weights` in their dtype (exact for integer-valued weights), without the sync."""
    if _cpu_strategy(index.device):
        result = torch.bincount(index, weights, minlength=length)
        return result if weights is None else result.to(weights.dtype)   # integer weights: bincount gives float64
    if weights is None:
        return torch.zeros(length, dtype=torch.int64, device=index.device).index_add_(
            0, index, torch.ones_like(index))
    return torch.zeros(length, dtype=weights.dtype, device=index.device).index_add_(0, index, weights)


def unique_inverse(values: Tensor) -> Tensor:
    """(n,) -> (n,) int64 index of each value among the sorted distinct values: the inverse of
    ``torch.unique(values, return_inverse=True)`` without the sync (one sort, a cumsum, a scatter)."""
    if _cpu_strategy(values.device):
        return torch.unique(values, return_inverse=True)[1]
    sorted_values, order = torch.sort(values)
    starts = torch.ones(values.shape, dtype=torch.bool, device=values.device)
    starts[1:] = sorted_values[1:] != sorted_values[:-1]
    inverse = torch.empty_like(order)
    inverse[order] = torch.cumsum(starts, 0) - 1
    return inverse


def available_memory(device: torch.device | str) -> int:
    """Bytes a CUDA device can still give this process: the driver's free memory plus what torch's caching
    allocator holds reserved but unused (`memory_reserved - memory_allocated`). `mem_get_info` alone counts the
    cache as used: after a frame it shrinks by everything the frame freed into the cache."""
    device = torch.device(device)
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
