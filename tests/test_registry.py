"""The backend table is the one source of backend names, aliases, classes and model suffixes."""
from __future__ import annotations

import pytest

from mpnet_model.default_model import default_model_path
from mpnet_model.infer.backends.base import BACKEND_KINDS, BackendError, make_backend
from mpnet_model.infer.backends.registry import BACKEND_NAMES, BACKEND_SPECS, backend_for_suffix, find_backend


def test_table_rows_load_their_classes_and_aliases_resolve():
    assert BACKEND_NAMES == ('torch', 'onnxruntime', 'tensorrt') == BACKEND_KINDS
    for spec in BACKEND_SPECS:
        cls = spec.load()      # tensorrt_backend imports without TensorRT (its import is lazy)
        assert cls.name == spec.name, spec
        assert find_backend(spec.name) is spec
        assert all(find_backend(alias) is spec for alias in spec.aliases)
    assert find_backend('ORT').name == 'onnxruntime' and find_backend('trt').name == 'tensorrt'
    assert find_backend('tflite') is None
    assert backend_for_suffix('.PT').name == 'torch' and backend_for_suffix('.onnx').name == 'onnxruntime'
    with pytest.raises(ValueError, match="'.engine'"):
        backend_for_suffix('.engine')


def test_consumers_read_the_table():
    from mpnet_ros.params import BACKENDS

    assert BACKENDS is BACKEND_NAMES
    for spec in BACKEND_SPECS:
        assert default_model_path(spec.name).suffix == spec.model_suffix
    assert default_model_path('ort').suffix == '.onnx'
    with pytest.raises(BackendError, match=r"backend='tflite': choose one of \('torch', 'onnxruntime', 'tensorrt'\)"):
        make_backend('tflite', '')
