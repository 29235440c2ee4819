"""`mpnet-bag IN OUT`: segment every PointCloud2 of a rosbag2 offline and write a new bag (`--map MAP`: map it).

Same core path as the node (cloud_io -> ScenePipeline -> SceneSegmenter) but every frame is processed (no drops).
Reads sqlite3 and mcap bags with `rosbags`; writes the chosen storage with
  <node>/labeled_cloud (sensor_msgs/PointCloud2), <node>/instances (visualization_msgs/MarkerArray) and
  <node>/detections (vision_msgs/Detection3DArray, when vision_msgs is installed: its types are registered in the
  rosbags typestore from the installed .msg definitions; without it the topic is skipped with a warning)
stamped like their input (header stamp and log time), plus a copy of the input topic unless --no-copy-input.
The output bag is written in a temporary folder next to OUT and renamed to OUT at the end (atomic).

    mpnet-bag in_bag out_bag --topic /ouster/points --model model.pt --storage mcap --max-range 8

`--map MAP.npz|MAP.ply` maps the bag (mapping mode, docs/mapping.md): every frame is integrated into the semantic
map, written atomically to MAP at the end; with OUT as well, the labelled clouds (labels from the map) go to OUT.
`--fixed-frame map` puts the clouds into that frame with tf2 from the bag's own /tf and /tf_static (chaining and
interpolation as on a robot); without it the sensor is taken as static (its own frame is the map's).

    mpnet-bag drive_bag --map drive.npz --fixed-frame map --max-range 15
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from mpnet_model.infer.backends.registry import BACKEND_NAMES, backend_for_suffix
from mpnet_model.infer.precision import PRECISIONS
from mpnet_ros.cloud_io import CloudError, ParsedCloud, labeled_cloud_msg, parse_cloud
from mpnet_ros.params import ParamError, SegmentParams, validate_params
from mpnet_ros.pipeline import ScenePipeline, SegmentedWindow, make_segmenter

LOG = logging.getLogger('mpnet-bag')
POINTCLOUD2 = 'sensor_msgs/msg/PointCloud2'
MARKER_ARRAY = 'visualization_msgs/msg/MarkerArray'
OUTPUT_PREFIX = '/mpnet_segment'


@dataclass
class BagSummary:
    frames_in: int = 0
    frames_out: int = 0
    bad_frames: int = 0
    total_ms: float = 0.0
    output: str = ''
    map_output: str = ''
    map_voxels: int = 0


def _params_from_file(path: str | None) -> dict[str, Any]:
    """ros__parameters of a ROS 2 params YAML (the `/**` section or the only node section)."""
    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    sections = [v['ros__parameters'] for v in data.values() if isinstance(v, dict) and 'ros__parameters' in v]
    if len(sections) != 1:
        raise ParamError('params_file', path, f'expected one node section with ros__parameters, found {len(sections)}')
    return dict(sections[0])


def _pick_topic(connections: list[Any], topic: str | None) -> str:
    clouds = sorted({c.topic for c in connections if c.msgtype == POINTCLOUD2})
    if topic is None:
        if len(clouds) != 1:
            raise SystemExit(f'mpnet-bag: choose --topic, the bag has PointCloud2 topics {clouds}')
        return clouds[0]
    if topic not in clouds:
        raise SystemExit(f'mpnet-bag: topic {topic!r} is not a PointCloud2 topic of the bag; found {clouds}')
    return topic


def read_bag_clouds(bag_dir: str | os.PathLike, topic: str | None = None, limit: int | None = None,
                    max_points: int = 5_000_000) -> Iterator[ParsedCloud]:
    """The valid points of each PointCloud2 of a rosbag2 folder (sqlite3 or mcap), parsed like the node does.

    topic: the PointCloud2 topic (None: the bag's only one); limit: stop after this many frames.
    """
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(bag_dir)]) as reader:
        topic = _pick_topic(reader.connections, topic)
        connections = [c for c in reader.connections if c.topic == topic]
        for count, (connection, _, raw) in enumerate(reader.messages(connections=connections)):
            if limit is not None and count >= limit:
                return
            yield parse_cloud(reader.deserialize(raw, connection.msgtype), max_points)


def _results(reader: Any, inputs: list[Any], pipeline: ScenePipeline, summary: BagSummary, progress: bool,
             topic: str) -> Iterator[tuple[int, bytes, SegmentedWindow | None]]:
    """(log time, raw message, result or None for a skipped frame) for every cloud, in bag order."""
    total = sum(c.msgcount for c in inputs)
    for connection, log_time, raw in tqdm(reader.messages(connections=inputs), total=total, unit='frame',
                                          desc=f'mpnet-bag {topic}', disable=not progress):
        summary.frames_in += 1
        try:
            pipeline.add(parse_cloud(reader.deserialize(raw, connection.msgtype), pipeline.params.max_points,
                                     pipeline.params.drop_zero_points))
            result = pipeline.process(pipeline.window.snapshot())
        except CloudError as exc:
            summary.bad_frames += 1
            LOG.warning('frame %d at %d ns skipped: %s', summary.frames_in, log_time, exc)
            yield log_time, raw, None
            continue
        summary.frames_out += 1
        summary.total_ms += result.timings['total_ms']
        yield log_time, raw, result


def _offline_pipeline(params: SegmentParams, segmenter: Any, transforms: Any) -> ScenePipeline:
    # Offline every frame is processed whole (no time budget); the memory bound (grid extent) still holds.
    return ScenePipeline(params, segmenter if segmenter is not None else make_segmenter(params), transforms,
                         warn=lambda kind, message: LOG.warning('%s', message), enforce_budget=False)


def _save_map(pipeline: ScenePipeline, map_path: Path | None, summary: BagSummary) -> None:
    if map_path is not None and pipeline.mapper is not None:
        pipeline.mapper.save(map_path)
        summary.map_output, summary.map_voxels = str(map_path), len(pipeline.mapper)


def map_bag(in_path: Path, map_path: Path, params: SegmentParams, topic: str | None = None, segmenter: Any = None,
            transforms: Any = None, progress: bool = True) -> BagSummary:
    """Map `topic` of the bag (mapping mode) into the map file `map_path` (.npz / .ply, written atomically)."""
    from rosbags.highlevel import AnyReader

    pipeline = _offline_pipeline(params, segmenter, transforms)
    summary = BagSummary()
    with AnyReader([Path(in_path)]) as reader:
        topic = _pick_topic(reader.connections, topic)
        inputs = [c for c in reader.connections if c.topic == topic]
        for _ in _results(reader, inputs, pipeline, summary, progress, topic):
            pass
    _save_map(pipeline, Path(map_path), summary)
    return summary


def segment_bag(in_path: Path, out_path: Path, params: SegmentParams, topic: str | None = None,
                storage: str = 'mcap', copy_input: bool = True, segmenter: Any = None,
                progress: bool = True, on_result: Callable[[SegmentedWindow], None] | None = None,
                transforms: Any = None, map_path: Path | None = None) -> BagSummary:
    """Segment `topic` of the bag at `in_path` into a new bag at `out_path` (must not exist).

    `on_result` is called with every segmented window (e.g. to render or summarise it); `transforms` puts the
    clouds into `params.fixed_frame`; with mapping on, `map_path` receives the map at the end."""
    from rclpy.serialization import serialize_message
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    from std_msgs.msg import Header

    from mpnet_ros.detections import DETECTION3D_ARRAY, detection_array, register_vision_msgs, vision_msgs_available
    from mpnet_ros.markers import instance_markers

    in_path, out_path = Path(in_path), Path(out_path)
    if out_path.exists():
        raise FileExistsError(f'mpnet-bag: output {out_path} already exists')
    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    pipeline = _offline_pipeline(params, segmenter, transforms)
    num_classes = len(pipeline.class_names)
    typestore = get_typestore(Stores.ROS2_JAZZY)
    summary = BagSummary(output=str(out_path))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{out_path.name}.', dir=out_path.parent))
    try:
        with AnyReader([in_path]) as reader, Writer(staging / out_path.name, version=9,
                                                    storage_plugin=plugin) as writer:
            topic = _pick_topic(reader.connections, topic)
            inputs = [c for c in reader.connections if c.topic == topic]
            cloud_out = writer.add_connection(f'{OUTPUT_PREFIX}/labeled_cloud', POINTCLOUD2, typestore=typestore)
            marker_out = writer.add_connection(f'{OUTPUT_PREFIX}/instances', MARKER_ARRAY, typestore=typestore)
            detection_out = None
            if vision_msgs_available() and register_vision_msgs(typestore):
                detection_out = writer.add_connection(f'{OUTPUT_PREFIX}/detections', DETECTION3D_ARRAY,
                                                      typestore=typestore)
            else:
                LOG.warning('vision_msgs is not installed: %s/detections is not written', OUTPUT_PREFIX)
            copy_out = writer.add_connection(topic, POINTCLOUD2, typestore=typestore) if copy_input else None
            for log_time, raw, result in _results(reader, inputs, pipeline, summary, progress, topic):
                if copy_out is not None:
                    writer.write(copy_out, log_time, raw)
                if result is None:
                    continue
                header = Header(frame_id=result.frame_id)
                header.stamp.sec, header.stamp.nanosec = divmod(result.stamp_ns, 1_000_000_000)
                cloud = labeled_cloud_msg(header, result.xyz, result.labels, result.instances, result.scores,
                                          num_classes)
                writer.write(cloud_out, log_time, serialize_message(cloud))
                writer.write(marker_out, log_time, serialize_message(instance_markers(header, result.instances_info)))
                if detection_out is not None:
                    writer.write(detection_out, log_time,
                                 serialize_message(detection_array(header, result.instances_info)))
                if on_result is not None:
                    on_result(result)
        os.replace(staging / out_path.name, out_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _save_map(pipeline, map_path, summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='mpnet-bag', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('input', type=Path, help='input rosbag2 folder (sqlite3 or mcap)')
    parser.add_argument('output', type=Path, nargs='?',
                        help='output rosbag2 folder (must not exist; optional with --map)')
    parser.add_argument('--map', type=Path, dest='map_path', help='map the bag into this .npz / .ply file')
    parser.add_argument('--fixed-frame', help='map / accumulate in this frame, with tf2 from the bag\'s /tf')
    parser.add_argument('--topic', help='PointCloud2 topic (default: the only one in the bag)')
    parser.add_argument('--storage', choices=('sqlite3', 'mcap'), default='mcap')
    parser.add_argument('--params-file', help='ROS 2 params YAML, e.g. config/segment.yaml')
    parser.add_argument('--model', dest='model_path', help='model file (overrides model_path)')
    parser.add_argument('--backend', choices=BACKEND_NAMES,
                        help='default: from the --model suffix if given (.pt torch, .onnx onnxruntime), else params')
    parser.add_argument('--device')
    parser.add_argument('--precision', choices=PRECISIONS)
    parser.add_argument('--window-frames', type=int)
    parser.add_argument('--voxel-size', type=float)
    parser.add_argument('--min-range', type=float)
    parser.add_argument('--max-range', type=float)
    parser.add_argument('--no-copy-input', action='store_true', help='do not copy the input topic to the output')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.output is None and args.map_path is None:
        parser.error('give an output bag, --map MAP, or both')
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(levelname)s: %(message)s')
    overrides = {k: v for k, v in vars(args).items()
                 if k in ('model_path', 'backend', 'device', 'precision', 'window_frames', 'voxel_size', 'min_range',
                          'max_range') and v is not None}
    if args.model_path and not args.backend:     # --model x.pt alone means the torch backend
        try:
            overrides['backend'] = backend_for_suffix(Path(args.model_path).suffix).name
        except ValueError:
            pass     # validate_params names the file problem
    if args.map_path is not None:
        overrides['mapping'] = True
        overrides['map_save_path'] = str(args.map_path)
    if args.fixed_frame is not None:
        overrides['fixed_frame'] = args.fixed_frame
    try:
        params = validate_params({**_params_from_file(args.params_file), **overrides})
        transforms = None
        if params.fixed_frame:
            from mpnet_ros.transforms import bag_transforms

            transforms = bag_transforms(args.input)
        if args.output is None:
            summary = map_bag(args.input, args.map_path, params, topic=args.topic, transforms=transforms,
                              progress=not args.quiet)
        else:
            summary = segment_bag(args.input, args.output, params, topic=args.topic, storage=args.storage,
                                  copy_input=not args.no_copy_input, progress=not args.quiet,
                                  transforms=transforms, map_path=args.map_path)
    except (ParamError, FileExistsError, FileNotFoundError, ValueError) as exc:
        LOG.error('%s', exc)
        return 2
    mean = summary.total_ms / summary.frames_out if summary.frames_out else 0.0
    outputs = ' and '.join(filter(None, [summary.output, summary.map_output and
                                         f'{summary.map_output} ({summary.map_voxels:,} voxels)']))
    print(f'mpnet-bag: {summary.frames_out}/{summary.frames_in} frames segmented ({summary.bad_frames} skipped), '
          f'mean {mean:.0f} ms/frame -> {outputs}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
