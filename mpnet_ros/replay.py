"""`mpnet-replay BAG`: play a rosbag2's PointCloud2 topic over DDS at its recorded rate, looped, and measure what
a running segment node makes of it.

On a robot `ros2 bag play --loop BAG` does the playing; this tool is for machines without the rosbag2 CLI (it reads
the bag with `rosbags`, publishes with rclpy) and adds the measurement: with `--measure /mpnet_segment` it listens
to the node's labelled clouds and /diagnostics and reports frames in / out / dropped and the end-to-end latency
(input stamp to receipt of the labelled cloud; `--restamp` stamps each frame with the wall clock as it is sent,
which the latency needs when the bag's stamps are old; `ros2 bag play` keeps the recorded stamps).

    mpnet-replay ouster_os1_128 --topic /ouster/points --loop --duration 60 --restamp --measure /mpnet_segment

Publishes with the sensor-data QoS (best effort) that drivers use.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

POINTCLOUD2 = 'sensor_msgs/msg/PointCloud2'


@dataclass
class ReplaySummary:
    frames_sent: int = 0
    seconds: float = 0.0
    input_hz: float = 0.0
    recorded_hz: float = 0.0
    max_late_ms: float = 0.0               # how far behind its schedule the player published at worst
    labelled_received: int = 0             # labelled clouds of this run received by the measurer
    latency_ms: list[float] = field(default_factory=list)
    diagnostics: dict[str, str] = field(default_factory=dict)   # the node's last /diagnostics values

    def figures(self) -> dict[str, Any]:
        latency = np.asarray(self.latency_ms) if self.latency_ms else np.asarray([np.nan])
        d = self.diagnostics
        return {'frames_sent': self.frames_sent, 'seconds': round(self.seconds, 2),
                'input_hz': round(self.input_hz, 2), 'recorded_hz': round(self.recorded_hz, 2),
                'max_late_ms': round(self.max_late_ms, 1), 'labelled_received': self.labelled_received,
                'output_hz': round(self.labelled_received / self.seconds, 3) if self.seconds else 0.0,
                'latency_p50_ms': round(float(np.percentile(latency, 50)), 1),
                'latency_p95_ms': round(float(np.percentile(latency, 95)), 1),
                'latency_max_ms': round(float(latency.max()), 1),
                'node_frames_received': int(d.get('frames_received', 0)),
                'node_frames_processed': int(d.get('frames_processed', 0)),
                'node_frames_dropped': int(d.get('frames_dropped', 0)),
                'node_frames_cropped': int(d.get('frames_cropped', 0)),
                'node_parse_errors': int(d.get('parse_errors', 0)),
                'node_segment_errors': int(d.get('segment_errors', 0)),
                'node_mean_processing_ms': d.get('mean_processing_time_ms', 'n/a'),
                'node_ms_per_block': d.get('ms_per_block', 'n/a'), 'node_block_cap': d.get('block_cap', 'n/a')}


def load_clouds(bag: str | Path, topic: str | None = None) -> list[tuple[int, Any]]:
    """(log time ns, rclpy PointCloud2) of the bag's PointCloud2 topic (the only one when `topic` is None)."""
    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader
    from sensor_msgs.msg import PointCloud2

    with AnyReader([Path(bag)]) as reader:
        clouds = sorted({c.topic for c in reader.connections if c.msgtype == POINTCLOUD2})
        if topic is None and len(clouds) == 1:
            topic = clouds[0]
        if topic not in clouds:
            raise SystemExit(f'mpnet-replay: choose --topic among the bag\'s PointCloud2 topics {clouds}')
        connections = [c for c in reader.connections if c.topic == topic]
        return [(log_time, deserialize_message(bytes(raw), PointCloud2))
                for _, log_time, raw in reader.messages(connections=connections)]


def schedule(log_times: list[int], rate: float = 1.0) -> tuple[np.ndarray, float]:
    """(offsets in s of each frame from the loop start, loop period in s) at `rate` x the recorded rate."""
    times = (np.asarray(log_times, dtype=np.float64) - log_times[0]) / 1e9
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.1
    return times / rate, (times[-1] + step) / rate


class Measurer:
    """Listens to a segment node's labelled clouds and its /diagnostics entry."""

    def __init__(self, node: Any, node_name: str):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import PointCloud2

        self.node, self.name = node, node_name.strip('/')
        self.lock = threading.Lock()
        self.stamps: set[int] = set()          # what this run sent
        self.latency_ms: list[float] = []
        self.received = 0
        self.diagnostics: dict[str, str] = {}
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(PointCloud2, f'/{self.name}/labeled_cloud', self._on_cloud, reliable)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)

    def _on_cloud(self, msg) -> None:
        now = time.time_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            if stamp in self.stamps:
                self.received += 1
                self.latency_ms.append((now - stamp) / 1e6)

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith(f'{self.name}:'):
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}


def replay(bag: str | Path, topic: str | None = None, rate: float = 1.0, loop: bool = False, duration: float = 0.0,
           restamp: bool = False, measure: str | None = None, out_topic: str | None = None,
           wait_subscribers: float = 30.0, drain: float = 3.0) -> ReplaySummary:
    """Play the bag (see the module docstring) and return the summary."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import PointCloud2

    frames = load_clouds(bag, topic)
    offsets, period = schedule([t for t, _ in frames], rate)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('mpnet_replay', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    summary = ReplaySummary(recorded_hz=len(frames) / period * rate if period else 0.0)
    try:
        publisher = node.create_publisher(PointCloud2, out_topic or topic or '/points', qos_profile_sensor_data)
        measurer = Measurer(node, measure) if measure else None
        deadline = time.monotonic() + wait_subscribers
        while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)        # our side matched; give the subscriber's side time to match us (best effort)
        start = time.monotonic()
        loops = 0
        while True:
            for offset, (_, msg) in zip(offsets, frames):
                due = start + loops * period + offset
                if duration and due - start >= duration:
                    break
                while (wait := due - time.monotonic()) > 0:
                    time.sleep(min(wait, 0.05))
                summary.max_late_ms = max(summary.max_late_ms, (time.monotonic() - due) * 1e3)
                if restamp:
                    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
                if measurer is not None:
                    with measurer.lock:
                        measurer.stamps.add(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
                publisher.publish(msg)
                summary.frames_sent += 1
            else:
                loops += 1
                if loop:
                    continue
            break
        summary.seconds = time.monotonic() - start
        summary.input_hz = summary.frames_sent / summary.seconds if summary.seconds else 0.0
        time.sleep(drain)      # the frame in progress, and one more diagnostics message
        if measurer is not None:
            with measurer.lock:
                summary.labelled_received = measurer.received
                summary.latency_ms = list(measurer.latency_ms)
                summary.diagnostics = dict(measurer.diagnostics)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        spinner.join(timeout=5)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='mpnet-replay', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('bag', type=Path, help='rosbag2 folder (sqlite3 or mcap)')
    parser.add_argument('--topic', help="the bag's PointCloud2 topic (default: its only one)")
    parser.add_argument('--remap', dest='out_topic', help='publish on this topic instead of the recorded one')
    parser.add_argument('--rate', type=float, default=1.0, help='x the recorded rate (default 1.0)')
    parser.add_argument('--loop', action='store_true', help='start over at the end (with --duration)')
    parser.add_argument('--duration', type=float, default=0.0, help='stop after this many seconds (0 = no limit)')
    parser.add_argument('--restamp', action='store_true', help='stamp each frame with the wall clock when sent')
    parser.add_argument('--measure', metavar='NODE', help='report frames and latency of this node, e.g. '
                                                          '/mpnet_segment')
    parser.add_argument('--json', type=Path, help='also write the figures to this JSON file')
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration < 0 or (args.loop and not args.duration):
        parser.error('--rate must be > 0, --duration >= 0, and --loop needs a --duration')
    summary = replay(args.bag, args.topic, args.rate, args.loop, args.duration, args.restamp, args.measure,
                     args.out_topic)
    figures = summary.figures()
    print(f"mpnet-replay: sent {figures['frames_sent']} frames in {figures['seconds']} s "
          f"({figures['input_hz']} Hz, recorded {figures['recorded_hz']} Hz)")
    if args.measure:
        print(f"  node: received {figures['node_frames_received']}, processed {figures['node_frames_processed']}, "
              f"dropped {figures['node_frames_dropped']}; labelled clouds received {figures['labelled_received']}; "
              f"latency p50 {figures['latency_p50_ms']} ms, p95 {figures['latency_p95_ms']} ms")
    if args.json:
        from mpnet_model.io.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps({**figures, 'latency_ms': summary.latency_ms}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
