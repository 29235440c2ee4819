"""The core path shared by the node and the bag tool (ROS-free): filter -> accumulate -> bound -> segment -> track.

parsed cloud ──► sane extent ──► range filter (sensor frame) ──► transform to the fixed frame (injected lookup)
  ──► crop box ──► CloudWindow
window ──► block cap (processing budget less the predicted preparation, priced by the robust cost model of
  `mpnet_model.infer.budget.BlockCost`: crop to the nearest range, or refuse)
  ──► optional voxel down-sampling ──► (no tf: gravity alignment) ──► SceneSegmenter.segment
  ──► InstanceTracker (persistent ids)
  ──► labels copied back to every window point

Warnings about the input go to `warn(kind, message)` (the node rate-limits them per kind; the bag tool logs them);
frames that cannot be used raise `FrameRejected` (a CloudError with a `kind`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mpnet_model.infer.budget import (
    BlockCost,
    ExtentError,
    RunningMedian,
    calibrate,
    check_extent,
    plan_frame,
    release_memory,
    segmenter_weights,
)
from mpnet_model.infer.tracking import InstanceTracker, relabel
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
from mpnet_ros.map_mode import make_mapper, map_window, reconfigured_mapper
from mpnet_ros.params import ParamError, SegmentParams, rebuilds
from mpnet_ros.transforms import TransformSource, TransformUnavailable

LOG = logging.getLogger(__name__)
LARGE_FRAME_POINTS = 500_000      # after a frame this large, hand freed memory back to the OS
# A runtime change that rebuilds the segmenter keeps its measured cost unless one of these changed (what it costs
# to run does not depend on, say, the mean-shift bandwidth or the instance size filter).
COST_KEYS = ('backend', 'model_path', 'engine_path', 'device', 'precision', 'block_layout')
# Planning and cropping a window costs per point, noticeably only for large windows: its rate is measured on
# windows of at least this many points (and primed at calibration on one of PREPARE_CALIBRATION_POINTS).
PREPARE_RATE_MIN_POINTS = 100_000
PREPARE_CALIBRATION_POINTS = 200_000


class FrameRejected(CloudError):
    """A frame the pipeline will not segment; `kind` names the defect class (for per-kind warning limits)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message, defect=kind)
        self.kind = kind


@dataclass(frozen=True)
class SegmentedWindow:
    """Per-point results for every point segmented (in the window's frame)."""
    stamp_ns: int
    frame_id: str
    xyz: np.ndarray            # (N, 3) float32
    labels: np.ndarray         # (N,) int32
    instances: np.ndarray      # (N,) int64, persistent ids when tracking (-1 = none)
    scores: np.ndarray         # (N,) float32
    instances_info: list[Any]
    num_frames: int
    num_segmented: int         # points given to the segmenter (after cropping and voxel down-sampling)
    blocks: int = 0            # estimated blocks segmented
    cropped_from: int = 0      # points of the window before an over-budget crop (0: not cropped)
    timings: dict[str, float] = field(default_factory=dict)  # ms
    floor_z: float | None = None  # the floor height the model's 'floor' encoding used (levelled frame; None: none)
    map: Any = None            # mapping mode: the frame's `mpnet_model.mapping.MapUpdate`


@dataclass(frozen=True)
class Busy:
    """What the worker is doing now (for /diagnostics)."""
    points: int
    blocks: int
    started: float             # time.monotonic()

    @property
    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started) * 1e3


def make_segmenter(params: SegmentParams) -> Any:
    """Build the SceneSegmenter for the configured backend (loads the model: raises on a bad model file)."""
    from mpnet_model.infer.scene import SceneSegmenter

    backend_options = {}
    if params.backend == 'tensorrt':
        backend_options = {'engine_path': params.engine_path or None, 'cache_dir': params.engine_cache_dir or None}
    # Block geometry always, the bandwidth unless set (cluster_bandwidth 0), come from the model's metadata.
    tuned = {'bandwidth': params.cluster_bandwidth} if params.cluster_bandwidth > 0 else {}
    if params.min_instance_fraction >= 0:                 # -1: the model's tuned size filter
        tuned['min_instance_fraction'] = params.min_instance_fraction
    if params.fragment_join >= 0:                         # -1: the model's for sensor_kind
        tuned['fragment_join'] = params.fragment_join
    if params.min_instance_points > 0:                    # 0: the model's floor for sensor_kind (else 50)
        tuned['min_instance_points'] = params.min_instance_points
    try:
        return SceneSegmenter.from_config(params.backend, params.model_path, device=params.device,
                                          precision=params.precision, backend_options=backend_options,
                                          layout=params.block_layout,
                                          border_join=params.border_join, size_filter=params.size_filter,
                                          sensor_kind=params.sensor_kind, **tuned)
    except Exception as error:
        if type(error).__name__ == 'TensorRTUnavailable':   # no TensorRT or no GPU here: the backend is the problem
            raise ParamError('backend', params.backend, str(error)) from error
        if isinstance(error, ValueError) and str(error).startswith('size_filter='):   # the model cannot give it
            raise ParamError('size_filter', params.size_filter, str(error)) from error
        raise


def make_tracker(params: SegmentParams) -> InstanceTracker | None:
    if not params.tracking:
        return None
    return InstanceTracker(max_distance=params.track_max_distance, min_iou=params.track_min_iou,
                           max_misses=params.track_max_misses)


class ScenePipeline:
    """Filters and accumulates parsed clouds, segments the newest window within the frame budget, tracks ids.

    transforms: where clouds go into `fixed_frame` (None: clouds stay in their own frame).
    warn: (kind, message) for input problems that do not stop a frame (default: this module's logger).
    enforce_budget: cap each frame's blocks by processing_budget_ms (the node); the bag tool processes every
    frame whole and only keeps the memory bound (grid extent).
    make_map: build mapping mode's semantic map (`reconfigured` hands the old one over instead).
    """

    def __init__(self, params: SegmentParams, segmenter: Any, transforms: TransformSource | None = None,
                 warn: Callable[[str, str], Any] | None = None, enforce_budget: bool = True, make_map: bool = True):
        self.params = params
        self.segmenter = segmenter
        self.transforms = transforms
        self.warn = warn or (lambda kind, message: LOG.warning('%s', message))
        self.enforce_budget = enforce_budget
        # Mapping integrates each frame once: the map is the accumulation.
        self.window = CloudWindow(1 if params.mapping else params.window_frames, params.window_seconds)
        self.tracker = make_tracker(params)
        self.cost = BlockCost()
        self.prepare_rate = RunningMedian()  # ms per window point of planning and cropping, before the segmenter
        # Mapping mode (mpnet_ros/map_mode.py; loads map_load_path), else None.
        self.mapper = make_mapper(params, segmenter) if make_map else None
        self._busy: Busy | None = None
        self._trim_pending = False
        self._lock = threading.Lock()        # one window at a time through the segmenter and tracker

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.segmenter.class_names)

    # --- configuration ---------------------------------------------------------------------------------------

    def reconfigured(self, params: SegmentParams, segmenter: Any = None) -> ScenePipeline:
        """A pipeline for the new `params`, sharing what the change does not rebuild (window, tracker, segmenter
        and its measured block cost). `segmenter` is required when the change rebuilds it."""
        tags = rebuilds(self.params, params)
        if 'segmenter' in tags and segmenter is None:
            raise ValueError('the change rebuilds the segmenter: pass the new one')
        new = ScenePipeline(params, segmenter if 'segmenter' in tags else self.segmenter, self.transforms,
                            self.warn, self.enforce_budget, make_map=False)
        if 'window' not in tags:
            new.window = self.window
        if 'tracker' not in tags:
            new.tracker = self.tracker
        if 'segmenter' not in tags or all(getattr(self.params, k) == getattr(params, k) for k in COST_KEYS):
            new.cost = self.cost
        new.prepare_rate = self.prepare_rate
        if self.mapper is not None or params.mapping:
            new.mapper = reconfigured_mapper(self.mapper, params, new.segmenter, tags) if params.mapping else None
        return new

    def calibrate(self) -> float:
        """Measure ms per block on the segmenter (a short run on a synthetic cloud); returns it."""
        calibrate(self.segmenter, self.cost)
        if not len(self.prepare_rate):
            segmenter = self.segmenter
            xyz = np.random.default_rng(0).uniform((-20, -20, 0), (20, 20, 3), (PREPARE_CALIBRATION_POINTS, 3))
            start = time.perf_counter()
            plan_frame(xyz.astype(np.float32), np.zeros(3), 1, segmenter.block_size, segmenter.stride,
                       segmenter.min_block_points, **segmenter_weights(segmenter))
            self.prepare_rate.add((time.perf_counter() - start) * 1e3 / PREPARE_CALIBRATION_POINTS)
        return float(self.cost.ms_per_block)

    def block_cap(self, points: int = 0) -> int | None:
        """Blocks (cost units) a frame of `points` points may have within processing_budget_ms, less the time its
        preparation is predicted to take (None when the budget is not enforced)."""
        if not self.enforce_budget:
            return None
        if self.cost.ms_per_block is None:
            self.calibrate()
        return self.cost.cap(self.params.processing_budget_ms - self.predicted_prepare_ms(points))

    def predicted_prepare_ms(self, points: int) -> float:
        return (self.prepare_rate.value or 0.0) * points

    def busy(self) -> Busy | None:
        return self._busy

    # --- input -----------------------------------------------------------------------------------------------

    def locate(self, parsed: ParsedCloud) -> tuple[str, np.ndarray | None]:
        """(frame id of the cloud, (4,4) transform into fixed_frame or None). Raises FrameRejected."""
        frame_id = parsed.frame_id
        if not frame_id:
            frame_id = self.params.fallback_frame_id
            self.warn('frame_id', f'cloud with an empty header.frame_id: using fallback_frame_id {frame_id!r}')
        fixed = self.params.fixed_frame
        if not fixed or self.transforms is None or frame_id == fixed:
            return frame_id, None
        try:
            return fixed, self.transforms.lookup(fixed, frame_id, parsed.stamp_ns)
        except TransformUnavailable as exc:
            raise FrameRejected('transform', f'skipped a cloud: {exc}') from exc

    def filter_frame(self, parsed: ParsedCloud, transform: np.ndarray | None = None, frame_id: str = '') -> Frame:
        """Sane extent, range filter in the sensor frame, then (optional (4,4) transform) to `frame_id`, then the
        crop box. Raises FrameRejected."""
        p = self.params
        try:
            check_extent(parsed.xyz, p.max_coordinate)
        except ExtentError as exc:
            raise FrameRejected('extent', f'skipped a cloud: {exc} (max_coordinate)') from exc
        keep = range_mask(parsed.xyz, p.min_range, p.max_range) if (p.min_range or p.max_range) else None
        xyz = parsed.xyz if keep is None else parsed.xyz[keep]
        rgb = parsed.rgb if keep is None or parsed.rgb is None else parsed.rgb[keep]
        intensity = parsed.intensity if keep is None or parsed.intensity is None else parsed.intensity[keep]
        origin = (0.0, 0.0, 0.0)
        if transform is not None:
            xyz = apply_transform(xyz, transform)
            origin = tuple(float(v) for v in transform[:3, 3])
        if p.crop_enabled:
            inside = crop_box_mask(xyz, p.crop_box)
            xyz = xyz[inside]
            rgb = None if rgb is None else rgb[inside]
            intensity = None if intensity is None else intensity[inside]
        if len(xyz) == 0:
            raise FrameRejected('empty', f'skipped a cloud: no points left after the range/crop filters '
                                         f'(of {len(parsed)} valid points)')
        return Frame(stamp_ns=parsed.stamp_ns, frame_id=frame_id or parsed.frame_id or p.fallback_frame_id, xyz=xyz,
                     rgb=rgb, intensity=intensity, origin=origin)

    def add(self, parsed: ParsedCloud) -> Frame:
        frame_id, transform = self.locate(parsed)
        frame = self.filter_frame(parsed, transform, frame_id)
        self.window.add(frame)
        return frame

    def segment_cloud(self, xyz: np.ndarray, rgb: np.ndarray | None = None, intensity: np.ndarray | None = None,
                      frame_id: str = 'sensor', stamp_ns: int = 0) -> SegmentedWindow:
        """One cloud through the whole path (filters, window, segmentation, tracking) without a message: offline
        tools and benchmarks. The window is emptied first, so the result is this cloud's alone."""
        xyz = np.ascontiguousarray(xyz, dtype=np.float32)
        parsed = ParsedCloud(xyz, rgb, intensity, np.arange(len(xyz), dtype=np.int64), frame_id, int(stamp_ns),
                             len(xyz))
        self.window.clear()
        self.add(parsed)
        return self.process(self.window.snapshot())

    def known_floor(self, window: Window) -> float | None:
        """The floor height in the window's frame when the parameters say where it is (floor_source fixed_frame:
        floor_z; sensor_height: below the sensor), None when it is to be estimated from the window."""
        p = self.params
        if p.floor_source == 'fixed_frame':
            return float(p.floor_z)
        if p.floor_source == 'sensor_height':
            return float(window.origin[2]) - p.sensor_height
        return None

    # --- processing ------------------------------------------------------------------------------------------

    def process(self, window: Window) -> SegmentedWindow:
        """Segment a window within the frame budget; raises FrameRejected (too many points, refused as oversize)."""
        with self._lock:
            start = time.perf_counter()
            count = len(window.xyz)
            if count > self.params.max_points:
                raise FrameRejected('too_large', f'window too large: {count} points > max_points '
                                                 f'{self.params.max_points}')
            self.trim()
            self._busy = Busy(count, 0, time.monotonic())
            try:
                return self._process(window, start)
            finally:
                self._busy = None
                self._trim_pending |= count >= LARGE_FRAME_POINTS

    def trim(self) -> None:
        """Hand the memory of a large frame back to the OS (~0.1 s), once its results are out: the node calls it
        after publishing, so the answer does not wait for it; `process` calls it before the next frame."""
        if self._trim_pending:
            self._trim_pending = False
            release_memory()

    def _process(self, window: Window, start: float) -> SegmentedWindow:
        if self.mapper is not None:
            return map_window(self, window, start)
        p, segmenter = self.params, self.segmenter
        cap = self.block_cap(len(window.xyz))
        cost = self.cost
        plan = plan_frame(window.xyz, np.asarray(window.origin), cap if cap is not None else 2**62,
                          segmenter.block_size, segmenter.stride, segmenter.min_block_points,
                          point_weight=cost.point_weight if cap is not None else 0.0, keep_nearest=True,
                          **segmenter_weights(segmenter))
        started = self._busy.started
        self._busy = Busy(len(window.xyz), plan.blocks, started)
        xyz, rgb, intensity, blocks, cropped_from = window.xyz, window.rgb, window.intensity, plan.blocks, 0
        load = plan.load
        if not plan.fits:
            size = (f'a frame of {len(xyz):,} points spanning ~{plan.blocks:,} blocks ({plan.grid_cells:,} grid '
                    f'cells)')
            over_cap = cap is not None and plan.load > cap
            limit = (f'over the cap of {cap:,} blocks (processing_budget_ms {p.processing_budget_ms:g} at '
                     f'{cost.ms_per_block:.1f} ms/block, {cost.ms_per_point * 1e3:.2f} ms per 1000 points; '
                     f'predicted {cost.predict_ms(plan.load):.0f} ms)' if over_cap else 'over the grid limit')
            if p.oversize_action == 'refuse':
                raise FrameRejected('oversize', f'refused {size}, {limit} (oversize_action {p.oversize_action!r})')
            nearest_only = over_cap and plan.kept_load > cap     # even the nearest cell is over the cap
            budget_left = p.processing_budget_ms - self.predicted_prepare_ms(len(xyz))
            if nearest_only and cost.ms_per_point * plan.nearest_cell_points > budget_left:
                # A crop cannot split a stride cell, and the points of this one alone cost more than the budget.
                raise FrameRejected('oversize', f'refused {size}, {limit}: the cell nearest the sensor alone holds '
                                                f'{plan.nearest_cell_points:,} points ({segmenter.stride:g} m wide; a '
                                                f'degenerate cloud?), whose points alone are predicted over the '
                                                f'budget: no crop fits')
            keep = plan.keep
            cropped_from, blocks, load = len(xyz), plan.kept_blocks, plan.kept_load
            xyz = xyz[keep]
            rgb = None if rgb is None else rgb[keep]
            intensity = None if intensity is None else intensity[keep]
            self.warn('oversize', f'cropped {size}, {limit}, to the nearest {plan.radius:.1f} m from the sensor: '
                                  f'{len(xyz):,} points, ~{blocks:,} blocks' + (
                                      ' (the nearest cell only, itself over the cap: segmented anyway, so the '
                                      'measured cost can follow)' if nearest_only else ''))
            self._busy = Busy(len(xyz), blocks, started)
        window_xyz = xyz
        inverse = None
        if p.voxel_size > 0:
            kept, inverse = voxel_downsample(xyz, p.voxel_size)
            xyz = xyz[kept]
            rgb = None if rgb is None else rgb[kept]
            intensity = None if intensity is None else intensity[kept]
        prepared = time.perf_counter()
        if len(window.xyz) >= PREPARE_RATE_MIN_POINTS:
            self.prepare_rate.add((prepared - start) * 1e3 / len(window.xyz))
        floor = {} if self.known_floor(window) is None else {'floor': self.known_floor(window)}
        if p.gravity_align == 'auto' and not p.fixed_frame:    # no tf: level it ourselves
            from mpnet_model.infer.gravity import prior_up_for_frame, segment_gravity_aligned

            result, _ = segment_gravity_aligned(segmenter, xyz, rgb, intensity,
                                                prior_up_for_frame(window.frame_id), origin=window.origin, **floor)
        else:
            result = segmenter.segment(xyz, rgb, intensity, origin=window.origin, **floor)
        segmented = time.perf_counter()
        # A crop can leave no full block; counting it as one keeps the cost measured (and the cap able to grow back).
        cost.update(load if load > 0 else 1.0, (segmented - prepared) * 1e3)
        labels, scores = np.asarray(result.labels, dtype=np.int32), np.asarray(result.scores, dtype=np.float32)
        instances, infos = np.asarray(result.instances, dtype=np.int64), list(result.instances_info)
        if self.tracker is not None:
            instances, infos = relabel(instances, infos, self.tracker.update(infos))
        if inverse is not None:  # copy each voxel's result to all its points
            labels, instances, scores = labels[inverse], instances[inverse], scores[inverse]
        timings = {f'segment/{k}': float(v) for k, v in dict(getattr(result, 'timings', {}) or {}).items()}
        timings.update(prepare_ms=(prepared - start) * 1e3, segment_ms=(segmented - prepared) * 1e3,
                       total_ms=(time.perf_counter() - start) * 1e3)
        return SegmentedWindow(stamp_ns=window.stamp_ns, frame_id=window.frame_id, xyz=window_xyz, labels=labels,
                               instances=instances, scores=scores, instances_info=infos,
                               num_frames=window.num_frames, num_segmented=len(xyz), blocks=blocks,
                               cropped_from=cropped_from, timings=timings,
                               floor_z=None if getattr(result, 'floor', None) is None else result.floor.z)
