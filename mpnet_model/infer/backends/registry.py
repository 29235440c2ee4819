"""The one table of inference backends: name, implementing class ('module:Class', imported lazily), the model file
suffix it loads and the aliases it answers to.

Everything that names a backend (make_backend, the node's parameter checks, the shipped-default lookup, the CLI
choices) reads this table, so adding a backend is one row. This module imports nothing heavy (no torch, no
onnxruntime, no tensorrt) and nothing from the backends, which import it indirectly through base.py.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class BackendSpec:
    name: str
    target: str                      # 'package.module:Class', imported on first use
    model_suffix: str                # the model file the backend loads ('.pt' checkpoint or '.onnx' export)
    aliases: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ('fp32', 'fp16', 'bf16')   # what it can run (docs/precision.md)

    def load(self) -> type:
        """Import and return the backend class (the import is what pulls in torch / onnxruntime / tensorrt)."""
        module, _, attribute = self.target.partition(':')
        return getattr(importlib.import_module(module), attribute)


BACKEND_SPECS: tuple[BackendSpec, ...] = (
    BackendSpec('torch', 'mpnet_model.infer.backends.torch_backend:TorchBackend', '.pt'),
    BackendSpec('onnxruntime', 'mpnet_model.infer.backends.onnx_backend:OnnxRuntimeBackend', '.onnx', ('onnx', 'ort'),
                ('fp32', 'fp16')),
    BackendSpec('tensorrt', 'mpnet_model.infer.backends.tensorrt_backend:TensorRTBackend', '.onnx', ('trt',),
                ('fp32', 'fp16')),
)
BACKEND_NAMES: tuple[str, ...] = tuple(spec.name for spec in BACKEND_SPECS)


def find_backend(kind: str) -> BackendSpec | None:
    """The spec for a backend name or alias (case-insensitive); None when unknown."""
    kind = kind.lower()
    return next((spec for spec in BACKEND_SPECS if kind == spec.name or kind in spec.aliases), None)


def backend_for_suffix(path_suffix: str) -> BackendSpec:
    """The first backend (table order) that loads files with this suffix: '.pt' -> torch, '.onnx' -> onnxruntime."""
    suffix = path_suffix.lower()
    spec = next((spec for spec in BACKEND_SPECS if spec.model_suffix == suffix), None)
    if spec is None:
        raise ValueError(f'no backend loads {path_suffix!r} files (known: '
                         f'{sorted({s.model_suffix for s in BACKEND_SPECS})})')
    return spec
