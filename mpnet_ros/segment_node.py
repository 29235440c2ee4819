"""ROS 2 node: PointCloud2 in, labelled PointCloud2 + instance markers + diagnostics out.

Thin by design: parameters come from `params.py`, parsing from `cloud_io.py`, the window/filters/segmentation
from `pipeline.py` (ROS-free, shared with the bag tool), markers from `markers.py`.

Threads: the subscription callback only parses, filters and appends to the window, then wakes the worker; the
worker always segments the newest window and publishes. Frames that arrive while the worker is busy are
superseded (counted as dropped in /diagnostics), so there is never a backlog.

tf2: when `fixed_frame` is set and `tf2_ros` is importable, each cloud is transformed into `fixed_frame` at its
stamp (non-blocking lookup; a missing transform drops that cloud with a warning). `tf2_ros` is not installed in
this project's venv, so that path is written against the tf2_ros API but not exercised by the tests here; without
tf2 (or with `fixed_frame` empty) the sensor is assumed static and clouds stay in their own frame.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Float64, Header
from visualization_msgs.msg import MarkerArray

from mpnet_ros.accumulate import transform_matrix
from mpnet_ros.cloud_io import CloudError, labeled_cloud_msg, parse_cloud
from mpnet_ros.markers import instance_markers
from mpnet_ros.params import declare_and_read
from mpnet_ros.pipeline import ScenePipeline, SegmentedWindow, make_segmenter

try:
    import tf2_ros
except ImportError:  # not on PyPI: plain venvs run without it
    tf2_ros = None

NODE_NAME = 'mpnet_segment'


@dataclass
class Stats:
    received: int = 0
    processed: int = 0
    dropped: int = 0          # frames superseded by a newer one before the worker got to them
    parse_errors: int = 0
    segment_errors: int = 0
    last_ms: float = 0.0
    total_ms: float = 0.0
    last_points: int = 0
    last_error: str = ''


class SegmentNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self.params = declare_and_read(self)          # raises ParamError / rclpy parameter exceptions
        self.pipeline = ScenePipeline(self.params, make_segmenter(self.params))  # raises on a bad model
        self.stats = Stats()
        self._stats_lock = threading.Lock()
        self._tf_buffer = self._make_tf_buffer()

        # Sensor-data QoS (best effort) with keep-last 1: only the newest cloud matters.
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=qos_profile_sensor_data.reliability,
                         durability=qos_profile_sensor_data.durability)
        self._cloud_pub = self.create_publisher(PointCloud2, '~/labeled_cloud', 1)
        self._marker_pub = self.create_publisher(MarkerArray, '~/instances', 1)
        self._time_pub = self.create_publisher(Float64, '~/debug/processing_time_ms', 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_subscription(PointCloud2, self.params.input_topic, self._on_cloud, qos)
        self.create_timer(self.params.diagnostics_period, self._publish_diagnostics)

        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name='mpnet_worker', daemon=True)
        self._worker.start()
        self.get_logger().info(
            f'segmenting {self.resolve_topic_name(self.params.input_topic)} with backend {self.params.backend} '
            f'({self.params.model_path or self.params.engine_path}) on {self.params.device}, '
            f'window {self.params.window_frames} frame(s)')

    # --- input (executor thread; never blocks) ---------------------------------------------------------------

    def _make_tf_buffer(self):
        if not self.params.fixed_frame:
            self.get_logger().info('fixed_frame is empty: assuming a static sensor, clouds stay in their own frame')
            return None
        if tf2_ros is None:
            self.get_logger().warning(f'tf2_ros is not importable: ignoring fixed_frame '
                                      f'{self.params.fixed_frame!r}, assuming a static sensor')
            return None
        buffer = tf2_ros.Buffer()
        self._tf_listener = tf2_ros.TransformListener(buffer, self)
        return buffer

    def _lookup_transform(self, msg: PointCloud2) -> np.ndarray | None:
        """(4,4) sensor -> fixed_frame at the cloud's stamp, or None for a static sensor. Raises CloudError."""
        if self._tf_buffer is None or msg.header.frame_id == self.params.fixed_frame:
            return None
        try:
            stamped = self._tf_buffer.lookup_transform(self.params.fixed_frame, msg.header.frame_id,
                                                       Time.from_msg(msg.header.stamp))
        except tf2_ros.TransformException as exc:
            raise CloudError(f'no transform {msg.header.frame_id!r} -> {self.params.fixed_frame!r}: {exc}') from exc
        t, q = stamped.transform.translation, stamped.transform.rotation
        return transform_matrix((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))

    def _on_cloud(self, msg: PointCloud2) -> None:
        with self._stats_lock:
            self.stats.received += 1
        try:
            parsed = parse_cloud(msg, max_points=self.params.max_points, drop_zero=self.params.drop_zero_points)
            transform = self._lookup_transform(msg)
            self.pipeline.add(parsed, transform, self.params.fixed_frame if transform is not None else '')
        except CloudError as exc:
            self._count_error('parse_errors', f'skipped a bad cloud: {exc}')
            return
        self._wake.set()

    # --- processing (worker thread) --------------------------------------------------------------------------

    def _work(self) -> None:
        last_sequence = 0
        while not self._stopping.is_set():
            if not self._wake.wait(timeout=0.2):
                continue
            self._wake.clear()
            window = self.pipeline.window.snapshot()
            if window is None or window.sequence == last_sequence:
                continue
            with self._stats_lock:
                self.stats.dropped += window.sequence - last_sequence - 1
            last_sequence = window.sequence
            try:
                result = self.pipeline.process(window)
            except Exception as exc:  # noqa: BLE001 - a bad window must never stop the node
                self._count_error('segment_errors', f'segmentation failed: {type(exc).__name__}: {exc}')
                continue
            self._publish(result)

    def _publish(self, result: SegmentedWindow) -> None:
        header = Header(frame_id=result.frame_id)
        header.stamp.sec, header.stamp.nanosec = divmod(result.stamp_ns, 1_000_000_000)
        self._cloud_pub.publish(labeled_cloud_msg(header, result.xyz, result.labels, result.instances,
                                                  result.scores, len(self.pipeline.class_names)))
        self._marker_pub.publish(instance_markers(header, result.instances_info))
        total_ms = result.timings['total_ms']
        self._time_pub.publish(Float64(data=total_ms))
        with self._stats_lock:
            self.stats.processed += 1
            self.stats.last_ms = total_ms
            self.stats.total_ms += total_ms
            self.stats.last_points = len(result.xyz)

    def _count_error(self, counter: str, message: str) -> None:
        with self._stats_lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            self.stats.last_error = message
        self.get_logger().warning(message, throttle_duration_sec=self.params.warn_throttle_sec)

    # --- diagnostics -----------------------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        with self._stats_lock:
            s = Stats(**vars(self.stats))
        budget = self.params.processing_budget_ms
        status = DiagnosticStatus(name=f'{self.get_name()}: segmentation', hardware_id=self.params.device)
        if s.processed == 0 and s.received == 0:
            status.level, status.message = DiagnosticStatus.OK, 'waiting for clouds'
        elif s.processed and s.last_ms > budget:
            status.level, status.message = DiagnosticStatus.WARN, f'over budget: {s.last_ms:.0f} ms > {budget:.0f} ms'
        elif s.dropped:
            status.level, status.message = DiagnosticStatus.WARN, f'{s.dropped} frame(s) dropped (input faster than ' \
                                                                  'processing; latest-only)'
        else:
            status.level, status.message = DiagnosticStatus.OK, 'ok'
        values = {
            'backend': self.params.backend, 'device': self.params.device, 'precision': self.params.precision,
            'frames_received': s.received, 'frames_processed': s.processed, 'frames_dropped': s.dropped,
            'parse_errors': s.parse_errors, 'segment_errors': s.segment_errors,
            'processing_time_ms': f'{s.last_ms:.1f}',
            'mean_processing_time_ms': f'{s.total_ms / s.processed:.1f}' if s.processed else 'n/a',
            'budget_ms': f'{budget:.1f}', 'window_frames': self.params.window_frames,
            'last_points': s.last_points, 'last_error': s.last_error,
        }
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)

    def close(self) -> None:
        """Stop the worker (waits for the current window to finish)."""
        self._stopping.set()
        self._wake.set()
        self._worker.join(timeout=30.0)


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    try:
        node = SegmentNode()
    except Exception as exc:  # noqa: BLE001 - any startup failure: log it and exit non-zero, never half-run
        rclpy.logging.get_logger(NODE_NAME).error(f'refusing to start: {type(exc).__name__}: {exc}')
        rclpy.try_shutdown()
        sys.exit(1)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
