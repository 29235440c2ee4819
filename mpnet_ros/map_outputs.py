"""The node's mapping-mode outputs (rclpy): `~/map_cloud`, the `~/save_map` service, saving on shutdown.

* `~/map_cloud` (sensor_msgs/PointCloud2, the `~/labeled_cloud` layout: x y z rgb label instance score): every
  segmented voxel's centroid, class (rgb = class colour), map instance id and confidence, in the map's frame;
  reliable and transient-local (RViz started later still gets the latest map), at most `map_publish_rate` Hz.
* `~/save_map` (std_srvs/Trigger, when std_srvs is installed): writes the map to `map_save_path` (atomic);
  the response says where and how many voxels, or why not.
* On shutdown the map is written to `map_save_path` when it is set.
"""
from __future__ import annotations

import math
import time
from typing import Any

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from mpnet_ros.cloud_io import labeled_cloud_msg
from mpnet_ros.map_mode import save_map


class MapOutputs:
    def __init__(self, node: Any):
        self.node = node
        self.publisher = None
        self.service = None
        self.last = None                 # the latest MapUpdate
        self._published = -math.inf

    def ensure(self, params: Any) -> None:
        """Create the map topic and service the first time mapping is on."""
        if not params.mapping or self.publisher is not None:
            return
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.publisher = self.node.create_publisher(PointCloud2, '~/map_cloud', qos)
        try:
            from std_srvs.srv import Trigger
        except ImportError:
            self.node.get_logger().warning('std_srvs is not installed: no ~/save_map service (the map is still '
                                           'saved to map_save_path on shutdown)')
            return
        self.service = self.node.create_service(Trigger, '~/save_map', self._on_save)

    def publish(self, result: Any, pipeline: Any) -> None:
        """After a frame (worker thread): remember its map update, publish the map when the rate allows."""
        if result.map is None or self.publisher is None:
            return
        self.last = result.map
        rate = pipeline.params.map_publish_rate
        now = time.monotonic()
        if rate <= 0 or now - self._published < 1.0 / rate:
            return
        self._published = now
        xyz, labels, instances, scores = pipeline.mapper.labelled_voxels()
        header = Header(frame_id=result.frame_id)
        header.stamp.sec, header.stamp.nanosec = divmod(result.stamp_ns, 1_000_000_000)
        self.publisher.publish(labeled_cloud_msg(header, xyz, labels, instances, scores,
                                                 len(pipeline.class_names)))

    def diagnostics(self) -> dict[str, Any]:
        if self.last is None:
            return {}
        u = self.last
        return {'map_voxels': u.voxels, 'map_blocks_run': u.blocks_run, 'map_blocks_dirty': u.blocks_dirty,
                'map_blocks_pending': u.blocks_pending}

    def _on_save(self, request: Any, response: Any) -> Any:
        try:
            response.message = save_map(self.node.pipeline)
            response.success = True
            self.node.get_logger().info(response.message)
        except Exception as error:  # noqa: BLE001 - any failure is the answer, named
            response.success, response.message = False, f'{type(error).__name__}: {error}'
            self.node.get_logger().warning(f'~/save_map: {response.message}')
        return response

    def close(self, pipeline: Any) -> None:
        """On shutdown: save the map to map_save_path when set (a failure is logged, never raised)."""
        if pipeline.mapper is None or not pipeline.params.map_save_path:
            return
        try:
            self.node.get_logger().info(save_map(pipeline))
        except Exception as error:  # noqa: BLE001
            self.node.get_logger().error(f'could not save the map: {type(error).__name__}: {error}')
