"""The model shipped inside the package (trained on the synthetic rooms; see mpnet_model/assets/MODEL_CARD.md).

The node, `mpnet-bag`, `mpnet-eval` and the demo use it whenever no model path is given.
"""
from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / 'assets'
DEFAULT_CHECKPOINT = ASSETS / 'mpnet_synthetic.pt'     # torch backend
DEFAULT_ONNX = ASSETS / 'mpnet_synthetic.onnx'          # onnxruntime / tensorrt backends


def default_model_path(backend: str) -> Path:
    """The shipped model file for `backend` ('torch' takes the checkpoint, the others the ONNX export)."""
    path = DEFAULT_CHECKPOINT if backend == 'torch' else DEFAULT_ONNX
    if not path.is_file():
        raise FileNotFoundError(f'the shipped default model {path} is missing (a broken install?); '
                                'pass a model path explicitly')
    return path
