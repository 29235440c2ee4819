"""ROS 2 node: PointCloud2 in, labelled PointCloud2 + instance markers + detections + diagnostics out.

Thin by design: parameters come from `params.py`, parsing from `cloud_io.py`, the window, filters, per-frame
budget, segmentation and instance tracking from `pipeline.py` (ROS-free, shared with the bag tool), markers from
`markers.py`, per-kind warning limits and log forwarding from `logs.py`, transform lookups from `transforms.py`,
`~/detections` (vision_msgs/Detection3DArray; skipped with one warning when vision_msgs is missing) from
`detections.py`.

Threads: the subscription callback only parses, filters and appends to the window, then wakes the worker; the
worker always segments the newest window and publishes. Frames that arrive while the worker is busy are
superseded (counted as dropped in /diagnostics), so there is never a backlog. Each window is capped to the blocks
that fit in `processing_budget_ms` at the measured cost per block (cropped to the nearest range, or refused).
Warnings are rate-limited per specific defect (`logs.warning_key`); /diagnostics levels come from the recent window
(`health.py`), so they recover once a problem stops.

Stopping: SIGINT and SIGTERM are both a clean stop (exit 0), also while starting; see `supervision.py` for the
exit-code contract that `ros2 launch` and systemd rely on.

Parameters are validated at start (params files and overrides alike) and on every runtime change; a valid change
rebuilds what it touches (segmenter, window, tracker, subscription, timer) and takes effect with the next window.

tf2: when `fixed_frame` is set, clouds are transformed into it by the injected `transforms` lookup, by default
tf2_ros when importable (non-blocking: a missing transform skips that cloud with a warning). Without tf2 (this
project's venv) or with `fixed_frame` empty the sensor is assumed static and clouds stay in their own frame.

Mapping mode (`mapping: true`, docs/mapping.md): each cloud is integrated into a semantic voxel map in the fixed
frame (`mpnet_model.mapping`, through the pipeline), only the blocks that changed are segmented again, and
`~/labeled_cloud` carries the labels looked up from the map; `map_outputs.py` adds `~/map_cloud` and `~/save_map`.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Float64, Header
from visualization_msgs.msg import MarkerArray

from mpnet_ros.cloud_io import CloudError, labeled_cloud_msg, parse_cloud
from mpnet_ros.detections import detection_array, vision_msgs_available
from mpnet_ros.health import DEFAULT_WINDOW_S, RecentCounts, status_level
from mpnet_ros.logs import RateLimitedWarnings, forward_library_logs, warning_key
from mpnet_ros.map_outputs import MapOutputs
from mpnet_ros.markers import instance_markers
from mpnet_ros.params import SPECS, ParamError, as_values, declare_and_read, rebuilds, validate_params
from mpnet_ros.pipeline import ScenePipeline, SegmentedWindow, make_segmenter
from mpnet_ros.supervision import ignore_stop_signals, stop_on_sigterm_like_sigint, stop_with_parent
from mpnet_ros.transforms import TransformSource, tf2_transforms

NODE_NAME = 'mpnet_segment'
# A stop waits this long for the frame in progress, then exits without it (launch's SIGTERM comes after
# sigterm_timeout, 5 s by default).
STOP_WAIT_S = 3.0


@dataclass
class Stats:
    received: int = 0
    processed: int = 0
    dropped: int = 0          # frames superseded by a newer one before the worker got to them
    parse_errors: int = 0     # clouds rejected on input (malformed, extent, transform, empty after filters)
    segment_errors: int = 0   # windows that failed or were refused in processing
    cropped: int = 0          # windows cropped to the block cap
    over_budget: int = 0      # windows whose processing took longer than processing_budget_ms
    last_ms: float = 0.0
    total_ms: float = 0.0
    last_latency_ms: float | None = None    # None: no stamped cloud yet (clouds stamped 0 have no latency)
    last_points: int = 0
    last_blocks: int = 0
    last_error: str = ''
    errors: Counter = field(default_factory=Counter)   # per kind
    defects: Counter = field(default_factory=Counter)  # per specific defect (the warnings' rate-limit keys)


class SegmentNode(Node):
    def __init__(self, argv: list[str] | None = None, transforms: TransformSource | None = None, **node_kwargs):
        """argv: the process's command line (its ROS arguments are validated too); transforms: the lookup into
        fixed_frame (default: tf2_ros when importable)."""
        super().__init__(NODE_NAME, **node_kwargs)
        self._undo_logs = forward_library_logs(self.get_logger())
        self._warnings = RateLimitedWarnings(self.get_logger().warning, self._throttle_sec)
        try:
            self._start(argv, transforms)
        except BaseException:
            # A refused start leaves nothing behind: no log forwarding, no rcl node. A half-built node left to the
            # garbage collector would, when collected, unregister the /rosout publisher of a later node with the
            # same name (rcl keys /rosout publishers by logger name), silencing that node's /rosout.
            self._undo_logs()
            self.destroy_node()
            raise

    def _start(self, argv: list[str] | None, transforms: TransformSource | None) -> None:
        self.params = declare_and_read(self, argv=argv)    # raises ParamError naming the key and value
        self._injected_transforms = transforms
        self.pipeline = ScenePipeline(self.params, make_segmenter(self.params), self._transforms(self.params),
                                      warn=self._warn)        # raises on a bad model
        ms_per_block = self.pipeline.calibrate()
        self.stats = Stats()
        self._stats_lock = threading.Lock()
        self._recent = RecentCounts(self._health_window)
        self._reconfigure_lock = threading.Lock()

        # Sensor-data QoS (best effort) with keep-last 1: only the newest cloud matters.
        self._input_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                                     reliability=qos_profile_sensor_data.reliability,
                                     durability=qos_profile_sensor_data.durability)
        self._cloud_pub = self.create_publisher(PointCloud2, '~/labeled_cloud', 1)
        self._marker_pub = self.create_publisher(MarkerArray, '~/instances', 1)
        self._detection_pub = self._detection_publisher()
        self._time_pub = self.create_publisher(Float64, '~/debug/processing_time_ms', 10)
        self._latency_pub = self.create_publisher(Float64, '~/debug/pipeline_latency_ms', 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._map_outputs = MapOutputs(self)          # mapping mode: ~/map_cloud, ~/save_map
        self._map_outputs.ensure(self.params)
        self._subscription = self.create_subscription(PointCloud2, self.params.input_topic, self._on_cloud,
                                                      self._input_qos)
        self._timer = self.create_timer(self.params.diagnostics_period, self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name='mpnet_worker', daemon=True)
        self._worker.start()
        self.get_logger().info(
            f'segmenting {self.resolve_topic_name(self.params.input_topic)} with backend {self.params.backend} '
            f'({self.params.model_path or self.params.engine_path}) on {self.params.device}, '
            f'window {self.params.window_frames} frame(s); measured {ms_per_block:.1f} ms per block '
            f'(+ {self.pipeline.cost.fixed_ms:.0f} ms per frame, {self.pipeline.cost.ms_per_point * 1e3:.2f} ms per '
            f'1000 points): at most {self.pipeline.block_cap():,} blocks per frame within processing_budget_ms '
            f'{self.params.processing_budget_ms:g}; instance size filter: {self._size_filter_text()}')

    # --- configuration ---------------------------------------------------------------------------------------

    def _health_window(self) -> float:
        return max(DEFAULT_WINDOW_S, 5.0 * self.params.diagnostics_period)

    def _detection_publisher(self):
        """~/detections when vision_msgs imports; otherwise one warning and no topic (the node runs on)."""
        if not vision_msgs_available():
            self.get_logger().warning('vision_msgs is not importable: ~/detections (vision_msgs/Detection3DArray) is '
                                      'not published; install ros-jazzy-vision-msgs for it')
            return None
        from vision_msgs.msg import Detection3DArray

        return self.create_publisher(Detection3DArray, '~/detections', 1)

    def _size_filter_text(self) -> str:
        segmenter = self.pipeline.segmenter
        size_filter = getattr(segmenter, 'size_filter', None)
        text = size_filter.describe() if size_filter is not None else 'n/a'
        join = getattr(segmenter, 'fragment_join', 0.0)
        return (f'{text} (size_filter {self.params.size_filter}, sensor_kind {self.params.sensor_kind}), fragment '
                f'join {join:g} m, mean-shift bandwidth {segmenter.bandwidth:g}')

    def _throttle_sec(self) -> float:
        params = getattr(self, 'params', None)
        return params.warn_throttle_sec if params is not None else SPECS['warn_throttle_sec'].default

    def _transforms(self, params) -> TransformSource | None:
        if not params.fixed_frame:
            self.get_logger().info('fixed_frame is empty: assuming a static sensor, clouds stay in their own frame')
            return None
        if self._injected_transforms is not None:
            return self._injected_transforms
        transforms = tf2_transforms(self)
        if transforms is None:
            self.get_logger().warning(f'tf2_ros is not importable: ignoring fixed_frame {params.fixed_frame!r}, '
                                      'assuming a static sensor')
        return transforms

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """Validate a runtime change as at start; apply it by rebuilding what it touches, or refuse it."""
        values = as_values(self.params)
        for parameter in parameters:
            if parameter.name in SPECS:
                value = parameter.value
                values[parameter.name] = list(value) if isinstance(value, (list, tuple)) or hasattr(
                    value, 'typecode') else value
        with self._reconfigure_lock:
            try:
                new = validate_params(values)
                tags = rebuilds(self.params, new)
                segmenter = make_segmenter(new) if 'segmenter' in tags else None
                pipeline = self.pipeline.reconfigured(new, segmenter)     # raises on a bad map file
            except Exception as error:  # noqa: BLE001 - any failure refuses the change, naming it
                reason = str(error) if isinstance(error, ParamError) else f'{type(error).__name__}: {error}'
                self.get_logger().warning(f'refused parameter change: {reason}')
                return SetParametersResult(successful=False, reason=reason)
            if 'transforms' in tags:
                pipeline.transforms = self._transforms(new)
            if 'subscription' in tags:
                self.destroy_subscription(self._subscription)
                self._subscription = self.create_subscription(PointCloud2, new.input_topic, self._on_cloud,
                                                              self._input_qos)
            if 'timer' in tags:
                self.destroy_timer(self._timer)
                self._timer = self.create_timer(new.diagnostics_period, self._publish_diagnostics)
            changed = sorted(name for name in SPECS if getattr(self.params, name) != getattr(new, name))
            self.params, self.pipeline = new, pipeline
            self._map_outputs.ensure(new)
        self.get_logger().info(f'parameters changed: {", ".join(changed) or "none"}'
                               + (f' (rebuilt: {", ".join(sorted(tags))})' if tags else '')
                               + (f'; instance size filter: {self._size_filter_text()}' if 'segmenter' in tags else ''))
        return SetParametersResult(successful=True)

    # --- input (executor thread; never blocks) ---------------------------------------------------------------

    def _warn(self, kind: str, message: str) -> None:
        self._warnings.warn(kind, message)

    def _on_cloud(self, msg: PointCloud2) -> None:
        with self._stats_lock:
            self.stats.received += 1
        pipeline = self.pipeline
        try:
            parsed = parse_cloud(msg, max_points=pipeline.params.max_points,
                                 drop_zero=pipeline.params.drop_zero_points)
            pipeline.add(parsed)
        except CloudError as exc:
            kind = getattr(exc, 'kind', 'malformed')
            text = str(exc) if str(exc).startswith('skipped') else f'skipped a bad cloud: {exc}'
            self._count_error('parse_errors', kind, text, getattr(exc, 'defect', None))
            return
        self._wake.set()

    # --- processing (worker thread) --------------------------------------------------------------------------

    def _work(self) -> None:
        last_window, last_sequence = None, 0
        while not self._stopping.is_set():
            if not self._wake.wait(timeout=0.2):
                continue
            self._wake.clear()
            pipeline = self.pipeline
            if pipeline.window is not last_window:            # a runtime change rebuilt the window
                last_window, last_sequence = pipeline.window, 0
            window = pipeline.window.snapshot()
            if window is None or window.sequence == last_sequence:
                continue
            with self._stats_lock:
                self.stats.dropped += window.sequence - last_sequence - 1
            last_sequence = window.sequence
            try:
                result = pipeline.process(window)
            except CloudError as exc:
                self._count_error('segment_errors', getattr(exc, 'kind', 'segment'), f'skipped a window: {exc}',
                                  getattr(exc, 'defect', None))
                continue
            except Exception as exc:  # noqa: BLE001 - a bad window must never stop the node
                self._count_error('segment_errors', 'segment', f'segmentation failed: {type(exc).__name__}: {exc}',
                                  type(exc).__name__)
                continue
            self._publish(result, pipeline)
            pipeline.trim()                                    # after a large frame, once its answer is out

    def _marker_lifetime(self) -> float:
        if self.params.marker_lifetime > 0:
            return self.params.marker_lifetime
        with self._stats_lock:
            mean_ms = self.stats.total_ms / self.stats.processed if self.stats.processed else 0.0
        return max(1.0, 3.0 * mean_ms / 1e3)

    def _publish(self, result: SegmentedWindow, pipeline: ScenePipeline) -> None:
        header = Header(frame_id=result.frame_id)
        header.stamp.sec, header.stamp.nanosec = divmod(result.stamp_ns, 1_000_000_000)
        self._cloud_pub.publish(labeled_cloud_msg(header, result.xyz, result.labels, result.instances,
                                                  result.scores, len(pipeline.class_names)))
        self._marker_pub.publish(instance_markers(header, result.instances_info, lifetime_s=self._marker_lifetime()))
        if self._detection_pub is not None:
            self._detection_pub.publish(detection_array(header, result.instances_info))
        total_ms = result.timings['total_ms']
        self._time_pub.publish(Float64(data=total_ms))
        latency_ms = None
        if result.stamp_ns > 0:          # a cloud stamped 0 has no time to measure a latency from
            latency_ms = (self.get_clock().now().nanoseconds - result.stamp_ns) / 1e6
            self._latency_pub.publish(Float64(data=latency_ms))
        self._map_outputs.publish(result, pipeline)
        with self._stats_lock:
            self.stats.processed += 1
            self.stats.cropped += bool(result.cropped_from)
            self.stats.over_budget += total_ms > pipeline.params.processing_budget_ms
            self.stats.last_ms = total_ms
            self.stats.total_ms += total_ms
            self.stats.last_latency_ms = latency_ms
            self.stats.last_points = len(result.xyz)
            self.stats.last_blocks = result.blocks

    def _count_error(self, counter: str, kind: str, message: str, defect: str | None = None) -> None:
        key = warning_key(kind, defect)
        with self._stats_lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            self.stats.errors[kind] += 1
            self.stats.defects[key] += 1
            self.stats.last_error = message
        self._warnings.warn(key, message)

    # --- diagnostics -----------------------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        with self._stats_lock:
            s = Stats(**{**vars(self.stats), 'errors': Counter(self.stats.errors),
                         'defects': Counter(self.stats.defects)})
        recent = self._recent.observe({name: getattr(s, name) for name in
                                       ('received', 'processed', 'dropped', 'over_budget', 'parse_errors',
                                        'segment_errors')})
        pipeline = self.pipeline
        busy = pipeline.busy()
        budget = self.params.processing_budget_ms
        status = DiagnosticStatus(name=f'{self.get_name()}: segmentation', hardware_id=self.params.device)
        if busy is not None and busy.elapsed_ms > budget:
            status.level = DiagnosticStatus.WARN
            status.message = (f'busy for {busy.elapsed_ms / 1e3:.1f} s on a frame of {busy.points:,} points '
                              f'(~{busy.blocks:,} blocks), over the {budget:.0f} ms budget')
        elif s.processed == 0 and s.received == 0:
            status.level, status.message = DiagnosticStatus.OK, 'waiting for clouds'
        else:           # from the recent window: back to OK once drops, errors and overruns stop
            level, status.message = status_level(recent, budget, s.last_ms, s.last_error)
            status.level = DiagnosticStatus.WARN if level else DiagnosticStatus.OK
        cap = pipeline.block_cap() if pipeline.cost.ms_per_block else None
        values = {
            'backend': self.params.backend, 'device': self.params.device, 'precision': self.params.precision,
            'busy': 'true' if busy is not None else 'false',
            'current_frame_points': busy.points if busy else 0, 'current_frame_blocks': busy.blocks if busy else 0,
            'current_elapsed_ms': f'{busy.elapsed_ms:.0f}' if busy else '0',
            'frames_received': s.received, 'frames_processed': s.processed, 'frames_dropped': s.dropped,
            'frames_cropped': s.cropped, 'parse_errors': s.parse_errors, 'segment_errors': s.segment_errors,
            'errors_by_kind': ', '.join(f'{k}={v}' for k, v in sorted(s.errors.items())) or 'none',
            'errors_by_defect': ', '.join(f'{k}={v}' for k, v in sorted(s.defects.items())) or 'none',
            'processing_time_ms': f'{s.last_ms:.1f}',
            'mean_processing_time_ms': f'{s.total_ms / s.processed:.1f}' if s.processed else 'n/a',
            'pipeline_latency_ms': (f'{s.last_latency_ms:.1f}' if s.last_latency_ms is not None
                                    else 'n/a (stamp 0)' if s.processed else 'n/a'),
            'recent_window_s': f'{recent.span_s:.1f}',
            'recent_frames_received': recent.counts['received'],
            'recent_frames_processed': recent.counts['processed'],
            'recent_dropped_per_s': f'{recent.per_second("dropped"):.2f}',
            'recent_over_budget': recent.counts['over_budget'],
            'recent_errors': recent.counts['parse_errors'] + recent.counts['segment_errors'],
            'frames_over_budget': s.over_budget,
            'budget_ms': f'{budget:.1f}', 'ms_per_block': f'{pipeline.cost.ms_per_block or 0:.2f}',
            'block_cap': cap if cap is not None else 'n/a', 'window_frames': self.params.window_frames,
            'last_points': s.last_points, 'last_blocks': s.last_blocks, 'last_error': s.last_error,
            'size_filter': self._size_filter_text(),
            **self._map_outputs.diagnostics(),
        }
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)

    def close(self, timeout: float = 30.0) -> bool:
        """Stop the worker (waits up to `timeout` s for the current window to finish) and stop forwarding library
        logs. False when the worker was still busy."""
        self._stopping.set()
        self._wake.set()
        self._worker.join(timeout=timeout)
        finished = not self._worker.is_alive()
        self._map_outputs.close(self.pipeline)
        if not finished:
            busy = self.pipeline.busy()
            self.get_logger().warning('stopping without the frame in progress' + (
                f' ({busy.points:,} points, {busy.elapsed_ms / 1e3:.1f} s so far)' if busy else ''))
        self._undo_logs()
        return finished


def main(args: list[str] | None = None) -> None:
    """Run the node until SIGINT or SIGTERM (exit 0, also while starting); 1 when it refuses to start."""
    stop_on_sigterm_like_sigint()            # before rclpy.init: its handlers chain to this one
    stop_with_parent()                       # launched: a launch killed outright still stops us
    argv = sys.argv if args is None else args
    try:
        rclpy.init(args=argv)
    except KeyboardInterrupt:
        return
    try:
        node = SegmentNode(argv=argv)
    except KeyboardInterrupt:              # Ctrl-C / SIGTERM while starting: a normal end
        rclpy.try_shutdown()
        return
    except Exception as exc:  # noqa: BLE001 - any startup failure: log it and exit non-zero, never half-run
        if not rclpy.ok():                 # a stop signal shut the context down under the start-up: a normal end
            rclpy.try_shutdown()
            return
        rclpy.logging.get_logger(NODE_NAME).error(f'refusing to start: {type(exc).__name__}: {exc}')
        rclpy.try_shutdown()
        sys.exit(1)
    finished = True
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        ignore_stop_signals()                # one stop: a second Ctrl-C must not break the cleanup
        finished = node.close(timeout=STOP_WAIT_S)
        node.destroy_node()
        rclpy.try_shutdown()
    if not finished:                         # the worker is inside a frame: do not wait for it at exit
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == '__main__':
    main()
