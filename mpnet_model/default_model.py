"""The model shipped inside the package (trained on the synthetic rooms; see mpnet_model/assets/MODEL_CARD.md).

The node, `mpnet-bag`, `mpnet-eval` and the demo use it whenever no model path is given.
"""
from __future__ import annotations

from pathlib import Path

from mpnet_model.infer.backends.registry import find_backend

ASSETS = Path(__file__).resolve().parent / 'assets'
DEFAULT_CHECKPOINT = ASSETS / 'mpnet_synthetic.pt'     # torch backend
DEFAULT_ONNX = ASSETS / 'mpnet_synthetic.onnx'          # onnxruntime / tensorrt backends


def default_model_path(backend: str) -> Path:
    """The shipped model file for `backend` (by the model suffix in the backend table: '.pt' the checkpoint,
    '.onnx' the ONNX export)."""
    spec = find_backend(backend)
    if spec is None:
        raise ValueError(f'backend={backend!r} is not a known backend')
    path = DEFAULT_CHECKPOINT if spec.model_suffix == DEFAULT_CHECKPOINT.suffix else DEFAULT_ONNX
    if not path.is_file():
        raise FileNotFoundError(f'the shipped default model {path} is missing (a broken install?); '
                                'pass a model path explicitly')
    return path
