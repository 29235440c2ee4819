"""Shared helpers for the ROS adapter tests: sample-data access, hand-built clouds, a bag player process.

Run as a script it is the player: `python tests/ros_helpers.py play BAG TOPIC [--rate HZ] [--repeat N]` publishes
the bag's PointCloud2 messages over real DDS with their original stamps (in a separate process from the node).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Best-effort 6 MB scans between processes need a bigger Fast DDS shared-memory segment (see the XML); set before
# any DDS participant exists in this process, inherited by the player and launched nodes.
os.environ.setdefault('FASTRTPS_DEFAULT_PROFILES_FILE',
                      str(Path(__file__).resolve().parents[1] / 'config' / 'fastdds_large_data.xml'))
SHARED = Path(os.environ.get('MPNET_SHARED', REPO.parent / 'shared'))
OUSTER_BAG = SHARED / 'data' / 'ouster_os1_128'
KINECT_BAG = SHARED / 'data' / 'kinect_tabletop_sequence'

# PointField datatypes.
FLOAT32, FLOAT64, UINT8, UINT16, UINT32 = 7, 8, 2, 4, 6
_NUMPY = {1: 'i1', 2: 'u1', 3: 'i2', 4: 'u2', 5: 'i4', 6: 'u4', 7: 'f4', 8: 'f8'}


def read_bag(path: Path) -> list[tuple[str, int, bytes, object]]:
    """All messages of a rosbag2 folder: (topic, log time ns, raw CDR bytes, rosbags-deserialised message)."""
    from rosbags.highlevel import AnyReader

    out = []
    with AnyReader([Path(path)]) as reader:
        for conn, log_time, raw in reader.messages():
            out.append((conn.topic, log_time, bytes(raw), reader.deserialize(raw, conn.msgtype)))
    return out


def make_cloud(fields: list[tuple[str, int, int]], records: dict[str, np.ndarray], point_step: int,
               height: int = 1, row_padding: int = 0, big_endian: bool = False, frame_id: str = 'sensor',
               stamp_ns: int = 1_000_000_123):
    """A duck-typed PointCloud2 (SimpleNamespace) with the given (name, datatype, offset) fields.

    `records[name]` holds (height*width,) values per field; rows get `row_padding` garbage bytes at their end.
    """
    count = len(next(iter(records.values())))
    width = count // height
    order = '>' if big_endian else '<'
    dtype = np.dtype({'names': [n for n, _, _ in fields], 'formats': [order + _NUMPY[t] for _, t, _ in fields],
                      'offsets': [o for _, _, o in fields], 'itemsize': point_step})
    points = np.zeros(count, dtype=dtype)
    points.view(np.uint8)[:] = 0xAB  # padding garbage must never be read
    for name, _, _ in fields:
        points[name] = records[name]
    rows = points.view(np.uint8).reshape(height, width * point_step)
    padding = np.full((height, row_padding), 0xCD, dtype=np.uint8)
    data = np.concatenate([rows, padding], axis=1).reshape(-1)
    stamp = SimpleNamespace(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    return SimpleNamespace(
        header=SimpleNamespace(frame_id=frame_id, stamp=stamp),
        height=height, width=width, point_step=point_step, row_step=width * point_step + row_padding,
        is_bigendian=big_endian, is_dense=False, data=data.tobytes(),
        fields=[SimpleNamespace(name=n, offset=o, datatype=t, count=1) for n, t, o in fields])


def xyz_cloud(xyz: np.ndarray, **kwargs):
    """Packed float32 x, y, z cloud."""
    fields = [('x', FLOAT32, 0), ('y', FLOAT32, 4), ('z', FLOAT32, 8)]
    return make_cloud(fields, {'x': xyz[:, 0], 'y': xyz[:, 1], 'z': xyz[:, 2]}, 12, **kwargs)


def to_rclpy(cloud):
    """Convert a duck-typed cloud into an rclpy sensor_msgs/PointCloud2."""
    import array

    from sensor_msgs.msg import PointCloud2, PointField

    msg = PointCloud2()
    msg.header.frame_id = cloud.header.frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = cloud.header.stamp.sec, cloud.header.stamp.nanosec
    msg.height, msg.width, msg.point_step, msg.row_step = cloud.height, cloud.width, cloud.point_step, cloud.row_step
    msg.is_bigendian, msg.is_dense = cloud.is_bigendian, cloud.is_dense
    msg.fields = [PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in cloud.fields]
    msg.data = array.array('B', bytes(cloud.data))
    return msg


def fuzz_clouds(rng: np.random.Generator, count: int, points: int = 24):
    """Yield `count` malformed or extreme duck-typed clouds: mutations of a valid xyz+rgb cloud.

    Each is (defect name, cloud). Values stay inside the message's field types (uint32 sizes, bool flags) so the
    same clouds can be sent over DDS after `to_rclpy`.
    """
    from copy import copy

    xyz = rng.normal(size=(points, 3)).astype(np.float32)
    fields = [('x', FLOAT32, 0), ('y', FLOAT32, 4), ('z', FLOAT32, 8), ('rgb', FLOAT32, 12)]
    rgb = rng.integers(0, 2**24, size=points).astype(np.uint32).view(np.float32)
    base = make_cloud(fields, {'x': xyz[:, 0], 'y': xyz[:, 1], 'z': xyz[:, 2], 'rgb': rgb}, 16, height=2)
    extremes = np.array([np.nan, np.inf, -np.inf, 0.0, 3.4e38, -3.4e38, 1e-45], dtype=np.float32)

    def field_list(cloud):
        return [SimpleNamespace(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in cloud.fields]

    mutations = {
        'truncated': lambda c: setattr(c, 'data', c.data[:int(rng.integers(0, len(c.data)))]),
        'point_step': lambda c: setattr(c, 'point_step', int(rng.choice([0, 1, 4, 8, 12, 17, 64, 2**20]))),
        'row_step': lambda c: setattr(c, 'row_step', int(rng.integers(0, 2 * c.row_step))),
        'width': lambda c: setattr(c, 'width', int(rng.choice([0, 1, c.width * 3, 2**31]))),
        'height': lambda c: setattr(c, 'height', int(rng.choice([0, 1, 5, 2**20]))),
        'garbage bytes': lambda c: setattr(c, 'data', rng.integers(0, 256, len(c.data), dtype=np.uint8).tobytes()),
        'extreme values': lambda c: setattr(c, 'data', _fill_floats(c.data, rng.choice(extremes, len(c.data) // 4))),
        'big endian flag': lambda c: setattr(c, 'is_bigendian', not c.is_bigendian),
    }

    def mutate_fields(c):
        fs = field_list(c)
        victim = fs[int(rng.integers(0, len(fs)))]
        what = int(rng.integers(0, 5))
        if what == 0:
            fs.remove(victim)
        elif what == 1:
            victim.datatype = int(rng.choice([0, 1, 2, 6, 9, 255]))
        elif what == 2:
            victim.offset = int(rng.choice([3, 13, 15, 16, 1000, 2**31]))
        elif what == 3:
            victim.count = int(rng.choice([0, 2, 4, 2**20]))
        else:
            victim.name = str(rng.choice(['', 'X', 'rgba', 'intensity', 'y']))
        c.fields = fs

    names = list(mutations) + ['fields']
    for _ in range(count):
        cloud = copy(base)
        chosen = [str(n) for n in rng.choice(names, size=int(rng.integers(1, 3)), replace=False)]
        for name in chosen:
            mutate_fields(cloud) if name == 'fields' else mutations[name](cloud)
        yield '+'.join(chosen), cloud


def _fill_floats(data: bytes, values: np.ndarray) -> bytes:
    out = np.frombuffer(data, dtype=np.uint8).copy()
    out[:values.size * 4] = values.astype(np.float32).view(np.uint8)
    return out.tobytes()


def tiny_checkpoint(path: Path) -> Path:
    """A random-weight MPNet checkpoint with small_config (fast on CPU; results meaningless, path real)."""
    from mpnet_model.config import small_config
    from mpnet_model.model.checkpoint import save_checkpoint
    from mpnet_model.model.mpnet import random_model

    # Narrower than small_config: 256 points per block keeps node / bag tests to seconds on a shared 2-core box.
    cfg = small_config(num_points=256, sa_npoints=(128, 32, 8, 4), sa_nsample=16, mem_per_class=4)
    save_checkpoint(path, random_model(cfg, bn_mean=0.5, bn_var=(0.2, 2.0)), cfg)
    return path


@contextlib.contextmanager
def spinning(context, node, *others):
    """Spin the segment `node` and `others` on one executor in a background thread; on leaving, close the node,
    stop the executor, destroy every node and shut `context` down (the teardown every node test needs)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=context)
    for each in (node, *others):
        executor.add_node(each)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        yield executor
    finally:
        node.close()
        executor.shutdown()
        for each in (node, *others):
            each.destroy_node()
        rclpy.shutdown(context=context)
        spinner.join(timeout=5)


def wait_for(predicate, timeout: float, interval: float = 0.02) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds passed (its last value): waits on an event,
    the timeout only bounds a failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def labeled_records(cloud) -> np.ndarray:
    """The structured points (x y z rgb label instance score) of a labelled output cloud."""
    from mpnet_ros.cloud_io import labeled_cloud_dtype

    return np.frombuffer(bytes(cloud.data), dtype=labeled_cloud_dtype())


def rss_bytes(pid: int | None = None) -> int:
    import psutil

    return psutil.Process(pid or os.getpid()).memory_info().rss


# --- bag player (separate process) -------------------------------------------------------------------------------

def play(bag: Path, topic: str, rate_hz: float, repeat: int, wait_subscribers: float, ready_file: str | None,
         wait_for: str | None = None, wait_timeout: float = 60.0, duration: float = 0.0) -> int:
    """Publish the bag's PointCloud2 frames on `topic` with their original header stamps; returns frames sent.

    With `wait_for`, each frame is published after a message arrived on that topic for the previous one (lockstep,
    so a slow consumer drops nothing); otherwise at `rate_hz`, `repeat` times over, stopping after `duration` s if > 0.
    """
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import PointCloud2

    frames = [deserialize_message(raw, PointCloud2) for _, _, raw, _ in read_bag(bag)]
    rclpy.init()
    node = rclpy.create_node('mpnet_test_player')
    node.get_logger().info(f'playing {len(frames)} frames of {bag} on {topic}')
    # Reliable keep-all would make the publisher wait; sensor-data QoS is what drivers use.
    publisher = node.create_publisher(PointCloud2, topic, qos_profile_sensor_data)
    deadline = time.monotonic() + wait_subscribers
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(1.0)  # matched on our side; give the subscriber's side time to match us (best effort: no resend)
    if ready_file:
        Path(ready_file).write_text('ready')
    replies = []
    if wait_for:
        node.create_subscription(PointCloud2, wait_for, replies.append, 10)
    sent, start = 0, time.monotonic()
    for _ in range(repeat):
        for frame in frames:
            if duration and time.monotonic() - start > duration:
                break
            publisher.publish(frame)
            sent += 1
            if wait_for:  # resend (same stamp) if the frame or its reply was lost
                for _attempt in range(3):
                    deadline = time.monotonic() + wait_timeout / 3
                    while len(replies) < sent and time.monotonic() < deadline:
                        rclpy.spin_once(node, timeout_sec=0.05)
                    if len(replies) >= sent:
                        break
                    publisher.publish(frame)
            else:
                next_time = start + sent / rate_hz
                while time.monotonic() < next_time:
                    rclpy.spin_once(node, timeout_sec=max(0.0, next_time - time.monotonic()))
    time.sleep(0.5)  # let DDS flush the last frame before the participant goes away
    node.destroy_node()
    rclpy.shutdown()
    print(f'played {sent} frames', flush=True)
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('play')
    p.add_argument('bag', type=Path)
    p.add_argument('topic')
    p.add_argument('--rate', type=float, default=2.0)
    p.add_argument('--repeat', type=int, default=1)
    p.add_argument('--wait-subscribers', type=float, default=20.0)
    p.add_argument('--ready-file')
    p.add_argument('--wait-for', help='lockstep: wait for a PointCloud2 on this topic after each frame')
    p.add_argument('--duration', type=float, default=0.0, help='stop after this many seconds (0 = no limit)')
    args = parser.parse_args(argv)
    play(args.bag, args.topic, args.rate, args.repeat, args.wait_subscribers, args.ready_file, args.wait_for,
         duration=args.duration)
    return 0


if __name__ == '__main__':
    sys.exit(main())
