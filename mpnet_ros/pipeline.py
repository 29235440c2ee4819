"""The core path shared by the node and the bag tool (ROS-free): filter -> accumulate -> segment -> results.

parsed cloud ──► range filter (sensor frame) ──► transform to the fixed frame ──► crop box ──► CloudWindow
window ──► optional voxel down-sampling ──► SceneSegmenter.segment ──► labels copied back to every window point
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mpnet_ros.accumulate import (
    CloudWindow,
    Frame,
    Window,
    apply_transform,
    crop_box_mask,
    range_mask,
    voxel_downsample,
)
from mpnet_ros.cloud_io import CloudError, ParsedCloud
from mpnet_ros.params import SegmentParams


@dataclass(frozen=True)
class SegmentedWindow:
    """Per-point results for every point of a window (in the window's frame)."""
    stamp_ns: int
    frame_id: str
    xyz: np.ndarray            # (N, 3) float32
    labels: np.ndarray         # (N,) int32
    instances: np.ndarray      # (N,) int32, -1 = none
    scores: np.ndarray         # (N,) float32
    instances_info: list[Any]
    num_frames: int
    num_segmented: int         # points given to the segmenter (after voxel down-sampling)
    timings: dict[str, float] = field(default_factory=dict)  # ms


def make_segmenter(params: SegmentParams) -> Any:
    """Build the SceneSegmenter for the configured backend (loads the model: raises on a bad model file)."""
    from mpnet_model.infer.scene import SceneSegmenter

    backend_options = {'engine_path': params.engine_path} if params.backend == 'tensorrt' and params.engine_path else {}
    # Block geometry always, the bandwidth unless set (cluster_bandwidth 0), come from the model's metadata.
    tuned = {'bandwidth': params.cluster_bandwidth} if params.cluster_bandwidth > 0 else {}
    return SceneSegmenter.from_config(params.backend, params.model_path, device=params.device,
                                      precision=params.precision, backend_options=backend_options,
                                      min_instance_points=params.min_instance_points, **tuned)


class ScenePipeline:
    """Filters and accumulates parsed clouds, segments the newest window."""

    def __init__(self, params: SegmentParams, segmenter: Any):
        self.params = params
        self.segmenter = segmenter
        self.window = CloudWindow(params.window_frames, params.window_seconds)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.segmenter.class_names)

    def filter_frame(self, parsed: ParsedCloud, transform: np.ndarray | None = None, frame_id: str = '') -> Frame:
        """Range filter in the sensor frame, then (optional (4,4) transform) to `frame_id`, then crop box."""
        p = self.params
        keep = range_mask(parsed.xyz, p.min_range, p.max_range) if (p.min_range or p.max_range) else None
        xyz = parsed.xyz if keep is None else parsed.xyz[keep]
        rgb = parsed.rgb if keep is None or parsed.rgb is None else parsed.rgb[keep]
        intensity = parsed.intensity if keep is None or parsed.intensity is None else parsed.intensity[keep]
        if transform is not None:
            xyz = apply_transform(xyz, transform)
        if p.crop_enabled:
            inside = crop_box_mask(xyz, p.crop_box)
            xyz = xyz[inside]
            rgb = None if rgb is None else rgb[inside]
            intensity = None if intensity is None else intensity[inside]
        if len(xyz) == 0:
            raise CloudError(f'no points left after the range/crop filters (of {len(parsed)} valid points)')
        return Frame(stamp_ns=parsed.stamp_ns, frame_id=frame_id or parsed.frame_id, xyz=xyz, rgb=rgb,
                     intensity=intensity)

    def add(self, parsed: ParsedCloud, transform: np.ndarray | None = None, frame_id: str = '') -> Frame:
        frame = self.filter_frame(parsed, transform, frame_id)
        self.window.add(frame)
        return frame

    def process(self, window: Window) -> SegmentedWindow:
        """Segment a window; raises CloudError when it exceeds max_points."""
        start = time.perf_counter()
        if len(window.xyz) > self.params.max_points:
            raise CloudError(f'window too large: {len(window.xyz)} points > max_points {self.params.max_points}')
        xyz, rgb, intensity = window.xyz, window.rgb, window.intensity
        inverse = None
        if self.params.voxel_size > 0:
            keep, inverse = voxel_downsample(xyz, self.params.voxel_size)
            xyz = xyz[keep]
            rgb = None if rgb is None else rgb[keep]
            intensity = None if intensity is None else intensity[keep]
        prepared = time.perf_counter()
        result = self.segmenter.segment(xyz, rgb, intensity)
        segmented = time.perf_counter()
        labels, instances, scores = (np.asarray(result.labels, dtype=np.int32),
                                     np.asarray(result.instances, dtype=np.int32),
                                     np.asarray(result.scores, dtype=np.float32))
        if inverse is not None:  # copy each voxel's result to all its points
            labels, instances, scores = labels[inverse], instances[inverse], scores[inverse]
        timings = {f'segment/{k}': float(v) for k, v in dict(getattr(result, 'timings', {}) or {}).items()}
        timings.update(prepare_ms=(prepared - start) * 1e3, segment_ms=(segmented - prepared) * 1e3,
                       total_ms=(time.perf_counter() - start) * 1e3)
        return SegmentedWindow(stamp_ns=window.stamp_ns, frame_id=window.frame_id, xyz=window.xyz, labels=labels,
                               instances=instances, scores=scores, instances_info=list(result.instances_info),
                               num_frames=window.num_frames, num_segmented=len(xyz), timings=timings)
