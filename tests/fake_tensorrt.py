"""A FAKE TensorRT, for tests only: TensorRT and a GPU cannot exist on the CPU machines this suite runs on.

`FakeTensorRTBuilder` stands in for `TensorRTBuilder` (build / deserialize / version / device), and the engines it
returns implement the TensorRT 10 tensor API the backend uses (`num_io_tensors`, `get_tensor_name` / `_mode` /
`_shape` / `_dtype` / `_profile_shape`, `create_execution_context`; on the context `set_input_shape`,
`get_tensor_shape`, `set_tensor_address`, `execute_async_v3`) over a real ONNX Runtime session. Like TensorRT it
only sees raw buffer addresses: `execute_async_v3` reads the inputs from, and writes the outputs to, the memory
at the addresses the backend set, so the backend's buffer shapes, dtypes and addresses are exercised for real (on
CPU torch tensors). Like TensorRT, misuse returns False instead of raising.

"Engines" are the ONNX bytes behind a header; a built fp16 engine holds the graph given by `convert_fp16`, when
one is passed, so the runtime path also runs the fp16-converted graph.
"""
from __future__ import annotations

import ctypes
import enum
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch


class FakeDataType(enum.Enum):
    FLOAT = 'float32'
    HALF = 'float16'
    INT32 = 'int32'
    INT64 = 'int64'
    BOOL = 'bool'


class FakeTensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


_ORT_TYPES = {'tensor(float)': FakeDataType.FLOAT, 'tensor(float16)': FakeDataType.HALF,
              'tensor(int32)': FakeDataType.INT32, 'tensor(int64)': FakeDataType.INT64,
              'tensor(bool)': FakeDataType.BOOL}


class FakeTensorRTBuilder:
    """FAKE stand-in for TensorRTBuilder; records its builds."""

    MAGIC = b'FAKE-TRT-ENGINE\n'

    def __init__(self, version='10.3.0', device_name='NVIDIA Jetson Orin', compute_capability='sm87',
                 convert_fp16=None, io_override=None):
        self.version, self.device_name, self.compute_capability = version, device_name, compute_capability
        self.device = torch.device('cpu')
        self.convert_fp16 = convert_fp16
        self.io_override = io_override or {}     # tensor -> (shape, dtype) reported instead of the graph's
        self.builds: list[tuple[str, str]] = []

    def build(self, onnx_path, precision, profile_batch=(1, 8, 16), workspace_bytes=1 << 30):
        onnx_path = Path(onnx_path)
        self.builds.append((onnx_path.name, precision))
        graph = onnx_path.read_bytes()
        if precision == 'fp16' and self.convert_fp16 is not None:
            converted = onnx_path.with_name(onnx_path.stem + '.fake-fp16.onnx')
            self.convert_fp16(onnx_path, converted)
            graph = converted.read_bytes()
            converted.unlink()
        header = json.dumps({'precision': precision, 'profile': list(profile_batch)}).encode()
        return self.MAGIC + header + b'\n' + graph

    def deserialize(self, engine_bytes):
        if not engine_bytes.startswith(self.MAGIC):
            raise RuntimeError('corrupt engine')     # the real builder raises BackendError for a None engine
        header, graph = engine_bytes[len(self.MAGIC):].split(b'\n', 1)
        return FakeEngine(graph, json.loads(header), self.io_override)


class FakeEngine:
    """FAKE ICudaEngine over an ONNX Runtime session (one optimisation profile over the batch axis)."""

    def __init__(self, graph: bytes, header: dict, io_override: dict):
        self.session = ort.InferenceSession(graph, providers=['CPUExecutionProvider'])
        self.precision = header['precision']
        self.profile = tuple(header['profile'])
        self.num_optimization_profiles = 1
        self.io: dict[str, tuple[FakeTensorIOMode, tuple[int, ...], FakeDataType]] = {}
        for mode, items in ((FakeTensorIOMode.INPUT, self.session.get_inputs()),
                            (FakeTensorIOMode.OUTPUT, self.session.get_outputs())):
            for item in items:
                shape = tuple(d if isinstance(d, int) else -1 for d in item.shape)
                self.io[item.name] = (mode, shape, _ORT_TYPES[item.type])
        for name, (shape, dtype) in io_override.items():
            self.io[name] = (self.io[name][0], tuple(shape), dtype)
        self.names = list(self.io)
        self.contexts: list[FakeExecutionContext] = []

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> FakeTensorIOMode:
        return self.io[name][0] if name in self.io else FakeTensorIOMode.NONE

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.io[name][1]

    def get_tensor_dtype(self, name: str) -> FakeDataType:
        return self.io[name][2]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        if self.get_tensor_mode(name) != FakeTensorIOMode.INPUT or profile_index != 0:
            raise RuntimeError(f'no profile shape for {name} / profile {profile_index}')
        return [(batch, *self.io[name][1][1:]) for batch in self.profile]

    def create_execution_context(self) -> FakeExecutionContext:
        context = FakeExecutionContext(self)
        self.contexts.append(context)
        return context


class FakeExecutionContext:
    """FAKE IExecutionContext: shapes, addresses and execution over the engine's ONNX Runtime session."""

    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.executions = 0

    def set_input_shape(self, name: str, shape) -> bool:
        mode, declared, _ = self.engine.io.get(name, (FakeTensorIOMode.NONE, (), None))
        shape = tuple(int(d) for d in shape)
        if mode != FakeTensorIOMode.INPUT or len(shape) != len(declared):
            return False
        if any(d != s for d, s in zip(declared, shape) if d != -1):
            return False
        if not self.engine.profile[0] <= shape[0] <= self.engine.profile[-1]:
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        mode, declared, _ = self.engine.io[name]
        if mode == FakeTensorIOMode.INPUT:
            return self.shapes.get(name, declared)
        inputs = [n for n, (m, _, _) in self.engine.io.items() if m == FakeTensorIOMode.INPUT]
        if not all(n in self.shapes for n in inputs):
            return declared
        batch = self.shapes[inputs[0]][0]
        return tuple(batch if d == -1 else d for d in declared)

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name not in self.engine.io or not address:
            return False
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        if set(self.addresses) != set(self.engine.io):
            return False
        feeds = {}
        for item in self.engine.session.get_inputs():
            if item.name not in self.shapes:
                return False
            dtype = np.dtype(self.engine.io[item.name][2].value)
            shape = self.shapes[item.name]
            size = int(np.prod(shape)) * dtype.itemsize
            raw = (ctypes.c_char * size).from_address(self.addresses[item.name])
            graph_dtype = np.dtype(_ORT_TYPES[item.type].value)     # the buffer may be narrower (INT32 indices)
            feeds[item.name] = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(graph_dtype)
        results = self.engine.session.run(None, feeds)
        for item, value in zip(self.engine.session.get_outputs(), results):
            dtype = np.dtype(self.engine.io[item.name][2].value)
            value = np.ascontiguousarray(value, dtype=dtype)
            if value.shape != self.get_tensor_shape(item.name):
                return False
            ctypes.memmove(self.addresses[item.name], value.ctypes.data, value.nbytes)
        self.executions += 1
        return True
