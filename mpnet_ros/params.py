"""Node parameters: one table of specs (SPECS); SegmentParams, ROS descriptors, validation and runtime rebuilds
are derived from it.

`validate_params` is ROS-free (unit-tested without rclpy) and the one check for every source of values: params
files, `-p` overrides (read from the command line too, see `command_line_values`), runtime `set_parameters` and
`mpnet-bag --params-file`. `declare_and_read` validates, warns about unknown names, then declares every parameter
on a node with a `ParameterDescriptor` (description + range) and its validated value.
Defaults here equal `config/segment.yaml` (a test checks that).
"""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, make_dataclass
from pathlib import Path
from typing import Any

import yaml

from mpnet_model.default_model import default_model_path
from mpnet_model.infer.backends.registry import BACKEND_NAMES, find_backend
from mpnet_model.infer.blocking import LAYOUTS
from mpnet_model.infer.precision import PRECISIONS  # fp32 | fp16 | bf16

BACKENDS = BACKEND_NAMES
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
    # What a runtime change rebuilds (the node's set-parameters callback): 'segmenter' (model, backend, clustering),
    # 'window' (the accumulated frames are dropped), 'tracker' (ids start over), 'transforms', 'subscription',
    # 'timer', 'map' (the semantic map starts over, or is loaded), 'map_config' (its bounds and thresholds change,
    # the voxels stay); () = read for every frame.
    rebuild: tuple[str, ...] = ()


# The one table of parameters: defaults, descriptions, ranges, choices and runtime rebuilds. SegmentParams, the ROS
# descriptors, validation and the runtime-change callback are all derived from it; add a parameter here only.
SPECS: dict[str, ParamSpec] = {
    'input_topic': ParamSpec('~/input', 'PointCloud2 topic to segment (or remap ~/input).', rebuild=('subscription',)),
    'window_frames': ParamSpec(1, 'Accumulate this many newest frames before segmenting.', 1, 100,
                               rebuild=('window',)),
    'window_seconds': ParamSpec(0.0, 'Also drop frames older than this from the window (0 = frames only).', 0.0, 600.0,
                                rebuild=('window',)),
    'fixed_frame': ParamSpec('', "Frame to accumulate in via tf2; '' = static sensor, clouds stay in their frame.",
                             rebuild=('window', 'transforms', 'tracker', 'map')),
    'fallback_frame_id': ParamSpec('sensor', 'Frame used (with a warning) for clouds whose header.frame_id is empty.'),
    'min_range': ParamSpec(0.0, 'Drop points closer than this to the sensor origin [m].', 0.0, 1000.0),
    'max_range': ParamSpec(0.0, 'Drop points farther than this from the sensor origin [m] (0 = no limit).',
                           0.0, 1000.0),
    'max_coordinate': ParamSpec(1000.0, 'Reject clouds with a coordinate beyond +-this in the sensor frame [m] '
                                '(corrupt or unscaled data), before anything is allocated from coordinates.',
                                1.0, 1_000_000.0),
    'crop_box': ParamSpec([0.0] * 6, 'Keep points inside [xmin, ymin, zmin, xmax, ymax, zmax] in the fixed frame '
                          '(all zeros = off).'),
    'gravity_align': ParamSpec('auto', "Without tf (fixed_frame ''), rotate each window so its dominant floor "
                               "plane is level before segmenting, results given back in the input frame; 'off' = "
                               'trust the frame as z-up.', choices=('auto', 'off')),
    'floor_source': ParamSpec('estimate', "Floor of the model's 'floor' input encoding: 'estimate' it from each "
                              "window (lowest dominant horizontal surface near the sensor, mpnet_model/infer/floor.py)"
                              ", 'fixed_frame' (z = floor_z in fixed_frame, e.g. a base frame on the floor), or "
                              "'sensor_height' (the sensor origin is sensor_height above the floor). A known floor "
                              "wins over the estimate; 'room' models ignore it.",
                              choices=('estimate', 'fixed_frame', 'sensor_height')),
    'floor_z': ParamSpec(0.0, 'Height of the floor in fixed_frame [m] (floor_source fixed_frame).', -1000.0, 1000.0),
    'sensor_height': ParamSpec(0.0, 'Height of the sensor origin above the floor [m] (floor_source sensor_height).',
                               0.0, 100.0),
    'voxel_size': ParamSpec(0.0, 'Segment one point per voxel of this edge [m] and copy its result to the voxel '
                            '(0 = off).', 0.0, 10.0),
    'drop_zero_points': ParamSpec(True, 'Treat 0,0,0 points as invalid returns (Ouster and others publish them).'),
    'backend': ParamSpec('onnxruntime', 'Inference backend.', choices=BACKENDS, rebuild=('segmenter',)),
    'model_path': ParamSpec('', "Checkpoint (.pt, torch) or ONNX model (.onnx, onnxruntime/tensorrt); '' = the "
                            'shipped default model.', rebuild=('segmenter',)),
    'engine_path': ParamSpec('', 'TensorRT engine file (built from the ONNX model_path when missing or stale; '
                             "'' = cached automatically, see engine_cache_dir).", rebuild=('segmenter',)),
    'engine_cache_dir': ParamSpec('', "Folder for cached TensorRT engines ('' = next to model_path when writable, "
                                  'else $XDG_CACHE_HOME/mpnet_ros).', rebuild=('segmenter',)),
    'precision': ParamSpec('fp32', 'Inference precision: fp16 (all backends; CPU too), bf16 (torch).',
                           choices=PRECISIONS, rebuild=('segmenter',)),
    'device': ParamSpec('cpu', "Inference device: 'cpu', 'cuda' or 'cuda:N'.", rebuild=('segmenter',)),
    'cluster_bandwidth': ParamSpec(0.0, "Mean-shift bandwidth on instance embeddings (0 = the model's tuned value "
                                   'for sensor_kind, else its general one, 0.6 when the model records none).',
                                   0.0, 10.0, rebuild=('segmenter',)),
    'min_instance_fraction': ParamSpec(-1.0, "Drop instances under this fraction of their class's mean training "
                                       "instance size (in the active size_filter's measure; the model records the "
                                       "sizes and its tuned fractions). -1 = the model's value, 0 = off (crops and "
                                       "short-range frames hold smaller instances than the whole rooms the point "
                                       "sizes come from).",
                                       -1.0, 100.0, rebuild=('segmenter',)),
    'min_instance_points': ParamSpec(0, 'Instances with fewer points are dropped (instance -1); 0 = the model\'s '
                                     'floor for sensor_kind (tuned with its size filter; 50 when it has none).', 0,
                                     10_000_000, rebuild=('segmenter',)),
    'size_filter': ParamSpec('auto', "Per-class instance size filter (mpnet_model/infer/instances.py): area = "
                             "occupied area at 0.1 m voxels, alike near and far; points = point counts (ASIS's, the "
                             "filter before issue 23); off; auto = area when the model has it for sensor_kind, else "
                             'points. min_instance_fraction scales the active one; the log and /diagnostics name it.',
                             choices=('auto', 'area', 'points', 'off'), rebuild=('segmenter',)),
    'sensor_kind': ParamSpec('lidar', "Whose tuned instance settings of the model apply (area fraction, fragment "
                             'join): lidar, rgbd (depth cameras) or static (whole-room scans).',
                             choices=('lidar', 'rgbd', 'static'), rebuild=('segmenter',)),
    'fragment_join': ParamSpec(-1.0, 'Join touching instances of the same class within this distance [m] before the '
                               "size filter; -1 = the model's value for sensor_kind (0 when it has none), 0 = off.",
                               -1.0, 1.0, rebuild=('segmenter',)),
    'block_layout': ParamSpec('adaptive', 'Which 1 m blocks are segmented (docs/frame_layouts.md): adaptive = all '
                              'overlapping blocks where the cloud is dense, redundant sparse ones dropped; grid = '
                              'all (stride 0.5 m).', choices=LAYOUTS, rebuild=('segmenter',)),
    'border_join': ParamSpec(0.2, 'Join same-class instances that touch within this distance [m] across the border '
                             'of sparse blocks that never held both sides (whole objects in sparse lidar under '
                             'adaptive; no effect on dense clouds); 0 = off.', 0.0, 0.45, rebuild=('segmenter',)),
    'tracking': ParamSpec(True, 'Keep instance ids across frames (false: ids are per frame, largest first).',
                          rebuild=('tracker',)),
    'track_max_distance': ParamSpec(1.0, 'An instance continues a track of its class whose box centre is within '
                                    'this distance [m] (or whose box overlaps it by track_min_iou).', 0.01, 100.0,
                                    rebuild=('tracker',)),
    'track_min_iou': ParamSpec(0.1, '3-D box IoU at which an instance may continue a track of its class.', 0.0, 1.0,
                               rebuild=('tracker',)),
    'track_max_misses': ParamSpec(5, 'Frames a track may go unmatched before its id retires.', 0, 1000,
                                  rebuild=('tracker',)),
    'max_points': ParamSpec(2_000_000, 'Reject clouds (and windows) with more points than this.', 1, 100_000_000),
    'processing_budget_ms': ParamSpec(1000.0, 'Per-frame processing budget: frames are capped to the blocks that fit '
                                      '(measured ms per block) and diagnostics warn above it.', 1.0, 3_600_000.0),
    'oversize_action': ParamSpec('crop', "A frame over its block cap: 'crop' to the nearest range that fits, or "
                                 "'refuse' it.", choices=('crop', 'refuse')),
    'marker_lifetime': ParamSpec(0.0, 'Seconds RViz keeps a marker that is not refreshed (0 = auto: 3 x the mean '
                                 'processing time, at least 1 s).', 0.0, 3600.0),
    'diagnostics_period': ParamSpec(1.0, 'Seconds between /diagnostics messages.', 0.05, 60.0, rebuild=('timer',)),
    'warn_throttle_sec': ParamSpec(5.0, 'Minimum seconds between warnings of the same kind about bad input.',
                                   0.0, 3600.0),
    # Semantic map mode (mpnet_model.mapping, docs/mapping.md).
    'mapping': ParamSpec(False, 'Semantic map mode: fuse labels in a voxel map in fixed_frame (with fixed_frame '
                         "'', the sensor's own frame: a static sensor), segment only the blocks that changed, label "
                         'each cloud from the map and publish ~/map_cloud (each frame is integrated once: '
                         'window_frames is not used).', rebuild=('map', 'window')),
    'map_voxel_size': ParamSpec(0.05, 'Voxel edge of the semantic map [m].', 0.01, 1.0, rebuild=('map',)),
    'map_radius': ParamSpec(20.0, 'The map keeps the voxels within this horizontal distance of the sensor [m].',
                            1.0, 10_000.0, rebuild=('map_config',)),
    'map_max_voxels': ParamSpec(1_000_000, 'At most this many voxels (the oldest are evicted; ~110 bytes each with '
                                '13 classes).', 1000, 1_000_000_000, rebuild=('map_config',)),
    'map_dirty_fraction': ParamSpec(0.5, 'A block is segmented again when the change cells that became occupied or '
                                    'empty since its last run reach this fraction of its occupied cells then (and '
                                    'map_min_changed).', 0.0, 100.0, rebuild=('map_config',)),
    'map_min_changed': ParamSpec(10, 'Change cells a block needs to change before it is segmented again.', 1,
                                 1_000_000, rebuild=('map_config',)),
    'map_change_cell': ParamSpec(0.25, 'Edge of the cells in which occupancy changes are counted [m] (filling in a '
                                 'surface already seen changes nothing; new area does); at least map_voxel_size.',
                                 0.01, 10.0,
                                 rebuild=('map',)),
    'map_publish_rate': ParamSpec(1.0, 'Rate of ~/map_cloud [Hz] (0 = never).', 0.0, 100.0),
    'map_load_path': ParamSpec('', "Start from this map file (.npz or .ply); '' = an empty map.", rebuild=('map',)),
    'map_save_path': ParamSpec('', "Write the map here (.npz or .ply, atomically) on shutdown and when the "
                               "~/save_map service is called; '' = never."),
}

# ROS's own parameters: not ours, never "unknown".
ROS_PARAMETERS = ('use_sim_time', 'start_type_description_service')
ROS_PARAMETER_PREFIXES = ('qos_overrides.',)


def _field_type(default: Any) -> type:
    return tuple if isinstance(default, list) else type(default)


def _crop_enabled(self) -> bool:
    return any(v != 0.0 for v in self.crop_box)


# Frozen, one field per SPECS entry (lists become tuples).
SegmentParams = make_dataclass('SegmentParams', [(name, _field_type(spec.default)) for name, spec in SPECS.items()],
                               frozen=True, namespace={'crop_enabled': property(_crop_enabled),
                                                       '__module__': __name__})


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
    wanted, suffix = find_backend(backend).model_suffix, Path(model_path).suffix.lower()
    if suffix != wanted:
        kind = {'.pt': 'a checkpoint', '.onnx': 'an ONNX model'}
        found = 'is an ONNX file; ' if suffix == '.onnx' else ''
        raise ParamError('model_path', model_path, f'{found}backend {backend!r} needs {kind.get(wanted, "a model")} '
                                                   f'({wanted})')


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
    if merged['floor_source'] == 'fixed_frame' and not merged['fixed_frame']:
        raise ParamError('floor_source', 'fixed_frame', "needs fixed_frame (the frame whose z = floor_z is the floor)")
    if merged['floor_source'] == 'sensor_height' and not merged['sensor_height'] > 0:
        raise ParamError('sensor_height', merged['sensor_height'], "must be > 0 with floor_source 'sensor_height'")
    if not merged['fallback_frame_id']:
        raise ParamError('fallback_frame_id', '', 'must not be empty')
    if merged['backend'] == 'tensorrt' and not merged['device'].startswith('cuda'):
        raise ParamError('backend', 'tensorrt', f"TensorRT runs on a CUDA GPU only, but device is "
                         f"{merged['device']!r}: set device:=cuda (on a machine with TensorRT), or choose backend "
                         "onnxruntime or torch")
    _check_map_params(merged, check_files)
    if check_files:
        _check_model_files(merged)
    return SegmentParams(**merged)


def _check_map_params(params: dict[str, Any], check_files: bool) -> None:
    for key in ('map_load_path', 'map_save_path'):
        path = params[key]
        if path and Path(path).suffix.lower() not in ('.npz', '.ply'):
            raise ParamError(key, path, 'a map file ends in .npz or .ply')
    if check_files and params['map_load_path'] and not Path(params['map_load_path']).is_file():
        raise ParamError('map_load_path', params['map_load_path'], 'file does not exist')



def as_values(params: SegmentParams) -> dict[str, Any]:
    """The params as plain values (tuples as lists), e.g. to merge a change into and validate again."""
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in ((name, getattr(params, name)) for name in SPECS)}


def rebuilds(old: SegmentParams, new: SegmentParams) -> set[str]:
    """What a change from `old` to `new` rebuilds (see ParamSpec.rebuild)."""
    return {tag for name, spec in SPECS.items() if getattr(old, name) != getattr(new, name) for tag in spec.rebuild}


def is_ros_parameter(name: str) -> bool:
    return name in ROS_PARAMETERS or name.startswith(ROS_PARAMETER_PREFIXES)


def unknown_parameter_warnings(names: Any) -> list[str]:
    """One warning per name that is neither ours nor ROS's, with the closest known name when there is one."""
    warnings = []
    for name in sorted(set(names)):
        if name in SPECS or is_ros_parameter(name):
            continue
        close = difflib.get_close_matches(name, list(SPECS), n=1)
        hint = f' (did you mean {close[0]!r}?)' if close else f'; known: {", ".join(SPECS)}'
        warnings.append(f'unknown parameter {name!r} ignored{hint}')
    return warnings


# --- values as the command line gives them ---------------------------------------------------------------------

_ROS_FLAGS_WITH_VALUE = {'-r', '--remap', '-e', '--enclave', '--log-level', '--log-config-file',
                         '--log-file-name'}


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f'{prefix}.{key}' if prefix else str(key), inner, out)
    else:
        out[prefix] = value


def params_file_values(path: str | Path, node_name: str, namespace: str = '/') -> dict[str, Any]:
    """The values a ROS 2 params YAML gives node `node_name`: its '/**' section, then the node's own sections."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    full = '/'.join(part for part in (namespace.strip('/'), node_name) if part)
    sections = ['/**', '/**/' + node_name, node_name, '/' + node_name, full, '/' + full]
    out: dict[str, Any] = {}
    for key in dict.fromkeys(sections):
        section = data.get(key) if isinstance(data, dict) else None
        if isinstance(section, dict) and isinstance(section.get('ros__parameters'), dict):
            _flatten('', section['ros__parameters'], out)
    return out


def command_line_values(argv: Any, node_name: str, namespace: str = '/') -> dict[str, Any]:
    """Parameter values the ROS arguments of `argv` give this node, in command-line order (later wins):
    `--params-file FILE` and `-p/--param [node:]NAME:=VALUE` (VALUE parsed as YAML, as rcl does).

    rcl itself silently keeps a params file's value when a later `-p` value has another type (`voxel_size:=abc`
    after a file setting 0.0); reading the arguments here lets such values be validated and refused by name."""
    out: dict[str, Any] = {}
    args = list(argv or [])
    inside, i = False, 0
    while i < len(args):
        arg = args[i]
        if arg == '--ros-args':
            inside = True
        elif arg == '--' and inside:
            inside = False
        elif inside and arg in ('-p', '--param') and i + 1 < len(args):
            i += 1
            name, sep, text = args[i].partition(':=')
            if sep:
                node, colon, bare = name.rpartition(':')
                if not colon or node in (node_name, '/' + node_name):
                    out[bare if colon else name] = yaml.safe_load(text) if text else ''
        elif inside and arg == '--params-file' and i + 1 < len(args):
            i += 1
            out.update(params_file_values(args[i], node_name, namespace))
        elif inside and arg in _ROS_FLAGS_WITH_VALUE:
            i += 1
        i += 1
    return out


def ros_value(value: Any) -> Any:
    """A validated value as rclpy declares it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def declare_and_read(node: Any, check_files: bool = True, argv: Any = None) -> SegmentParams:
    """Validate the node's parameter values, then declare every parameter with a descriptor (description, range)
    and its validated value.

    The values are what rclpy received (params files, `-p`, `parameter_overrides`), overlaid with what `argv`'s
    ROS arguments say (see `command_line_values`), so a params file and an override are validated the same way.
    Unknown names are warned about by name on the node's logger; a bad value raises ParamError naming it.
    """
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    values = {name: parameter.value for name, parameter in getattr(node, '_parameter_overrides', {}).items()}
    if argv:
        values.update(command_line_values(argv, node.get_name(), node.get_namespace()))
    for warning in unknown_parameter_warnings(values):
        node.get_logger().warning(warning)
    params = validate_params({name: values[name] for name in SPECS if name in values}, check_files=check_files)
    for name, spec in SPECS.items():
        description = spec.description + (f' One of {list(spec.choices)}.' if spec.choices else '')
        descriptor = ParameterDescriptor(name=name, description=description)
        if spec.low is not None and isinstance(spec.default, float):
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.low),
                                                                  to_value=float(spec.high), step=0.0)]
        elif spec.low is not None:
            descriptor.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
        node.declare_parameter(name, ros_value(getattr(params, name)), descriptor, ignore_override=True)
    return params
