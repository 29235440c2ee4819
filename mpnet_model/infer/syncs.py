"""Host-device synchronisations of the frame path, counted on the CPU (issue 25).

On CUDA every operation whose result the host must read (a scalar, a data-dependent shape, a copy to the host)
waits for the device to drain its queue: tens of microseconds each plus the drain, so hundreds of them eat a
100 ms frame budget before any compute. They cannot be timed here (no GPU), but they can be COUNTED on CPU
tensors: the same Python code calls the same operators, and which operators synchronise on CUDA is known.

`SyncCounter` is a context manager (a `TorchFunctionMode` for the tensor methods that cross to the host, a
`TorchDispatchMode` for the aten operators that synchronise) that counts, per stage and per kind:

* ``scalar``: ``aten._local_scalar_dense`` (``.item()``, ``int()``, ``float()``, ``bool()`` of a device tensor);
* ``to_host``: ``.cpu()``, ``.tolist()``, ``.numpy()`` of a device tensor (``.numpy()`` of the result of ``.cpu()``
  is not counted again);
* ``to_device``: a blocking host -> device copy: ``.to(device)`` / ``.cuda()`` of a host tensor without
  ``non_blocking=True``, ``torch.as_tensor`` / ``torch.tensor`` of host data with a ``device``;
* ``nonzero`` (also ``argwhere``, ``torch.where(mask)``), ``masked_select``, ``bool_index`` (indexing or index
  assignment with a boolean mask: an implicit nonzero), ``bincount`` (CUDA reads the input's min/max even with
  ``minlength``), ``unique`` (``unique``, ``unique_consecutive``, ``unique(dim=...)``), ``repeat_interleave``
  (a tensor of repeats without ``output_size``), ``equal``;
* ``synchronize``: ``torch.cuda.synchronize``, ``Stream.synchronize``, ``Event.synchronize`` calls (on the CPU:
  the stage timer's, see `stage_attribution`).

"Host" tensors are those made from host data (``torch.from_numpy``, ``torch.as_tensor`` / ``torch.tensor`` without
a device) or copied to the host (``.cpu()``), and the results of operations on host tensors only; everything else
is taken to live on the device. Operators on host tensors are not counted (they do not touch the device).

`frame_syncs` runs `SceneSegmenter.segment` under a counter with the stages of its stage timer (blocks,
inference, meanshift, merging, projection, output, timer) and the GPU strategies forced on CPU tensors
(`gpu_strategies`). It also works on the code of an older commit (benchmarks/bench_syncs.py loads this file by
path next to another checkout's `mpnet_model`): it only relies on `_Clock.lap` / `_Clock.finish`.
"""
from __future__ import annotations

import contextlib
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

STAGES = ('blocks', 'inference', 'meanshift', 'merging', 'projection', 'output', 'timer')
KINDS = ('scalar', 'to_host', 'to_device', 'nonzero', 'masked_select', 'bool_index', 'bincount', 'unique',
         'repeat_interleave', 'equal', 'synchronize')

_aten = torch.ops.aten
# aten operators that synchronise on CUDA whatever their arguments (data-dependent output size or a host read).
# Under inference mode composite operators reach the mode undecomposed (item, is_nonzero, where, argwhere, ...).
_ALWAYS = {
    _aten._local_scalar_dense.default: 'scalar',
    _aten.item.default: 'scalar',
    _aten.is_nonzero.default: 'scalar',
    _aten.allclose.default: 'scalar',
    _aten.nonzero.default: 'nonzero',
    _aten.nonzero_numpy.default: 'nonzero',
    _aten.argwhere.default: 'nonzero',
    _aten.where.default: 'nonzero',
    _aten.masked_select.default: 'masked_select',
    _aten.bincount.default: 'bincount',
    _aten._unique.default: 'unique',
    _aten._unique2.default: 'unique',
    _aten.unique_consecutive.default: 'unique',
    _aten.unique_dim.default: 'unique',
    _aten.unique_dim_consecutive.default: 'unique',
    _aten.equal.default: 'equal',
}
_INDEXING = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default,
             _aten._index_put_impl_.default}
_REPEATS = {_aten.repeat_interleave.Tensor, _aten.repeat_interleave.self_Tensor}
_TO_HOST = {'cpu', 'tolist', 'numpy'}


def _tensors(values) -> list[torch.Tensor]:
    return [value for value in tree_flatten(values)[0] if isinstance(value, torch.Tensor)]


class SyncCounter:
    """Counts the operations that would synchronise host and device on CUDA, per stage and kind (module docstring).

    ``with SyncCounter() as counter: ...``; ``counter.stage = 'name'`` attributes what follows to a stage (default
    'other'); ``counter.counts`` {stage: Counter(kind)}; ``counter.total()``; ``counter.table()``. With
    ``trace=True`` every counted operation is recorded with the caller's file:line in ``counter.sites``.
    """

    def __init__(self, trace: bool = False):
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.stage = 'other'
        self.trace = trace
        self.sites: dict[str, Counter] = defaultdict(Counter)
        self._host = WeakIdKeyDictionary()
        self._function_mode = _FunctionMode(self)
        self._dispatch_mode = _DispatchMode(self)
        self._stack = contextlib.ExitStack()

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def add(self, kind: str, number: int = 1) -> None:
        self.counts[self.stage][kind] += number
        if self.trace:
            self.sites[self.stage][f'{kind} {_caller()}'] += number

    def is_host(self, tensor: torch.Tensor) -> bool:
        return tensor in self._host

    def mark_host(self, values) -> None:
        for tensor in _tensors(values):
            self._host[tensor] = True

    def total(self, stage: str | None = None) -> int:
        if stage is not None:
            return sum(self.counts.get(stage, Counter()).values())
        return sum(sum(kinds.values()) for kinds in self.counts.values())

    def per_stage(self) -> dict[str, int]:
        stages = list(STAGES) + [s for s in self.counts if s not in STAGES]
        return {stage: self.total(stage) for stage in stages}

    def table(self) -> list[str]:
        """Markdown rows: stage, syncs, by kind."""
        lines = ['| stage | syncs | by kind |', '|---|---|---|']
        for stage, number in self.per_stage().items():
            kinds = ', '.join(f'{kind} {n}' for kind, n in self.counts.get(stage, Counter()).most_common())
            lines.append(f'| {stage} | {number} | {kinds} |')
        lines.append(f'| **total** | **{self.total()}** | |')
        return lines

    # -- context -----------------------------------------------------------------------------------------------
    def __enter__(self) -> SyncCounter:
        stack = self._stack
        original_from_numpy = torch.from_numpy

        def from_numpy(array):
            tensor = original_from_numpy(array)
            self.mark_host(tensor)
            return tensor

        def synchronize(device=None):
            self.add('synchronize')

        stack.enter_context(_patched(torch, 'from_numpy', from_numpy))
        stack.enter_context(_patched(torch.cuda, 'synchronize', synchronize))
        for owner in (torch.cuda.Stream, torch.cuda.Event):          # stream / event waits (CUDA only)
            stack.enter_context(_patched(owner, 'synchronize', lambda *args, **kwargs: synchronize()))
        stack.enter_context(self._function_mode)
        stack.enter_context(self._dispatch_mode)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()


class _FunctionMode(TorchFunctionMode):
    def __init__(self, counter: SyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        counter = self.counter
        name = getattr(func, '__name__', '')
        inputs = _tensors((args, kwargs))
        on_host = bool(inputs) and all(counter.is_host(t) for t in inputs)
        result = func(*args, **kwargs)
        if name in _TO_HOST and args and isinstance(args[0], torch.Tensor):
            if not counter.is_host(args[0]):
                counter.add('to_host')
            if name == 'cpu':
                result = _fresh(result, args[0])
                counter.mark_host(result)
        elif name in ('to', 'cuda') and args and isinstance(args[0], torch.Tensor):
            if counter.is_host(args[0]) and (name == 'cuda' or _device_argument(args[1:], kwargs) is not None):
                if not kwargs.get('non_blocking', False):
                    counter.add('to_device')
                result = _fresh(result, args[0])
            elif on_host:
                counter.mark_host(result)
        elif name in ('as_tensor', 'tensor'):
            data = args[0] if args else kwargs.get('data')
            device = kwargs.get('device')
            host_data = not isinstance(data, torch.Tensor) or counter.is_host(data)
            if device is not None and host_data:
                counter.add('to_device')
            elif device is None and host_data:
                counter.mark_host(result)
        elif on_host or (not inputs and kwargs.get('device') is None):
            counter.mark_host(result)   # results of host tensors only, and factories without a device
        return result


class _DispatchMode(TorchDispatchMode):
    def __init__(self, counter: SyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        counter = self.counter
        inputs = _tensors((args, kwargs))
        if not (inputs and all(counter.is_host(t) for t in inputs)):
            kind = _ALWAYS.get(func)
            if kind is not None:
                counter.add(kind)
            elif func in _INDEXING:
                masks = [index for index in (args[1] if len(args) > 1 else ()) if isinstance(index, torch.Tensor)
                         and index.dtype in (torch.bool, torch.uint8)]
                if masks:
                    counter.add('bool_index', len(masks))
            elif func in _REPEATS and kwargs.get('output_size') is None:
                counter.add('repeat_interleave')
        return func(*args, **kwargs)


def _fresh(result, source: torch.Tensor):
    """A new tensor object for a copy that the CPU skipped (``.cpu()`` / ``.to(device)`` of a CPU tensor returns
    the tensor itself): the copy's host tag must not change the source's."""
    return result.view_as(result) if result is source else result


def _device_argument(args, kwargs):
    """The device a ``.to(...)`` call names (positional device / string / tensor, or ``device=``), else None."""
    if kwargs.get('device') is not None:
        return kwargs['device']
    for value in args:
        if isinstance(value, (str, torch.device)):
            return value
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def _caller() -> str:
    """folder/file:line of the innermost frame outside torch, this module and device_ops (trace mode)."""
    frame = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if not str(path).startswith(_SKIPPED):
            return f'{path.parent.name}/{path.name}:{frame.f_lineno}'
        frame = frame.f_back
    return '?'


_HERE = Path(__file__).parent
_SKIPPED = (str(Path(torch.__file__).parent), str(Path(torch.__file__).resolve().parent), str(_HERE / 'syncs.py'),
            str(_HERE / 'device_ops.py'))


@contextlib.contextmanager
def _patched(owner, name: str, value):
    """Set ``owner.name`` for the block, then restore the raw attribute (a class's staticmethod stays one)."""
    own = vars(owner) if isinstance(owner, type) else getattr(owner, '__dict__', {})
    missing = object()
    previous = own.get(name, missing) if name in own or isinstance(owner, type) else getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if previous is missing:
            delattr(owner, name)
        else:
            setattr(owner, name, previous)


@contextlib.contextmanager
def gpu_strategies(nearest: bool = True):
    """Run the code paths chosen for CUDA on CPU tensors: the `_cpu_strategy` switches of mean shift, merging, the
    sync-free helpers and (where the module has one, and with `nearest`) the frame path's nearest-neighbour search
    return False. The
    torch sampler and the torch FPS are options of the segmenter / backend (`gpu_like_segmenter` sets them)."""
    import mpnet_model.infer.meanshift as meanshift
    import mpnet_model.infer.merging as merging
    import mpnet_model.infer.scene as scene
    try:
        import mpnet_model.infer.device_ops as device_ops
    except ImportError:                 # code before issue 25
        device_ops = meanshift

    with contextlib.ExitStack() as stack:
        for module in (meanshift, merging, device_ops, *((scene,) if nearest else ())):
            if hasattr(module, '_cpu_strategy'):
                stack.enter_context(_patched(module, '_cpu_strategy', lambda device: False))
        yield


@contextlib.contextmanager
def stage_attribution(counter: SyncCounter, emulate_cuda: bool = True):
    """Attribute the counts to the stages of the frame path's stage timer (`scene._Clock`): what runs before
    ``lap(name)`` to ``name``, what runs inside the timer to 'timer', what runs after the last lap to 'output'.
    The timer is switched to its CUDA behaviour (the clock before issue 25: ``sync`` after every lap; the new one:
    CUDA events, here a CPU stand-in `_HostEvent`), so its synchronisations are counted as on a GPU;
    ``emulate_cuda=False`` on a real CUDA device."""
    import mpnet_model.infer.scene as scene

    clock = scene._Clock
    original_init, original_lap, original_finish = clock.__init__, clock.lap, clock.finish
    uses_events = hasattr(clock, '_uses_events')

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if emulate_cuda and not uses_events:
            self.sync = True
        counter.stage = 'blocks'

    def lap(self, name):
        counter.stage = 'timer'
        try:
            original_lap(self, name)
        finally:
            nxt = STAGES[STAGES.index(name) + 1] if name in STAGES[:-2] else 'output'
            counter.stage = nxt

    def finish(self):
        counter.stage = 'timer'
        try:
            return original_finish(self)
        finally:
            counter.stage = 'other'

    with contextlib.ExitStack() as stack:
        if emulate_cuda and uses_events:
            stack.enter_context(_patched(clock, '_uses_events', staticmethod(lambda device: True)))
            stack.enter_context(_patched(clock, '_event', staticmethod(_HostEvent)))
        for name, value in (('__init__', init), ('lap', lap), ('finish', finish)):
            stack.enter_context(_patched(clock, name, value))
        yield


class _HostEvent:
    """CPU stand-in for `torch.cuda.Event(enable_timing=True)` while counting (there is no CUDA here): records
    `time.perf_counter`; ``synchronize`` counts as the sync it is on CUDA."""

    def __init__(self, enable_timing: bool = True):
        self.time = None

    def record(self, stream=None) -> None:
        import time
        self.time = time.perf_counter()

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def elapsed_time(self, end: _HostEvent) -> float:
        return (end.time - self.time) * 1e3


def gpu_like_segmenter(**options):
    """The shipped model on the torch backend on the CPU with the GPU choices: torch sampler, torch FPS."""
    from mpnet_model.infer.scene import SceneSegmenter

    options.setdefault('sampler', 'torch')
    return SceneSegmenter.from_config('torch', '', device='cpu', backend_options={'fps': 'torch'}, **options)


def frame_syncs(segmenter, xyz: np.ndarray, intensity: np.ndarray | None = None, rgb: np.ndarray | None = None,
                trace: bool = False, nearest: bool = True) -> tuple[SyncCounter, object]:
    """Count the syncs of one `segmenter.segment` call with the GPU strategies forced -> (counter, result).
    ``nearest=False`` keeps the k-d tree for the unsampled points (as code without that switch runs on the CPU)."""
    counter = SyncCounter(trace=trace)
    with gpu_strategies(nearest), stage_attribution(counter), counter:
        result = segmenter.segment(xyz, rgb, intensity)
    return counter, result
