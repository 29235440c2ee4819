"""Node parameters: one table of specs, ROS descriptors built from it, validation into a frozen dataclass.

`validate_params` is ROS-free (unit-tested without rclpy); `declare_and_read` declares every parameter on a node
with a `ParameterDescriptor` (description + range) and returns the validated `SegmentParams`.
Defaults here equal `config/segment.yaml` (a test checks that).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpnet_model.default_model import default_model_path

BACKENDS = ('torch', 'onnxruntime', 'tensorrt')
PRECISIONS = ('fp32', 'fp16')
_DEVICE_PATTERN = re.compile(r'^(cpu|cuda(:\d+)?)$')


class ParamError(ValueError):
    """A parameter is invalid; the message names the key and the value."""

    def __init__(self, key: str, value: Any, why: str):
        super().__init__(f'parameter {key!r}={value!r}: {why}')
        self.key, self.value = key, value


@dataclass(frozen=True)
class ParamSpec:
    default: Any
    description: str
    low: float | None = None    # inclusive bounds (also the ROS descriptor's range)
    high: float | None = None
    choices: tuple[str, ...] = ()


SPECS: dict[str, ParamSpec] = {
    'input_topic': ParamSpec('~/input', 'PointCloud2 topic to segment (or remap ~/input).'),
    'window_frames': ParamSpec(1, 'Accumulate this many newest frames before segmenting.', 1, 100),
    'window_seconds': ParamSpec(0.0, 'Also drop frames older than this from the window (0 = frames only).', 0.0, 600.0),
    'fixed_frame': ParamSpec('', "Frame to accumulate in via tf2; '' = static sensor, clouds stay in their frame."),
    'min_range': ParamSpec(0.0, 'Drop points closer than this to the sensor origin [m].', 0.0, 1000.0),
    'max_range': ParamSpec(0.0, 'Drop points farther than this from the sensor origin [m] (0 = no limit).',
                           0.0, 1000.0),
    'crop_box': ParamSpec([0.0] * 6, 'Keep points inside [xmin, ymin, zmin, xmax, ymax, zmax] in the fixed frame '
                          '(all zeros = off).'),
    'voxel_size': ParamSpec(0.0, 'Segment one point per voxel of this edge [m] and copy its result to the voxel '
                            '(0 = off).', 0.0, 10.0),
    'drop_zero_points': ParamSpec(True, 'Treat 0,0,0 points as invalid returns (Ouster and others publish them).'),
    'backend': ParamSpec('onnxruntime', 'Inference backend.', choices=BACKENDS),
    'model_path': ParamSpec('', "Checkpoint (.pt, torch) or ONNX model (.onnx, onnxruntime/tensorrt); '' = the "
                            'shipped default model.'),
    'engine_path': ParamSpec('', 'TensorRT engine cache (built from the ONNX model_path when missing or stale; '
                             "'' = next to model_path)."),
    'precision': ParamSpec('fp32', 'Inference precision.', choices=PRECISIONS),
    'device': ParamSpec('cpu', "Inference device: 'cpu', 'cuda' or 'cuda:N'."),
    'cluster_bandwidth': ParamSpec(0.0, "Mean-shift bandwidth on instance embeddings (0 = the model's tuned value, "
                                   '0.6 when the model records none).', 0.0, 10.0),
    'min_instance_points': ParamSpec(50, 'Instances with fewer points are dropped (instance -1).', 1, 10_000_000),
    'max_points': ParamSpec(2_000_000, 'Reject clouds (and windows) with more points than this.', 1, 100_000_000),
    'processing_budget_ms': ParamSpec(1000.0, 'Per-cloud processing time budget; diagnostics warn above it.',
                                      1.0, 3_600_000.0),
    'diagnostics_period': ParamSpec(1.0, 'Seconds between /diagnostics messages.', 0.05, 60.0),
    'warn_throttle_sec': ParamSpec(5.0, 'Minimum seconds between repeated warnings about bad input.', 0.0, 3600.0),
}


@dataclass(frozen=True)
class SegmentParams:
    input_topic: str
    window_frames: int
    window_seconds: float
    fixed_frame: str
    min_range: float
    max_range: float
    crop_box: tuple[float, ...]
    voxel_size: float
    drop_zero_points: bool
    backend: str
    model_path: str
    engine_path: str
    precision: str
    device: str
    cluster_bandwidth: float
    min_instance_points: int
    max_points: int
    processing_budget_ms: float
    diagnostics_period: float
    warn_throttle_sec: float

    @property
    def crop_enabled(self) -> bool:
        return any(v != 0.0 for v in self.crop_box)


def defaults() -> dict[str, Any]:
    return {name: spec.default for name, spec in SPECS.items()}


def _coerce(key: str, value: Any, default: Any) -> Any:
    """`value` as the type of `default`; ints are accepted for floats, nothing else is converted."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ParamError(key, value, 'must be a bool')
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(key, value, 'must be an integer')
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamError(key, value, 'must be a number')
        if not math.isfinite(value):
            raise ParamError(key, value, 'must be finite')
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ParamError(key, value, 'must be a string')
        return value
    if isinstance(default, list):
        if isinstance(value, (str, bytes)) or not hasattr(value, '__len__') or len(value) != len(default):
            raise ParamError(key, value, f'must be a list of {len(default)} numbers')
        return tuple(_coerce(key, v, 0.0) for v in value)
    raise TypeError(f'no coercion for {key}')  # a programming error in SPECS


def _check_model_files(params: dict[str, Any]) -> None:
    """The model files the chosen backend needs exist, so the node refuses to start instead of failing later."""
    backend, model_path = params['backend'], params['model_path']
    if not model_path:     # '' = the model shipped with the package
        try:
            params['model_path'] = model_path = str(default_model_path(backend))
        except FileNotFoundError as error:
            raise ParamError('model_path', '', str(error)) from error
    if not Path(model_path).is_file():
        raise ParamError('model_path', model_path, 'file does not exist')
    suffix = Path(model_path).suffix.lower()
    if backend == 'torch' and suffix == '.onnx':
        raise ParamError('model_path', model_path, "is an ONNX file; backend 'torch' needs a checkpoint (.pt)")
    if backend in ('onnxruntime', 'tensorrt') and suffix != '.onnx':
        raise ParamError('model_path', model_path, f'backend {backend!r} needs an ONNX model (.onnx)')


def validate_params(values: Mapping[str, Any], check_files: bool = True) -> SegmentParams:
    """Merge `values` over the defaults, check every key once and return the frozen params.

    Raises ParamError naming the first bad key and its value (unknown keys included).
    """
    unknown = sorted(set(values) - set(SPECS))
    if unknown:
        raise ParamError(unknown[0], values[unknown[0]], f'unknown parameter; known: {sorted(SPECS)}')
    merged: dict[str, Any] = {}
    for key, spec in SPECS.items():
        value = _coerce(key, values.get(key, spec.default), spec.default)
        if spec.choices and value not in spec.choices:
            raise ParamError(key, value, f'must be one of {list(spec.choices)}')
        if spec.low is not None and not spec.low <= value <= spec.high:
            raise ParamError(key, value, f'must be in [{spec.low}, {spec.high}]')
        merged[key] = value
    if not _DEVICE_PATTERN.match(merged['device']):
        raise ParamError('device', merged['device'], "must be 'cpu', 'cuda' or 'cuda:N'")
    if not merged['input_topic']:
        raise ParamError('input_topic', merged['input_topic'], 'must not be empty')
    if merged['max_range'] and merged['max_range'] <= merged['min_range']:
        raise ParamError('max_range', merged['max_range'], f"must be > min_range {merged['min_range']} (or 0 = off)")
    box = merged['crop_box']
    if any(box) and not all(box[i] < box[i + 3] for i in range(3)):
        raise ParamError('crop_box', list(box), 'needs xmin < xmax, ymin < ymax, zmin < zmax (or all zeros = off)')
    if check_files:
        _check_model_files(merged)
    return SegmentParams(**merged)


def declare_and_read(node: Any, check_files: bool = True) -> SegmentParams:
    """Declare every parameter on an rclpy node with a descriptor (description, range) and validate them."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    for name, spec in SPECS.items():
        description = spec.description + (f' One of {list(spec.choices)}.' if spec.choices else '')
        descriptor = ParameterDescriptor(name=name, description=description)
        if spec.low is not None and isinstance(spec.default, float):
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.low),
                                                                  to_value=float(spec.high), step=0.0)]
        elif spec.low is not None:
            descriptor.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
        node.declare_parameter(name, spec.default, descriptor)
    values = {name: node.get_parameter(name).value for name in SPECS}
    values['crop_box'] = list(values['crop_box'])
    return validate_params(values, check_files=check_files)
